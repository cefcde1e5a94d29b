#!/usr/bin/env bash
# The test command: set up a fresh machine if needed, then format check, lints and the whole
# test suite. Slow, large-scale runs live in the benchmarks, not here.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export OPENBLAS_NUM_THREADS=1
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The CUDA execution provider must keep compiling (there is no GPU here to run it).
cargo check -p biomatch-models --features cuda --locked
cargo test --workspace --locked
# Bounded fuzzing of the untrusted-input parsers (ISO/ANSI records, images, JSON bodies):
# 30 s a target; FUZZ_SECONDS=0 skips it.
[ "${FUZZ_SECONDS:-30}" = 0 ] || FUZZ_SECONDS=${FUZZ_SECONDS:-30} scripts/fuzz.sh
