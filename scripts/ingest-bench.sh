#!/usr/bin/env bash
# Bounded, loopback-only measurement of enrollment (ingest) throughput and of fsyncs per
# enrollment of `biomatch serve`.
#
#   scripts/ingest-bench.sh
#   INGEST_BASELINE=/path/to/older/biomatch scripts/ingest-bench.sh   # before and after, one run
#
# 1. builds the release binary and benches/examples/iso_records.rs (two synthetic ISO/IEC
#    19794-2 minutiae records, base64, written by biomatch_fingerprint::iso);
# 2. starts the service on a fresh data directory (target/ingest/data) at a free 127.0.0.1 port,
#    face extractor off, only the synthetic-face@1 model, and waits for /readyz;
# 3. four runs with wrk and scripts/wrk/enroll.lua, every request a new subject (ids unique per
#    run, thread and request): 1 connection (wrk -t1 -c1) and 8 connections (wrk -t2 -c8), each
#    with a face template only ("template") and with a face template + 2 minutiae fingers
#    ("face+2fingers");
# 4. each run is two wrk runs on the same server: first INGEST_DURATION s (default 10) untraced,
#    for enrollments/s and p99; then INGEST_TRACE_DURATION s (default 5) with
#    `strace -f -c -e trace=fdatasync,fsync -p <server pid>` attached, for fsyncs_per_enrollment =
#    (fdatasync + fsync calls) / (201 answers). strace stops the server at every system call, so
#    throughput under it is lower; it is reported apart as traced_enrollments_per_s.
#
# Prints one JSON line per run and appends them to target/ingest/results.jsonl:
#   {"run":"8c-face+2fingers","enrollments_per_s":…,"fsyncs_per_enrollment":…,"p99_ms":…,…}
# The server is always stopped (SIGTERM, then wait) on exit. Only loopback traffic; every run is
# bounded in seconds. Server log: target/ingest/server.log. Numbers are for comparison on the same
# machine (wrk shares its cores with the server), not capacity.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/lib.sh
export OPENBLAS_NUM_THREADS=1

# wrk drives the load, strace counts the fsyncs: from apt, only if missing (as scripts/setup.sh).
apt_ensure ingest-bench wrk strace

# Before and after in one run: INGEST_BASELINE=/path/to/an/older/biomatch measures that binary
# first (runs labelled "before-…"), then this tree's (runs labelled "after-…").
if [ -n "${INGEST_BASELINE:-}" ]; then
  INGEST_BIN="$INGEST_BASELINE" INGEST_LABEL=before- INGEST_BASELINE= "$0"
  INGEST_LABEL=after- INGEST_BASELINE= "$0"
  exit 0
fi
LABEL=${INGEST_LABEL:-}
DURATION=${INGEST_DURATION:-10}
TRACE_DURATION=${INGEST_TRACE_DURATION:-5}
MODEL=synthetic-face@1
out=target/ingest
data=$out/data
results=$out/results.jsonl
bin=${INGEST_BIN:-target/release/biomatch}
records=target/release/examples/iso_records

cargo build --release --locked -p biomatch-matcher
cargo build --release --locked -p biomatch-benches --example iso_records
rm -rf "$data"
mkdir -p "$out" "$data"
if [ -n "${INGEST_BIN:-}" ]; then
  # Another binary, maybe from before the calibration tables were built in: give it its table.
  "$bin" calibrate-synthetic --data "$data" --scores 200000 >/dev/null
fi


# The request bodies after "subject_id": a fixed L2-normalised 128-d face template (ids are
# unique, so one vector serves every subject) and two minutiae fingers.
face=$(python3 -c '
import json, math
v = [math.sin(0.37 * i + 0.5) for i in range(128)]
n = math.sqrt(sum(x * x for x in v))
print(json.dumps([round(x / n, 6) for x in v], separators=(",", ":")))')
mapfile -t iso < <("$records" 2 7)
printf '"face":{"template":{"model":"%s","vector":%s}}\n' "$MODEL" "$face" >"$out/template.json"
printf '"face":{"template":{"model":"%s","vector":%s}},"fingers":[{"position":2,"minutiae":"%s"},{"position":7,"minutiae":"%s"}]\n' \
  "$MODEL" "$face" "${iso[0]}" "${iso[1]}" >"$out/face+2fingers.json"

server_pid=""
strace_pid=""
base=""

stop_server() {
  if [ -n "$strace_pid" ] && kill -0 "$strace_pid" 2>/dev/null; then
    kill -INT "$strace_pid" 2>/dev/null || true
    wait "$strace_pid" 2>/dev/null || true
  fi
  stop_pid ingest-bench "$server_pid"
  server_pid=""
}
trap stop_server EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port=$(free_port)
base="http://127.0.0.1:$port"
BIOMATCH_LOG=warn \
  BIOMATCH__EXTRACTORS__FACE__ENABLED=false \
  BIOMATCH__MODELS="[{id=\"$MODEL\",dim=128,modality=\"face\",calibration=\"calibration/$MODEL.json\"}]" \
  "$bin" serve --data "$data" --listen "127.0.0.1:$port" 2>"$out/server.log" &
server_pid=$!
ready=""
for _ in $(seq 1 600); do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "ingest-bench: the server exited during start-up; see $out/server.log" >&2
    tail -n 20 "$out/server.log" >&2
    exit 1
  fi
  if curl -fsS -m 2 "$base/readyz" >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 0.2
done
[ -n "$ready" ] || { echo "ingest-bench: the server was not ready within 120 s" >&2; exit 1; }
echo "ingest-bench: server ready at $base (pid $server_pid)" >&2

# Both bodies must enroll before anything is measured.
for s in template face+2fingers; do
  code=$(curl -sS -m 10 -o "$out/check-$s.json" -w '%{http_code}' -X POST \
    -H 'content-type: application/json' --data-binary "{\"subject_id\":\"ING-check-$s\",$(cat "$out/$s.json")}" \
    "$base/v1/subjects")
  if [ "$code" != 201 ]; then
    echo "ingest-bench: enrolling a '$s' subject answered $code: $(cat "$out/check-$s.json")" >&2
    exit 1
  fi
done

# wrk_run PREFIX SAMPLES THREADS CONNECTIONS SECONDS: the JSON line of scripts/wrk/enroll.lua.
wrk_run() {
  INGEST_PREFIX=$1 INGEST_SAMPLES=$2 wrk -t"$3" -c"$4" -d"$5s" --timeout 10s \
    -s scripts/wrk/enroll.lua "$base/v1/subjects" >"$out/wrk-$1.txt"
  grep '^{"requests"' "$out/wrk-$1.txt" | tail -n 1
}

# field JSON NAME: a number from a flat JSON line.
field() {
  python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"
}

# run_ingest LABEL SAMPLES THREADS CONNECTIONS: one measured run; prints and records its line.
run_ingest() {
  local label=$1 samples=$2 threads=$3 conns=$4
  local plain traced trace_file calls line
  plain=$(wrk_run "$label-a" "$samples" "$threads" "$conns" "$DURATION")
  trace_file=$out/strace-$label.txt
  strace -f -c -e trace=fdatasync,fsync -o "$trace_file" -p "$server_pid" 2>"$out/strace-$label.log" &
  strace_pid=$!
  sleep 1 # let strace attach to every thread of the server
  traced=$(wrk_run "$label-b" "$samples" "$threads" "$conns" "$TRACE_DURATION")
  kill -INT "$strace_pid"
  wait "$strace_pid" || true
  strace_pid=""
  # strace -c columns: % time, seconds, usecs/call, calls, [errors,] syscall.
  calls=$(awk '$NF == "fdatasync" || $NF == "fsync" { n += $4 } END { print n + 0 }' "$trace_file")
  line=$(python3 - "$label" "$threads" "$conns" "$plain" "$traced" "$calls" <<'EOF'
import json, sys
label, threads, conns, plain, traced, calls = sys.argv[1:]
p, t = json.loads(plain), json.loads(traced)
calls = int(calls)
def rate(r):
    return round(r["created"] / (r["duration_us"] / 1e6), 1)
print(json.dumps({
    "run": label,
    "enrollments_per_s": rate(p),
    "fsyncs_per_enrollment": round(calls / t["created"], 3) if t["created"] else None,
    "p99_ms": round(p["p99_us"] / 1000, 2),
    "p50_ms": round(p["p50_us"] / 1000, 2),
    "wrk": f"-t{threads} -c{conns}",
    "enrollments": p["created"],
    "non_201": p["other_status"] + t["other_status"],
    "socket_errors": p["socket_errors"] + t["socket_errors"],
    "traced_enrollments": t["created"],
    "traced_enrollments_per_s": rate(t),
    "traced_fsyncs": calls,
}, separators=(",", ":")))
EOF
)
  printf '%s\n' "$line"
  printf '%s\n' "$line" >>"$results"
}

run_ingest "${LABEL}1c-template" "$out/template.json" 1 1
run_ingest "${LABEL}8c-template" "$out/template.json" 2 8
run_ingest "${LABEL}1c-face+2fingers" "$out/face+2fingers.json" 1 1
run_ingest "${LABEL}8c-face+2fingers" "$out/face+2fingers.json" 2 8

echo "ingest-bench: results appended to $results" >&2
