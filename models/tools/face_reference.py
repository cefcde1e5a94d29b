#!/usr/bin/env python3
"""Reference face pipeline in numpy + onnxruntime: the same models and steps as the Rust
extractor (models/src/face), written independently, so the two can be compared.

usage: face_reference.py MODELS_DIR IMAGE... > out.json
       face_reference.py --bench N MODELS_DIR IMAGE...
Prints {"<image path>": {"score", "bbox", "landmarks", "embedding"} | {"error"}}.
With --bench N: loads the sessions once (1 intra-op thread each, as the Rust extractor's default),
warms up, times N runs of the whole per-image pipeline (decode from bytes in memory, letterbox,
detect, align, embed) for each image one after another, and prints
{"per_image_ms": {path: median ms}, "mean_ms", "images_per_s", "threads", "repeats", "note"}.
Steps (see models/src/face/detect.rs and align.rs for the specification):
letterbox 640 (bilinear, pixel centres, top-left, BGR 0-255) -> YuNet decode (strides 8/16/32,
score sqrt(cls*obj) >= 0.6, NMS IoU 0.3) -> largest face -> least-squares similarity to the ArcFace
template -> bilinear warp 112x112 with replicated borders (RGB 0-255) -> SFace -> L2 normalise.
"""
import io
import json
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
from PIL import Image

INPUT = 640
TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                     [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def bilinear(img, xs, ys):
    """img HxWx3 float32; xs, ys arrays of the same shape -> (..., 3)."""
    h, w = img.shape[:2]
    xs = np.clip(xs, 0, w - 1).astype(np.float32)
    ys = np.clip(ys, 0, h - 1).astype(np.float32)
    x0 = np.floor(xs).astype(np.int64)
    y0 = np.floor(ys).astype(np.int64)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    fx = (xs - x0)[..., None]
    fy = (ys - y0)[..., None]
    top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * fx
    bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * fx
    return top + (bottom - top) * fy


def letterbox(img):
    h, w = img.shape[:2]
    scale = np.float32(min(np.float32(INPUT) / np.float32(w), np.float32(INPUT) / np.float32(h)))
    nw = int(min(max(round(float(np.float32(w) * scale)), 1), INPUT))
    nh = int(min(max(round(float(np.float32(h) * scale)), 1), INPUT))
    xs = (np.arange(nw, dtype=np.float32) + np.float32(0.5)) / scale - np.float32(0.5)
    ys = (np.arange(nh, dtype=np.float32) + np.float32(0.5)) / scale - np.float32(0.5)
    gx, gy = np.meshgrid(xs, ys)
    canvas = np.zeros((INPUT, INPUT, 3), dtype=np.float32)
    canvas[:nh, :nw] = bilinear(img, gx, gy)
    bgr = canvas[..., ::-1]
    return np.ascontiguousarray(bgr.transpose(2, 0, 1)[None]), float(scale)


def decode(out, scale):
    faces = []
    for si, s in enumerate((8, 16, 32)):
        cols = INPUT // s
        cls, obj, bbox, kps = out[si][0, :, 0], out[3 + si][0, :, 0], out[6 + si][0], out[9 + si][0]
        score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
        for idx in np.nonzero(score >= 0.6)[0]:
            r, c = idx // cols, idx % cols
            b = bbox[idx]
            cx, cy = (c + b[0]) * s, (r + b[1]) * s
            bw, bh = np.exp(b[2]) * s, np.exp(b[3]) * s
            k = kps[idx]
            lms = [[(c + k[2 * j]) * s / scale, (r + k[2 * j + 1]) * s / scale] for j in range(5)]
            faces.append({"score": float(score[idx]),
                          "bbox": [float((cx - bw / 2) / scale), float((cy - bh / 2) / scale),
                                   float(bw / scale), float(bh / scale)],
                          "landmarks": [[float(x), float(y)] for x, y in lms]})
    faces.sort(key=lambda f: -f["score"])
    keep = []
    for f in faces:
        if all(iou(k["bbox"], f["bbox"]) <= 0.3 for k in keep):
            keep.append(f)
    return keep


def iou(a, b):
    iw = max(min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def similarity(src, dst):
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    norm = max((s ** 2).sum(), 1e-12)
    a = (s * d).sum() / norm
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / norm
    return a, b, md[0] - (a * ms[0] - b * ms[1]), md[1] - (b * ms[0] + a * ms[1])


def align(img, landmarks):
    a, b, tx, ty = similarity(np.asarray(landmarks, dtype=np.float64), TEMPLATE)
    det = max(a * a + b * b, 1e-12)
    u, v = np.meshgrid(np.arange(112, dtype=np.float64), np.arange(112, dtype=np.float64))
    du, dv = u - tx, v - ty
    sx = (a * du + b * dv) / det
    sy = (-b * du + a * dv) / det
    crop = bilinear(img, sx, sy)
    return np.ascontiguousarray(crop.transpose(2, 0, 1)[None]).astype(np.float32)


NAMES = [f"{k}_{s}" for k in ("cls", "obj", "bbox", "kps") for s in (8, 16, 32)]


def sessions(models, opts):
    det = ort.InferenceSession(f"{models}/yunet.onnx", opts, providers=["CPUExecutionProvider"])
    emb = ort.InferenceSession(f"{models}/sface.onnx", opts, providers=["CPUExecutionProvider"])
    return det, emb


def pipeline(det, emb, source):
    """One image (a path or a file-like object) -> the result entry for it."""
    img = np.asarray(Image.open(source).convert("RGB"), dtype=np.float32)
    tensor, scale = letterbox(img)
    out = det.run(NAMES, {"input": tensor})
    faces = decode(out, scale)
    if not faces:
        return {"error": "no face"}
    face = max(faces, key=lambda f: f["bbox"][2] * f["bbox"][3])
    crop = align(img, face["landmarks"])
    e = emb.run(["fc1"], {"data": crop})[0][0].astype(np.float64)
    face["embedding"] = (e / np.linalg.norm(e)).tolist()
    face["faces"] = len(faces)
    return face


def main(models, paths):
    det, emb = sessions(models, ort.SessionOptions())
    result = {p: pipeline(det, emb, p) for p in paths}
    json.dump(result, sys.stdout)


def bench(repeats, models, paths):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    det, emb = sessions(models, opts)
    data = {}
    for p in paths:
        with open(p, "rb") as f:
            data[p] = f.read()
    for _ in range(2):
        for p in paths:
            pipeline(det, emb, io.BytesIO(data[p]))
    per_image = {}
    for p in paths:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            pipeline(det, emb, io.BytesIO(data[p]))
            times.append((time.perf_counter() - t) * 1e3)
        per_image[p] = statistics.median(times)
    mean = statistics.fmean(per_image.values())
    json.dump({"per_image_ms": per_image, "mean_ms": mean, "images_per_s": 1e3 / mean,
               "threads": 1, "repeats": repeats,
               "note": "onnxruntime " + ort.__version__ + ", CPU, intra_op_num_threads=1, "
                       "inter_op_num_threads=1, images one after another (one core); "
                       "median of the repeats per image, decode from bytes in memory"},
              sys.stdout)
    print()


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--bench":
        if len(sys.argv) < 5 or not sys.argv[2].isdigit() or int(sys.argv[2]) < 1:
            sys.exit(__doc__)
        bench(int(sys.argv[2]), sys.argv[3], sys.argv[4:])
    else:
        if len(sys.argv) < 3:
            sys.exit(__doc__)
        main(sys.argv[1], sys.argv[2:])
