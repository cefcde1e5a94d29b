#!/usr/bin/env bash
# The overnight rebuild, measured: an index build next to a serving process under identify
# traffic, the hot swap, and a deliberately bad build the recall gate must refuse.
#
#   scripts/rebuild-under-load.sh DATA SUBJECTS [--factory F] [--bad-factory F] [--out DIR]
#                                 [--concurrency C] [--memcap LIMIT]
#
# DATA: a store filled by `biomatch enroll-synthetic --subjects SUBJECTS` (seed 1) with a
# current index generation. Steps, each a labelled JSON line in DIR/results.jsonl (default
# target/rebuild):
#  1. start `biomatch serve` on DATA (under scripts/memcap.sh LIMIT when --memcap is given), wait
#     for /readyz;
#  2. `baseline`: identify traffic alone (loadgen, C concurrent clients, 20 s);
#  3. `during_build`: `biomatch-index-builder build --factory F` (recall gate on, floor 0.95) while
#     identify traffic runs in 20 s windows until the build ends; the build report is kept;
#  4. `swap`: 15 s of identify traffic with `POST /v1/admin/index/reload` issued after 3 s: the
#     generation served changes under load; loadgen counts every non-200 and timeout;
#  5. `bad_build`: a build with --bad-factory (default IDMap,PQ4x4fs: 2 bytes a template) under
#     traffic: the gate refuses it (builder exit 3), CURRENT and the served generation stay.
# The server is stopped on exit. Only loopback traffic; every run is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
export OPENBLAS_NUM_THREADS=1

[ $# -ge 2 ] || { echo "usage: $0 DATA SUBJECTS [--factory F] [--bad-factory F] [--out DIR] [--concurrency C] [--memcap LIMIT]" >&2; exit 2; }
data=$1
subjects=$2
shift 2
factory="IDMap,PQ32x4fs"
bad_factory="IDMap,PQ4x4fs"
out=target/rebuild
concurrency=4
memcap=""
while [ $# -gt 0 ]; do
  case $1 in
    --factory) factory=$2; shift 2 ;;
    --bad-factory) bad_factory=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --memcap) memcap=$2; shift 2 ;;
    *) echo "$0: unknown argument $1" >&2; exit 2 ;;
  esac
done

bin=target/release/biomatch
builder=target/release/biomatch-index-builder
loadgen=target/release/examples/loadgen
cargo build --release --locked -p biomatch-matcher -p biomatch-index-builder
cargo build --release --locked -p biomatch-benches --example loadgen
mkdir -p "$out"
results=$out/results.jsonl
: >"$results"
[ -f "$data/calibration/synthetic-face@1.json" ] || "$bin" calibrate-synthetic --data "$data"

server_pid=""
trap 'stop_pid rebuild "$server_pid"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port=$(free_port)
base="http://127.0.0.1:$port"
if [ -n "$memcap" ]; then
  scripts/memcap.sh "$memcap" --report "$out/memcap.json" -- \
    "$bin" serve --data "$data" --listen "127.0.0.1:$port" 2>"$out/server.log" &
else
  "$bin" serve --data "$data" --listen "127.0.0.1:$port" 2>"$out/server.log" &
fi
server_pid=$!
t0=$(date +%s.%N)
for _ in $(seq 1 3000); do
  kill -0 "$server_pid" 2>/dev/null || { echo "rebuild: the server exited; see $out/server.log" >&2; tail -n 20 "$out/server.log" >&2; exit 1; }
  curl -fsS -m 2 "$base/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS -m 2 "$base/readyz" >/dev/null || { echo "rebuild: not ready within 600 s" >&2; exit 1; }
ready_s=$(python3 -c "import time; print(round(time.time() - $t0, 2))")
echo "rebuild: server ready at $base after ${ready_s}s" >&2

generation() {
  curl -fsS -m 10 "$base/v1/admin/stats" | python3 -c '
import json, sys
s = json.load(sys.stdin)
idx = s.get("indexes") or s.get("index") or []
if isinstance(idx, dict):
    idx = list(idx.values())
print(",".join(str(i.get("generation")) for i in idx) or "none")'
}

# record LABEL JSON [EXTRA-JSON-FIELDS]
record() {
  local label=$1 line=$2 extra=${3:-}
  line="{\"label\":\"$label\",${extra:+$extra,}${line#\{}"
  printf '%s\n' "$line" | tee -a "$results"
}

load() {
  "$loadgen" --url "$base" --mode identify --subjects "$subjects" --concurrency "$concurrency" \
    --requests 100000000 --request-timeout-s 5 "$@"
}

# build_under_traffic LABEL WINDOW_S NAME FACTORY: the builder with FACTORY (its report in
# $out/NAME.json, stdout and stderr beside it) next to the service, identify traffic in windows
# of WINDOW_S seconds recorded as LABEL until it ends; sets build_status to its exit status.
build_under_traffic() {
  local label=$1 window_s=$2 name=$3 f=$4 pid w=0
  "$builder" build --data "$data" --factory "$f" --recall-floor 0.95 \
    --report "$out/$name.json" >"$out/$name.out" 2>"$out/$name.err" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    w=$((w + 1))
    record "$label" "$(load --max-seconds "$window_s")" "\"window\":$w"
  done
  set +e
  wait "$pid"
  build_status=$?
  set -e
}

echo "rebuild: serving generation $(generation)" >&2
record baseline "$(load --max-seconds 20)" "\"generation\":\"$(generation)\""

# 3. The build next to the service, traffic in 20 s windows until it ends.
build_under_traffic during_build 20 build "$factory"
echo "rebuild: build exit $build_status: $(cat "$out/build.out")" >&2
[ "$build_status" -eq 0 ] || { echo "rebuild: the good build failed; see $out/build.err" >&2; exit 1; }

# 4. The hot swap under traffic.
before=$(generation)
load --max-seconds 15 >"$out/swap.json" &
load_pid=$!
sleep 3
ts=$(date +%s.%N)
curl -fsS -m 120 -X POST -H 'content-type: application/json' -d '{}' "$base/v1/admin/index/reload" >"$out/reload.json"
reload_s=$(python3 -c "import time; print(round(time.time() - $ts, 3))")
wait "$load_pid"
after=$(generation)
record swap "$(cat "$out/swap.json")" "\"generation_before\":\"$before\",\"generation_after\":\"$after\",\"reload_seconds\":$reload_s"
[ "$before" != "$after" ] || { echo "rebuild: the served generation did not change" >&2; exit 1; }

# 5. A bad build under traffic: refused by the recall gate, nothing changes.
current_before=$(od -An -tx1 "$data/index/synthetic-face@1/CURRENT" | tr -d ' \n')
build_under_traffic during_bad_build 10 bad-build "$bad_factory"
bad_status=$build_status
current_after=$(od -An -tx1 "$data/index/synthetic-face@1/CURRENT" | tr -d ' \n')
still=$(generation)
refused=$(python3 -c "import json; d = json.load(open('$out/bad-build.json')); print(json.dumps(d['refused']))")
record bad_build "{\"builder_exit\":$bad_status}" "\"current_unchanged\":$([ "$current_before" = "$current_after" ] && echo true || echo false),\"generation_served\":\"$still\",\"refused\":$refused"
[ "$bad_status" -eq 3 ] || { echo "rebuild: the bad build was not refused by the gate (exit $bad_status)" >&2; exit 1; }
[ "$current_before" = "$current_after" ] || { echo "rebuild: CURRENT changed after a refused build" >&2; exit 1; }
echo "rebuild: results in $results" >&2
