#!/usr/bin/env bash
# The run command: set up a fresh machine if needed, build biomatch in release mode and run it.
#   scripts/run.sh                 demo: a 100k-subject synthetic gallery in ./data/demo, then a
#                                  1:N evaluation that prints its JSON report
#   scripts/run.sh ARGS...         run `biomatch ARGS...` (e.g. `eval-synthetic --help`)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export OPENBLAS_NUM_THREADS=1
cargo build --release --locked -p biomatch-matcher
bin=target/release/biomatch
if (($#)); then
  exec "$bin" "$@"
fi
mkdir -p data
echo "demo: enrolling 100000 synthetic subjects into data/demo (reused on later runs)" >&2
exec "$bin" eval-synthetic --data data/demo --subjects 100000 --probes 1000 --seed 1
