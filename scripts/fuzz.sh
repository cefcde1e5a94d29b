#!/usr/bin/env bash
# Bounded fuzzing of the untrusted-input parsers (fuzz/, cargo-fuzz layout), as CI runs it:
# every target for FUZZ_SECONDS (default 60) from its committed seeds (fuzz/seeds/<target>) and
# the corpus it grew before (fuzz/corpus/<target>, not committed). A crash fails the script; the
# input lands in fuzz/artifacts/<target>/ (replay: cargo fuzz run <target> <file>).
#
#   scripts/fuzz.sh                       all targets, 60 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh image_decode
#
# cargo-fuzz is installed if missing. It needs nightly compiler flags (sanitizer, coverage): the
# nightly toolchain is used when rustup has one, else the stable compiler is told to accept them
# (RUSTC_BOOTSTRAP=1; stable ships the AddressSanitizer runtime on x86_64 Linux).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-60}
targets=("$@")
((${#targets[@]})) || targets=(iso_record image_decode api_json)

command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
toolchain=()
if [ "${FUZZ_TOOLCHAIN:-}" != stable ] && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi

start=$SECONDS
for t in "${targets[@]}"; do
  cargo "${toolchain[@]}" fuzz build -O "$t"
done
echo "fuzz: built ${targets[*]} in $((SECONDS - start)) s (${toolchain[*]:-stable, RUSTC_BOOTSTRAP=1})" >&2
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  seeds=()
  [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
  log=$(mktemp)
  # -rss_limit_mb: the decoders' allocation limits must hold; -timeout: no input may hang.
  if ! cargo "${toolchain[@]}" fuzz run -O "$t" "fuzz/corpus/$t" "${seeds[@]}" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    tail -60 "$log" >&2
    rm -f "$log"
    echo "fuzz: $t FAILED (input in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  execs=$(grep -m1 '^stat::number_of_executed_units' "$log" | awk '{print $2}')
  cov=$(grep -E '^#[0-9]+.*(DONE|pulse)' "$log" | tail -1 | grep -o 'cov: [0-9]*' || true)
  echo "fuzz: $t ok: ${execs:-?} runs in ${secs} s, ${cov:-cov: ?}, corpus $(find "fuzz/corpus/$t" -type f | wc -l) files" >&2
  rm -f "$log"
done
