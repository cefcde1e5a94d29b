#!/usr/bin/env bash
# The test command: set up a fresh machine if needed, then format check, lints and the whole
# test suite. Slow, large-scale runs live in the benchmarks, not here.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
scripts/setup.sh
export OPENBLAS_NUM_THREADS=1
# A clean clone gains nothing from incremental compilation and it costs gigabytes of target/;
# a developer's tree may keep it (CARGO_INCREMENTAL=1 scripts/test.sh).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
disk_report "test: before"
# Where setup built FAISS's AVX-512 library, its tests must use it (not skip quietly).
! cpu_has_avx512 || [ ! -f .setup/faiss-avx512/libbiomatch_faiss_avx512.so ] ||
  export BIOMATCH_REQUIRE_FAISS_AVX512=1
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The CUDA execution provider must keep compiling (there is no GPU here to run it).
cargo check -p biomatch-models --features cuda --locked
cargo test --workspace --locked
disk_report "test: after the tests"
# Bounded fuzzing of the untrusted-input parsers (ISO/ANSI records, images, JSON bodies):
# 30 s a target; FUZZ_SECONDS=0 skips it.
[ "${FUZZ_SECONDS:-30}" = 0 ] || FUZZ_SECONDS=${FUZZ_SECONDS:-30} scripts/fuzz.sh
