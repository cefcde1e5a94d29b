#!/usr/bin/env bash
# Reproducible, bounded load test of `biomatch serve` on loopback.
#
#   scripts/loadtest.sh
#
# 1. builds the release binary and the load generator (benches/examples/loadgen.rs);
# 2. creates target/loadtest/store with 100 000 synthetic subjects and the calibration table
#    (reused on later runs);
# 3. starts the service on a free 127.0.0.1 port, waits for /readyz, builds the ANN index;
# 4. verify (concurrency 8, 20 000 requests, <= 60 s), identify (concurrency 8, 5 000 requests,
#    <= 60 s);
# 5. restarts it with limits.max_concurrent = 4 and drives identify at concurrency 64 (<= 20 s):
#    the excess is shed with 503 + Retry-After while accepted requests keep a bounded p99.
#
# Prints one labelled JSON line per run and writes them to target/loadtest/results.jsonl. The
# server is always stopped (SIGTERM, then wait) on exit. Only loopback traffic; every run is
# bounded in requests and seconds. Server logs: target/loadtest/server-*.log.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/lib.sh
export OPENBLAS_NUM_THREADS=1

SUBJECTS=100000
out=target/loadtest
store=$out/store
results=$out/results.jsonl
bin=target/release/biomatch
loadgen=target/release/examples/loadgen

cargo build --release --locked -p biomatch-matcher
cargo build --release --locked -p biomatch-benches --example loadgen
mkdir -p "$out"

# The marker is written only after enrolment and calibration both succeeded; a store without it is
# a leftover of an interrupted run and is rebuilt.
if [ ! -f "$out/store.ready" ] || [ ! -d "$store" ]; then
  rm -rf "$store" "$out/store.ready"
  echo "loadtest: enrolling $SUBJECTS synthetic subjects into $store" >&2
  "$bin" enroll-synthetic --data "$store" --subjects "$SUBJECTS" --seed 1
  "$bin" calibrate-synthetic --data "$store"
  echo "subjects=$SUBJECTS seed=1" >"$out/store.ready"
else
  echo "loadtest: reusing $store" >&2
fi

server_pid=""
base=""

stop_server() {
  stop_pid loadtest "$server_pid"
  server_pid=""
}
trap stop_server EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_server NAME [ENV=VALUE...]: start on a free loopback port and wait (<= 120 s) for /readyz.
start_server() {
  local name=$1
  shift
  local port
  port=$(free_port)
  base="http://127.0.0.1:$port"
  env "$@" "$bin" serve --data "$store" --listen "127.0.0.1:$port" 2>"$out/server-$name.log" &
  server_pid=$!
  for _ in $(seq 1 600); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "loadtest: the server exited during start-up; see $out/server-$name.log" >&2
      tail -n 20 "$out/server-$name.log" >&2
      exit 1
    fi
    if curl -fsS -m 2 "$base/readyz" >/dev/null 2>&1; then
      echo "loadtest: server '$name' ready at $base (pid $server_pid)" >&2
      return 0
    fi
    sleep 0.2
  done
  echo "loadtest: the server was not ready within 120 s" >&2
  exit 1
}

# run_load LABEL LOADGEN-ARGS...: one bounded run; prints and records a labelled JSON line.
run_load() {
  local label=$1
  shift
  local line
  line=$("$loadgen" --url "$base" --subjects "$SUBJECTS" "$@")
  line="{\"label\":\"$label\",${line#\{}"
  printf '%s\t%s\n' "$label" "$line"
  printf '%s\n' "$line" >>"$results"
}

: >"$results"

start_server normal
echo "loadtest: building the ANN index" >&2
curl -fsS -m 300 -X POST -H 'content-type: application/json' -d '{"wait": true}' \
  "$base/v1/admin/index/build" >"$out/index-build.json"
echo "loadtest: index: $(cat "$out/index-build.json")" >&2
run_load verify_c8 --mode verify --concurrency 8 --requests 20000 --max-seconds 60
run_load identify_c8 --mode identify --concurrency 8 --requests 5000 --max-seconds 60
stop_server

# The index generation built above is loaded at start-up (search.load_index).
start_server overload BIOMATCH__LIMITS__MAX_CONCURRENT=4
run_load identify_c64_max4 --mode identify --concurrency 64 --requests 2000000 --max-seconds 20
stop_server

echo "loadtest: results in $results" >&2
