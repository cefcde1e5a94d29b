#!/usr/bin/env python3
"""Side-by-side: SFace (the current embedder) against dlib's ResNet face descriptor, on the same
detections, with onnxruntime.

usage: compare_face_models.py [MODELS_DIR [FIXTURES_DIR [REPEATS]]]   (defaults .setup/models,
       .setup/fixtures/face, 50)

Detection, landmarks and the warp are face_reference.py's (which mirrors models/src/face/detect.rs
and align.rs): YuNet on the 640 letterbox, largest face, least-squares similarity from the 5 YuNet
points to a template, bilinear warp with replicated borders, RGB 0-255. Only the template and the
crop size differ between the two embedders:
  sface        112x112, the ArcFace 5-point template; input "data" [1,3,112,112]; output "fc1" 128-d
  dlib_resnet  150x150, dlib's face-chip frame (get_face_chip_details, size 150, padding 0.25) for
               the same 5 points (eye centres = mean of dlib's 68-point mean-face eye points 36-41 /
               42-47, nose tip 30, mouth corners 48 / 54); input "data" [1,3,150,150] RGB 0-255;
               output "embedding" 128-d, not normalised
Both embeddings are L2-normalised; scores are cosines (plus, for dlib, the Euclidean distance of
the raw embeddings, dlib's native metric). Timing: 1 intra-op thread, median of REPEATS
runs of the embedder alone on each aligned crop.
"""
import itertools
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import face_reference as ref  # noqa: E402

# dlib/image_transforms/interpolation.h, get_face_chip_details: mean positions of points 17..67
MEAN_X = [0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124,
          0.904991, 0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036,
          0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918,
          0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149,
          0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
          0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874,
          0.553364, 0.490127, 0.42689]
MEAN_Y = [0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891,
          0.0187482, 0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326,
          0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733,
          0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099,
          0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
          0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746,
          0.784792, 0.824182, 0.831803, 0.824182]


def dlib_template(size=150, padding=0.25):
    p = np.stack([MEAN_X, MEAN_Y], 1)
    pick = lambda *idx: p[[i - 17 for i in idx]].mean(0)  # noqa: E731
    pts = np.stack([pick(36, 37, 38, 39, 40, 41), pick(42, 43, 44, 45, 46, 47), pick(30), pick(48), pick(54)])
    return (pts + padding) / (1 + 2 * padding) * size


DLIB_TEMPLATE = dlib_template()


def align(img, landmarks, template, size):
    a, b, tx, ty = ref.similarity(np.asarray(landmarks, dtype=np.float64), template)
    det = max(a * a + b * b, 1e-12)
    u, v = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
    du, dv = u - tx, v - ty
    crop = ref.bilinear(img, (a * du + b * dv) / det, (-b * du + a * dv) / det)
    return np.ascontiguousarray(crop.transpose(2, 0, 1)[None]).astype(np.float32)


def session(path, threads=1):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])


def main(models, fixtures, repeats):
    det = session(f"{models}/yunet.onnx")
    embedders = {
        "sface": (session(f"{models}/sface.onnx"), "data", "fc1", ref.TEMPLATE, 112),
        "dlib_resnet": (session(f"{models}/dlib_resnet.onnx"), "data", "embedding", DLIB_TEMPLATE, 150),
    }
    names = ["person_a_1", "person_a_2", "person_b_1", "person_b_2", "impostor_1", "impostor_2"]
    emb = {m: {} for m in embedders}
    raw_norm = {m: [] for m in embedders}
    raw = {m: {} for m in embedders}
    times = {m: {} for m in embedders}
    for n in names:
        img = np.asarray(Image.open(f"{fixtures}/{n}.jpg").convert("RGB"), dtype=np.float32)
        tensor, scale = ref.letterbox(img)
        faces = ref.decode(det.run(ref.NAMES, {"input": tensor}), scale)
        face = max(faces, key=lambda f: f["bbox"][2] * f["bbox"][3])
        for m, (s, iname, oname, tpl, size) in embedders.items():
            crop = align(img, face["landmarks"], tpl, size)
            e = s.run([oname], {iname: crop})[0][0].astype(np.float64)
            raw_norm[m].append(float(np.linalg.norm(e)))
            raw[m][n] = float(np.linalg.norm(e))
            emb[m][n] = e / np.linalg.norm(e)
            for _ in range(3):
                s.run([oname], {iname: crop})
            t = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                s.run([oname], {iname: crop})
                t.append((time.perf_counter() - t0) * 1e3)
            times[m][n] = statistics.median(t)
    person = lambda n: n.rsplit("_", 1)[0] if n.startswith("person") else n  # noqa: E731
    lines = ["Face embedders side by side: SFace (current) vs dlib ResNet (candidate); cosine of "
             "L2-normalised embeddings", f"onnxruntime {ort.__version__}, CPU, 1 intra-op thread, "
             f"median of {repeats} runs per image (embedder only, aligned crop given)", ""]
    lines.append(f"{'pair':<28}{'kind':<10}{'sface':>9}{'dlib_resnet':>13}{'dlib eucl raw':>15}")
    summary = {m: {"gen": [], "imp": []} for m in embedders}
    for a, b in itertools.combinations(names, 2):
        kind = "genuine" if person(a) == person(b) else "impostor"
        row = f"{a + ' / ' + b:<28}{kind:<10}"
        for m, w in (("sface", 9), ("dlib_resnet", 13)):
            c = float(emb[m][a] @ emb[m][b])
            summary[m]["gen" if kind == "genuine" else "imp"].append(c)
            row += f"{c:>{w}.4f}"
        row += f"{np.linalg.norm(emb['dlib_resnet'][a] * raw['dlib_resnet'][a] - emb['dlib_resnet'][b] * raw['dlib_resnet'][b]):>15.4f}"
        lines.append(row)
    lines.append("")
    for m, (s, iname, oname, tpl, size) in embedders.items():
        g, i = summary[m]["gen"], summary[m]["imp"]
        path = f"{models}/{m}.onnx"
        out_dim = s.get_outputs()[0].shape[-1]
        lines += [
            f"[{m}]",
            f"  input {iname} {s.get_inputs()[0].shape} RGB 0-255, aligned {size}x{size}; output {oname} dim {out_dim}",
            f"  genuine min {min(g):.4f}  impostor max {max(i):.4f}  margin {min(g) - max(i):+.4f}",
            f"  genuine mean {statistics.fmean(g):.4f}  impostor mean {statistics.fmean(i):.4f}",
            f"  raw embedding L2 norm (before normalising) {min(raw_norm[m]):.3f} .. {max(raw_norm[m]):.3f}",
            "  inference ms per image: " + ", ".join(f"{n} {times[m][n]:.2f}" for n in names),
            f"  mean {statistics.fmean(times[m].values()):.2f} ms",
            f"  template {out_dim} x float32 = {4 * out_dim} bytes; model file {os.path.getsize(path):,} bytes",
            "",
        ]
    lines.append("dlib eucl raw: Euclidean distance of the unnormalised dlib embeddings, dlib's own "
                 "metric (same person below 0.6 by dlib's documentation).")
    lines.append("dlib_resnet 150x150 template (x, y) for the 5 YuNet points (eye img-left, eye img-right, "
                 "nose tip, mouth img-left, mouth img-right):")
    lines.append("  " + ", ".join(f"({x:.4f}, {y:.4f})" for x, y in DLIB_TEMPLATE))
    print("\n".join(lines))


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else ".setup/models", args[1] if len(args) > 1 else ".setup/fixtures/face",
         int(args[2]) if len(args) > 2 else 50)
