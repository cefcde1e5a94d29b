#!/usr/bin/env bash
# Build the AVX-512 variant of the bundled FAISS as one shared library that biomatch loads at run
# time on CPUs that have AVX-512 (F, CD, VL, DQ, BW) — FAISS's own dynamic dispatch came after
# the 1.12 that faiss-sys bundles. The statically linked AVX2 build stays in every binary and
# serves every other machine, or when this library is absent.
#
#   scripts/build-faiss-avx512.sh        # → .setup/faiss-avx512/libbiomatch_faiss_avx512.so
#
# The library holds FAISS (FAISS_OPT_LEVEL=avx512) and its C API; only the C API's `faiss_*`
# symbols are exported, so its C++ symbols never meet the statically linked copy's. Idempotent:
# a stamp records the source and the compiler; a second run with both unchanged does nothing.
# Called by scripts/setup.sh; `BIOMATCH_FAISS_SIMD=avx2` makes biomatch ignore the library.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

out=.setup/faiss-avx512
lib=$out/libbiomatch_faiss_avx512.so
build=target/faiss-avx512-build

manifest=$(cargo metadata --format-version 1 --locked 2>/dev/null | python3 -c '
import json, sys
pkgs = [p for p in json.load(sys.stdin)["packages"] if p["name"] == "faiss-sys"]
if len(pkgs) != 1:
    sys.exit("build-faiss-avx512: expected one faiss-sys package, found %d" % len(pkgs))
print(pkgs[0]["manifest_path"])
')
src=$(dirname "$manifest")/faiss
[ -f "$src/CMakeLists.txt" ] || { echo "build-faiss-avx512: no FAISS sources at $src" >&2; exit 1; }

stamp="$(basename "$(dirname "$manifest")") $(g++ --version | head -n 1) $(sha256sum "$0" | cut -c1-16)"
if [ -f "$lib" ] && [ -f "$out/STAMP" ] && [ "$(cat "$out/STAMP")" = "$stamp" ]; then
  exit 0
fi

echo "build-faiss-avx512: building FAISS for AVX-512 from $src (several minutes, once)" >&2
start=$(date +%s)
mkdir -p "$build"   # and target/ itself: a fresh clone has none before the first cargo build
# x86-64-v4 is AVX-512 F/CD/VL/DQ/BW, the set FAISS's avx512 level compiles for.
CXXFLAGS="-O3 -march=x86-64-v4" CFLAGS="-O3 -march=x86-64-v4" \
  cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DFAISS_OPT_LEVEL=avx512 \
  -DFAISS_ENABLE_GPU=OFF -DFAISS_ENABLE_PYTHON=OFF -DFAISS_ENABLE_C_API=ON -DBUILD_TESTING=OFF \
  -DBUILD_SHARED_LIBS=OFF -DCMAKE_POSITION_INDEPENDENT_CODE=ON >"$build.configure.log" 2>&1 ||
  { tail -n 30 "$build.configure.log" >&2; exit 1; }
cmake --build "$build" --target faiss_c_avx512 -j "$(nproc)" >"$build.log" 2>&1 ||
  { tail -n 40 "$build.log" >&2; exit 1; }

mkdir -p "$out"
printf '{ global: faiss_*; local: *; };\n' >"$build/exports.map"
# -z defs: every symbol resolved now (BLAS, LAPACK, OpenMP, libstdc++), not at first use.
g++ -shared -o "$lib.tmp" -Wl,-soname,libbiomatch_faiss_avx512.so \
  -Wl,--version-script="$build/exports.map" -Wl,-z,defs \
  -Wl,--whole-archive "$build/c_api/libfaiss_c_avx512.a" -Wl,--no-whole-archive \
  "$build/faiss/libfaiss_avx512.a" -fopenmp -lblas -llapack
mv "$lib.tmp" "$lib"
echo "$stamp" >"$out/STAMP"
echo "build-faiss-avx512: $lib in $(($(date +%s) - start)) s" >&2
