#!/usr/bin/env bash
# Side-by-side benchmark: biomatch's 1:N identify against what a user would pick instead (raw
# FAISS, hnswlib, usearch), on the same gallery vectors and probes, in one run.
#
#   scripts/bench.sh [--scale 100k|1m|10m] [--out DIR] [--peers all|faiss-flat,hnswlib,...]
#
# 1. builds biomatch (release), the vector export and the load generator; installs the pinned
#    Python peers into .setup/bench-venv (benches/peers/requirements.txt; once);
# 2. exports eval-synthetic's clustered population (seed 1, subjects/10 families) to .bmvec:
#    the gallery (enrolment samples) and its probes (1000 mated + 1000 non-mated, the very
#    probes `eval-synthetic --probes 1000` searches) — benches/examples/export_vectors.rs;
# 3. biomatch in-process: `biomatch eval-synthetic --search index` on a store of that population
#    (the index rebuilt once, timed), at k' = 8, 32, 128 candidates per shard, each run once on
#    one rayon thread (single-query latency) and once on all (batch throughput);
#    Where FAISS's AVX-512 build serves, the default point once more on the linked AVX2 build
#    (BIOMATCH_FAISS_SIMD=avx2: a diagnostic of the run-time dispatch);
# 4. biomatch over HTTP: `biomatch serve` on that store (loopback, free port), one client sending
#    the probe vectors one at a time (benches/examples/loadgen.rs --probes-file, concurrency 1),
#    per k'; the server's RSS against an empty-store server; one exact-search run; one run with
#    the audit log on tmpfs (a diagnostic of the per-request fsync, not a setting to deploy);
#    one with audit_reads = "batched" (and, on AVX-512, once more on the AVX2 build);
# 5. the peers (benches/peers/peers.py), each system in its own process: FAISS IDMap,Flat (the
#    exact ground truth), IDMap,PQ32x4fs + exact re-rank, IVF…,PQ32x4fs + re-rank, HNSW32;
#    hnswlib; usearch f16 and i8;
# 6. benches/peers/report.py merges everything into DIR/bench-<scale>.json and
#    DIR/bench-<scale>.png (fields: docs/bench.md) and prints one JSON summary line.
#
# DIR defaults to docs/. Intermediate files (vectors, store, logs, raw results) stay in
# target/bench/<scale>/; the vectors and the store are reused by later runs of the same scale.
# Every step is bounded by a time limit; any error stops the run with a non-zero exit; servers
# are stopped on exit. Only loopback traffic. Measure on a quiet machine: the numbers are
# per-core timings and shared cores distort them.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
export OPENBLAS_NUM_THREADS=1

SCALE=100k
OUT=docs
PEERS=all
usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --scale) SCALE=${2:?--scale needs a value}; shift 2 ;;
    --out) OUT=${2:?--out needs a value}; shift 2 ;;
    --peers) PEERS=${2:?--peers needs a value}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
# STEP_S bounds each step (a build, an eval run, a server run, all the peers together).
case $SCALE in
  100k) SUBJECTS=100000 STEP_S=1800 ;;
  1m) SUBJECTS=1000000 STEP_S=7200 ;;
  10m) SUBJECTS=10000000 STEP_S=36000 ;;
  *) echo "bench: --scale must be 100k, 1m or 10m (got $SCALE)" >&2; exit 2 ;;
esac
FAMILIES=$((SUBJECTS / 10))
SEED=1
PROBES=1000
K_PRIMES=(8 32 128) # biomatch: candidates per shard re-ranked exactly; 32 is the default
DEFAULT_K=32
MODEL=synthetic-face@1
THREADS=$(nproc)

work=target/bench/$SCALE
vectors=$work/vectors
store=$work/store
raw=$work/raw
bin=target/release/biomatch
export_bin=target/release/examples/export_vectors
loadgen=target/release/examples/loadgen
venv=.setup/bench-venv
py=$venv/bin/python

log() { echo "bench: $*" >&2; }
die() {
  echo "bench: error: $*" >&2
  exit 1
}
# bounded LIMIT_S CMD...: run CMD, killed after LIMIT_S seconds (exit 124: a failure).
bounded() {
  local limit=$1
  shift
  timeout --kill-after=30 "$limit" "$@" || {
    local rc=$?
    [ $rc -eq 124 ] && die "timed out after ${limit} s: $*"
    die "failed (exit $rc): $*"
  }
}

for tool in cargo python3 g++ curl timeout nproc; do
  command -v "$tool" >/dev/null || die "$tool is required"
done
mkdir -p "$work" "$raw" "$OUT"
# Room for the vectors (528 B), the store, its index and the peers' scratch: ~1.5 kB a template.
need_kb=$((SUBJECTS * 3 / 2))
have_kb=$(df -Pk "$work" | awk 'NR == 2 { print $4 }')
[ "$have_kb" -ge "$need_kb" ] || die "$work needs ~$((need_kb / 1024)) MiB free, has $((have_kb / 1024)) MiB"
cat /proc/loadavg >"$raw/loadavg-start"

# --- 1. builds and the Python peers ------------------------------------------------------------
log "building (release)"
bounded "$STEP_S" cargo build --release --locked -p biomatch-matcher -p biomatch-index-builder
bounded "$STEP_S" cargo build --release --locked -p biomatch-benches --example export_vectors \
  --example loadgen

requirements=benches/peers/requirements.txt
if ! cmp -s "$requirements" "$venv/.bench-requirements" 2>/dev/null; then
  log "installing the Python peers into $venv"
  mkdir -p .setup
  [ -x "$py" ] || bounded 300 python3 -m venv "$venv"
  # hnswlib is an sdist: built here (g++), against the pinned numpy and pybind11.
  bounded "$STEP_S" "$py" -m pip install -q numpy==2.4.6 pybind11==2.13.6 setuptools==80.9.0 \
    wheel==0.48.0 >&2
  bounded "$STEP_S" "$py" -m pip install -q --no-build-isolation -r "$requirements" >&2
  cp "$requirements" "$venv/.bench-requirements"
fi

# --- 2. the vectors ----------------------------------------------------------------------------
population="subjects=$SUBJECTS families=$FAMILIES seed=$SEED probes=$PROBES genuine_mean=0.70 within_family_cosine=0.35 dim=128"
if [ "$(cat "$vectors/READY" 2>/dev/null)" != "$population" ]; then
  log "exporting the population ($population)"
  rm -rf "$vectors"
  bounded "$STEP_S" "$export_bin" --subjects "$SUBJECTS" --families "$FAMILIES" --seed "$SEED" \
    --probes "$PROBES" --out "$vectors" >"$raw/export.json"
  echo "$population" >"$vectors/READY"
else
  log "reusing $vectors"
fi
gallery=$vectors/gallery.bmvec
probes=$vectors/probes.bmvec

# --- 3. biomatch in-process --------------------------------------------------------------------
# eval-synthetic enrolls the population into $store (or reuses it: it checks it is the same
# population) and always runs exact search too, as its baseline.
eval_args=(eval-synthetic --data "$store" --subjects "$SUBJECTS" --families "$FAMILIES"
  --seed "$SEED" --probes "$PROBES" --search index --calibration-scores 1000000)
inproc=$raw/biomatch-inprocess.jsonl
: >"$inproc"
# eval_run LABEL RAYON_THREADS K [ARGS...]: one eval-synthetic run, its last line recorded.
eval_run() {
  local label=$1 threads=$2 k=$3
  shift 3
  local line
  log "biomatch in-process: $label (k'=$k, rayon threads $threads)"
  RAYON_NUM_THREADS=$threads bounded "$STEP_S" "$bin" "${eval_args[@]}" --k-prime "$k" "$@" \
    >"$raw/eval-$label.out" 2>"$raw/eval-$label.log"
  line=$(tail -n 1 "$raw/eval-$label.out")
  [[ $line == \{* ]] || die "eval-synthetic printed no JSON line; see $raw/eval-$label.log"
  printf '{"label":"%s","rayon_threads":%s,"k_prime":%s,"result":%s}\n' \
    "$label" "$threads" "$k" "$line" >>"$inproc"
}
# The first run (re)builds the index generation with every core, so its build time is measured.
eval_run "build-k$DEFAULT_K-all" "$THREADS" "$DEFAULT_K" --rebuild
for k in "${K_PRIMES[@]}"; do
  eval_run "k$k-1thread" 1 "$k"
  [ "$k" = "$DEFAULT_K" ] || eval_run "k$k-all" "$THREADS" "$k"
done
# Where FAISS's AVX-512 build serves (an AVX-512 CPU with the library built by setup), the
# default point again on the linked AVX2 build: what the run-time dispatch gains, same run.
faiss_avx512=false
if grep -q '"faiss_kernels":"avx512"' "$inproc"; then
  faiss_avx512=true
  inproc_main=$inproc
  inproc=$raw/biomatch-inprocess-faiss-avx2.jsonl
  : >"$inproc"
  BIOMATCH_FAISS_SIMD=avx2 eval_run "k$DEFAULT_K-1thread-faiss-avx2" 1 "$DEFAULT_K" --no-exact
  inproc=$inproc_main
fi

# --- 4. biomatch over HTTP ---------------------------------------------------------------------
server_pid=""
base=""
shm_audit=""
stop_server() {
  stop_pid bench "$server_pid"
  server_pid=""
}
cleanup() {
  stop_server
  [ -z "$shm_audit" ] || rm -rf "$shm_audit"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_server NAME DATA [ENV=VALUE...]: serve DATA on a free loopback port, face extractor off,
# only the synthetic model; wait (bounded) for /readyz.
start_server() {
  local name=$1 data=$2
  shift 2
  local port
  port=$(free_port)
  base="http://127.0.0.1:$port"
  env BIOMATCH__EXTRACTORS__FACE__ENABLED=false \
    BIOMATCH__MODELS="[{id=\"$MODEL\",dim=128,modality=\"face\",calibration=\"calibration/$MODEL.json\"}]" \
    "$@" "$bin" serve --data "$data" --listen "127.0.0.1:$port" 2>"$raw/server-$name.log" &
  server_pid=$!
  local deadline=$((SECONDS + STEP_S))
  until curl -fsS -m 2 "$base/readyz" >/dev/null 2>&1; do
    kill -0 "$server_pid" 2>/dev/null || {
      tail -n 20 "$raw/server-$name.log" >&2
      die "the server '$name' exited during start-up; see $raw/server-$name.log"
    }
    [ $SECONDS -lt $deadline ] || die "the server '$name' was not ready within $STEP_S s"
    sleep 0.2
  done
  log "server '$name' ready at $base (pid $server_pid)"
}

# server_memory NAME: the server's VmRSS, RssAnon and RssFile (bytes) as a JSON line.
server_memory() {
  awk -v name="$1" '/^(VmRSS|RssAnon|RssFile):/ { v[$1] = $2 * 1024 }
    END { printf "{\"server\":\"%s\",\"vm_rss\":%d,\"rss_anon\":%d,\"rss_file\":%d}\n", name, v["VmRSS:"], v["RssAnon:"], v["RssFile:"] }' \
    "/proc/$server_pid/status"
}

# http_run LABEL SEARCH: the probes one at a time, in order, after a warm-up of 100.
http_run() {
  local label=$1 search=$2
  local count=$((2 * PROBES))
  log "biomatch over HTTP: $label"
  bounded "$STEP_S" "$loadgen" --url "$base" --mode identify --probes-file "$probes" \
    --concurrency 1 --requests "$count" --warmup 100 --threshold -1 --max-results 10 \
    --search "$search" --max-seconds "$((STEP_S < 3600 ? STEP_S : 3600))" --results "$raw/http-$label.jsonl" \
    >"$raw/http-$label.summary.json"
  grep -q "\"ok\":$count," "$raw/http-$label.summary.json" ||
    die "not every request of $label succeeded: $(cat "$raw/http-$label.summary.json")"
}

# check_index: the service answers identify through the index generation eval-synthetic built.
check_index() {
  local v
  v=$(python3 -c 'import json; print(json.dumps({"face": {"template": {"model": "'"$MODEL"'", "vector": [1.0] + [0.0] * 127}}, "max_results": 1, "threshold": -1, "search": "index"}))')
  curl -fsS -m 30 -H 'content-type: application/json' -d "$v" "$base/v1/identify" \
    >"$raw/check-index.json" || die "identify failed: $(cat "$raw/check-index.json")"
  grep -q '"search":"index"' "$raw/check-index.json" ||
    die "the service did not search the index: $(cat "$raw/check-index.json")"
}

memory=$raw/server-memory.jsonl
: >"$memory"
empty=$work/empty-store
rm -rf "$empty"
start_server empty "$empty"
server_memory empty >>"$memory"
stop_server
rm -rf "$empty"

for k in "${K_PRIMES[@]}"; do
  start_server "k$k" "$store" BIOMATCH__SEARCH__K_PRIME="$k"
  check_index
  http_run "index-k$k" index
  server_memory "k$k" >>"$memory"
  if [ "$k" = "$DEFAULT_K" ]; then
    http_run exact exact
    server_memory "k$k-after-exact" >>"$memory"
  fi
  stop_server
done
# The opt-in audit mode for reads: records sealed by the audit thread within 1 s instead of an
# fsync before each answer (config `audit_reads = "batched"`).
start_server audit-batched "$store" BIOMATCH__SEARCH__K_PRIME="$DEFAULT_K" \
  BIOMATCH__AUDIT_READS=batched
http_run "index-k$DEFAULT_K-audit-batched" index
stop_server
if $faiss_avx512; then
  start_server audit-batched-faiss-avx2 "$store" BIOMATCH__SEARCH__K_PRIME="$DEFAULT_K" \
    BIOMATCH__AUDIT_READS=batched BIOMATCH_FAISS_SIMD=avx2
  http_run "index-k$DEFAULT_K-audit-batched-faiss-avx2" index
  stop_server
fi
if [ -d /dev/shm ]; then
  shm_audit=$(mktemp -d /dev/shm/biomatch-bench-audit.XXXXXX)
  start_server audit-tmpfs "$store" BIOMATCH__SEARCH__K_PRIME="$DEFAULT_K" \
    BIOMATCH__AUDIT_DIR="$shm_audit"
  http_run "index-k$DEFAULT_K-audit-tmpfs" index
  stop_server
  rm -rf "$shm_audit"
  shm_audit=""
fi

# --- 5. the peers ------------------------------------------------------------------------------
log "peers: $PEERS (each in its own process; FAISS IDMap,Flat first: the ground truth)"
bounded $((3 * STEP_S)) "$py" benches/peers/peers.py run --gallery "$gallery" --probes "$probes" \
  --out "$raw" --systems "$PEERS" --threads "$THREADS" --timeout-s "$STEP_S"

# --- 6. the report -----------------------------------------------------------------------------
cat /proc/loadavg >"$raw/loadavg-end"
bounded 600 "$py" benches/peers/report.py --scale "$SCALE" --raw "$raw" --out "$OUT" \
  --gallery "$gallery" --probes "$probes" --k-default "$DEFAULT_K"
