#!/usr/bin/env bash
# A curl session against a running service (scripts/run.sh in another terminal):
# enroll two subjects by template, verify, identify, delete; then the issuance workflow:
# enroll-if-unique (a second application of A under a new id is refused as a duplicate of A,
# a new person is enrolled) and the same as an asynchronous job. Loopback only.
set -euo pipefail
url=${BIOMATCH_URL:-http://127.0.0.1:8080}
case "$url" in http://127.*|http://localhost*) ;; *) echo "loopback only" >&2; exit 1 ;; esac
# Deterministic 128-d templates: person A, a second capture of A, and person B.
vec() { python3 -c "import math,sys; s=int(sys.argv[1]); n=float(sys.argv[2]); print(','.join(f'{math.sin(s*i*0.7+1)+n*math.cos(i*s*1.3):.5f}' for i in range(128)))" "$@"; }
A=$(vec 3 0); A2=$(vec 3 0.6); B=$(vec 5 0)
tpl() { printf '{"template":{"model":"synthetic-face@1","vector":[%s]}}' "$1"; }
run() { echo "\$ curl -s -X $1 $url$2 ${3:+-d '…'}"; curl -s -X "$1" "$url$2" -H 'content-type: application/json' ${3:+-d "$3"}; echo; echo; }
run POST /v1/subjects "{\"subject_id\":\"CM-1990-000001\",\"face\":$(tpl "$A")}"
run POST /v1/subjects "{\"subject_id\":\"CM-1985-000002\",\"face\":$(tpl "$B")}"
run POST /v1/verify "{\"subject_id\":\"CM-1990-000001\",\"face\":$(tpl "$A2")}"
run POST /v1/verify "{\"subject_id\":\"CM-1985-000002\",\"face\":$(tpl "$A2")}"
run POST /v1/identify "{\"face\":$(tpl "$A2"),\"max_results\":5}"
run DELETE /v1/subjects/CM-1990-000001
run POST /v1/identify "{\"face\":$(tpl "$A2"),\"max_results\":5}"
# The issuance workflow: enroll only if nobody matches at the target FPIR.
run POST "/v1/subjects?dedup=true" "{\"subject_id\":\"CM-2026-000003\",\"face\":$(tpl "$A")}"
run POST "/v1/subjects?dedup=true" "{\"subject_id\":\"CM-2026-000004\",\"face\":$(tpl "$A2"),\"target_fpir\":0.001}"
C=$(vec 7 0)
job=$(curl -s -X POST "$url/v1/jobs" -H 'content-type: application/json' \
  -d "{\"kind\":\"enroll_if_unique\",\"request\":{\"subject_id\":\"CM-2026-000005\",\"face\":$(tpl "$C")}}")
echo "\$ curl -s -X POST $url/v1/jobs -d '…'"; echo "$job"; echo
id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["job_id"])' "$job")
for _ in $(seq 50); do
  st=$(curl -s "$url/v1/jobs/$id")
  case "$st" in *'"status":"done"'* | *'"status":"failed"'*) break ;; esac
  sleep 0.1
done
echo "\$ curl -s $url/v1/jobs/$id"; echo "$st"; echo
