#!/usr/bin/env bash
# The run command: set up a fresh machine if needed, build biomatch in release mode and run it.
#   scripts/run.sh              the service on the embedded default store ./data/store
#                               (http://127.0.0.1:8080; Ctrl-C or SIGTERM stops it gracefully)
#   scripts/run.sh demo         a 100k-subject synthetic gallery in ./data/demo and a 1:N
#                               evaluation, exact vs the sharded index, printing its JSON report
#   scripts/run.sh ARGS...      `biomatch ARGS...` (e.g. `serve --config biomatch.toml`, `--help`)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export OPENBLAS_NUM_THREADS=1
cargo build --release --locked -p biomatch-matcher
bin=target/release/biomatch
case "${1:-serve-default}" in
  serve-default)
    # The shipped models' calibration tables are built into the binary (a file in
    # $data/calibration/ overrides one); serve needs no other command first.
    exec "$bin" serve --data "${BIOMATCH__DATA:-data/store}"
    ;;
  demo)
    mkdir -p data
    echo "demo: 100000 synthetic subjects in data/demo (reused on later runs)" >&2
    exec "$bin" eval-synthetic --data data/demo --subjects 100000 --probes 1000 --seed 1 --search index
    ;;
  *)
    exec "$bin" "$@"
    ;;
esac
