#!/usr/bin/env python3
"""Convert dlib's face recognition ResNet (dlib_face_recognition_resnet_model_v1.dat, CC0, as shipped
in the PyPI sdist face_recognition_models==0.3.0) to ONNX, with numpy and the onnx package only.

usage: convert_dlib_resnet.py MODEL.dat OUT.onnx

The .dat file is dlib's own serialisation of its `anet_type` (dlib/examples/dnn_face_recognition_ex.cpp):
a 29-conv ResNet, 150x150 RGB input, 128-d metric embedding. Packed integers are one length byte
(low nibble: byte count, bit 7: negative) and little-endian magnitude bytes; floats outside tensors
are (mantissa, exponent) pairs of packed integers; tensor data is raw little-endian float32
(dlib/serialize.h, dlib/cuda/tensor.h). The layer details (con_4, affine_, relu_, max_pool_2,
avg_pool_2, add_prev_1, fc_2, input_rgb_image_sized) are read in file order, which is bottom-up
(input first); the tag/skip wiring of the residual blocks is not stored as strings, so the expected
layer sequence of anet_type is generated here and the file is checked against it.

The graph computes exactly dlib's forward pass:
  input  "data"  [1,3,150,150] float32, RGB, 0-255 (dlib's (x - mean_c)/256 is inside the graph)
  output "embedding" [1,128] float32, not normalised (dlib compares Euclidean distances < 0.6;
         L2-normalise it for cosine scoring)
Each affine (batch-norm folded by dlib) is folded into the preceding convolution. dlib's add_prev
adds tensors of different sizes by zero-padding both to the larger size (top-left aligned); that
happens in the downsampling blocks and is reproduced with Pad. Output is deterministic: the same
.dat and the same onnx/numpy versions give the same bytes.
"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Reader:
    def __init__(self, data):
        self.b = data
        self.p = 0

    def int(self):
        head = self.b[self.p]
        n, neg = head & 0x0F, head & 0x80
        v = int.from_bytes(self.b[self.p + 1:self.p + 1 + n], "little")
        self.p += 1 + n
        return -v if neg else v

    def float(self):
        mantissa, exponent = self.int(), self.int()
        return float(mantissa) * 2.0 ** exponent

    def string(self):
        n = self.int()
        s = self.b[self.p:self.p + n].decode("ascii")
        self.p += n
        return s

    def tensor(self):
        if self.int() != 2:
            raise ValueError(f"tensor version at {self.p}")
        dims = [self.int() for _ in range(4)]
        count = int(np.prod(dims))
        arr = np.frombuffer(self.b, dtype="<f4", count=count, offset=self.p).astype(np.float32)
        self.p += 4 * count
        return arr, dims

    def alias(self):
        if self.int() != 1:
            raise ValueError(f"alias_tensor version at {self.p}")
        return [self.int() for _ in range(4)]


MARKERS = [b"input_rgb_image_sized", b"con_4", b"affine_", b"relu_", b"max_pool_2", b"avg_pool_2",
           b"add_prev_", b"fc_2"]


def next_layer(r):
    """Move to the next serialised layer-details string at or after r.p; return its name."""
    best = None
    for m in MARKERS:
        prefix = bytes([0x01, len(m)]) + m
        i = r.b.find(prefix, r.p)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, m)
    if best is None:
        return None
    r.p = best[0]
    return r.string()


def read_layers(data):
    r = Reader(data)
    layers = []
    while True:
        name = next_layer(r)
        if name is None:
            break
        if name == "input_rgb_image_sized":
            mean = [r.float(), r.float(), r.float()]
            nr, nc = r.int(), r.int()
            layers.append(("input", {"mean": mean, "size": (nr, nc)}))
        elif name == "con_4":
            params, _ = r.tensor()
            nf, nr, nc = r.int(), r.int(), r.int()
            sy, sx, py, px = r.int(), r.int(), r.int(), r.int()
            fdims, bdims = r.alias(), r.alias()
            for _ in range(4):
                r.float()
            nw = int(np.prod(fdims))
            w = params[:nw].reshape(fdims)
            b = params[nw:nw + int(np.prod(bdims))].reshape(nf)
            if fdims[0] != nf or fdims[2:] != [nr, nc]:
                raise ValueError("con_ shape")
            layers.append(("con", {"w": w, "b": b, "stride": (sy, sx), "pad": (py, px)}))
        elif name == "affine_":
            params, _ = r.tensor()
            gdims, bdims = r.alias(), r.alias()
            mode = r.int()
            n = int(np.prod(gdims))
            layers.append(("affine", {"gamma": params[:n].copy(), "beta": params[n:n + int(np.prod(bdims))].copy(),
                                      "mode": mode}))
        elif name.startswith("relu_"):
            layers.append(("relu", {}))
        elif name in ("max_pool_2", "avg_pool_2"):
            nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
            layers.append(("maxpool" if name.startswith("max") else "avgpool",
                           {"k": (nr, nc), "stride": (sy, sx), "pad": (py, px)}))
        elif name.startswith("add_prev_"):
            layers.append(("add", {}))
        elif name == "fc_2":
            nout, nin = r.int(), r.int()
            params, _ = r.tensor()
            wdims, _bdims = r.alias(), r.alias()
            bmode = r.int()
            for _ in range(4):
                r.float()
            if bmode != 1 or wdims[:2] != [nin, nout]:  # 1 = FC_NO_BIAS
                raise ValueError("fc_ layout")
            layers.append(("fc", {"w": params[:nin * nout].reshape(nin, nout)}))
    return layers


def expected_kinds():
    """anet_type of dnn_face_recognition_ex.cpp, bottom-up."""
    kinds = ["input", "con", "affine", "relu", "maxpool"]
    ares = ["con", "affine", "relu", "con", "affine", "add", "relu"]
    ares_down = ["con", "affine", "relu", "con", "affine", "avgpool", "add", "relu"]
    for n_down, n_res in ((0, 3), (1, 3), (1, 2), (1, 2), (1, 0)):  # 32, 64, 128, 256, 256
        kinds += ares_down * n_down + ares * n_res
    return kinds + ["avgpool", "fc"]


class Graph:
    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, base, arr):
        nm = self.name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), nm))
        return nm

    def op(self, op, inputs, base, **attrs):
        out = self.name(base)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


def conv_out(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def build(layers):
    kinds = [k for k, _ in layers]
    if kinds != expected_kinds():
        raise ValueError("layer sequence differs from dlib's anet_type")
    g = Graph()
    inp = layers[0][1]
    h, w = inp["size"] if inp["size"][0] else (150, 150)
    mean = np.array(inp["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
    x = g.op("Sub", ["data", g.const("mean", mean)], "sub")
    x = g.op("Mul", [x, g.const("scale", np.full((1, 1, 1, 1), 1.0 / 256.0, np.float32))], "norm")
    shape = (3, h, w)
    block_in = None  # (tensor, shape) at the start of the current residual block
    i = 1
    while i < len(layers):
        kind, d = layers[i]
        if kind == "con":
            _, ad = layers[i + 1]
            if len(ad["gamma"]) != d["w"].shape[0]:
                raise ValueError("affine after con")
            if shape[0] != d["w"].shape[1]:
                raise ValueError("channel mismatch")
            if d["stride"] == (1, 1) and d["w"].shape[2] == 3 and block_in is None:
                block_in = (x, shape)
            elif d["stride"] == (2, 2) and d["w"].shape[2] == 3:
                block_in = (x, shape)
            wf = (d["w"] * ad["gamma"][:, None, None, None]).astype(np.float32)
            bf = (d["b"] * ad["gamma"] + ad["beta"]).astype(np.float32)
            k = d["w"].shape[2]
            (sy, sx), (py, px) = d["stride"], d["pad"]
            x = g.op("Conv", [x, g.const("w", wf), g.const("b", bf)], "conv", kernel_shape=[k, k],
                     strides=[sy, sx], pads=[py, px, py, px])
            shape = (d["w"].shape[0], conv_out(shape[1], k, sy, py), conv_out(shape[2], k, sx, px))
            i += 2
            continue
        if kind == "relu":
            x = g.op("Relu", [x], "relu")
        elif kind == "maxpool":
            (ky, kx), (sy, sx), (py, px) = d["k"], d["stride"], d["pad"]
            x = g.op("MaxPool", [x], "maxpool", kernel_shape=[ky, kx], strides=[sy, sx], pads=[py, px, py, px])
            shape = (shape[0], conv_out(shape[1], ky, sy, py), conv_out(shape[2], kx, sx, px))
            block_in = None
        elif kind == "avgpool" and layers[i + 1][0] == "add":
            # ares_down: shortcut = avg_pool(block input); main = block output (x)
            src, sshape = block_in
            (ky, kx), (sy, sx), (py, px) = d["k"], d["stride"], d["pad"]
            sc = g.op("AveragePool", [src], "avgpool", kernel_shape=[ky, kx], strides=[sy, sx],
                      pads=[py, px, py, px])
            sshape = (sshape[0], conv_out(sshape[1], ky, sy, py), conv_out(sshape[2], kx, sx, px))
            x, shape = add_padded(g, x, shape, sc, sshape)
            block_in = None
            i += 2
            continue
        elif kind == "add":
            src, sshape = block_in
            x, shape = add_padded(g, x, shape, src, sshape)
            block_in = None
        elif kind == "avgpool":  # avg_pool_everything
            if d["k"] != (0, 0):
                raise ValueError("expected avg_pool_everything")
            x = g.op("GlobalAveragePool", [x], "gap")
            x = g.op("Flatten", [x], "flatten", axis=1)
        elif kind == "fc":
            x = g.op("MatMul", [x, g.const("fc", d["w"].astype(np.float32))], "fc")
        i += 1
    g.nodes[-1].output[0] = "embedding"
    graph = helper.make_graph(
        g.nodes, "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, h, w])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 128])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="biomatch convert_dlib_resnet.py", producer_version="1")
    model.ir_version = 8
    model.doc_string = ("dlib_face_recognition_resnet_model_v1 (Davis King, CC0 1.0), from PyPI "
                        "face_recognition_models==0.3.0. Input RGB 0-255, 150x150 dlib face chip "
                        "(padding 0.25). Output 128-d, not normalised.")
    onnx.checker.check_model(model, full_check=True)
    return model


def add_padded(g, a, ashape, b, bshape):
    """dlib add_prev_: zero-pad both operands (channels, rows, cols; at the end) to the larger size."""
    out = tuple(max(p, q) for p, q in zip(ashape, bshape))

    def pad(t, s):
        if s == out:
            return t
        pads = [0, 0, 0, 0, 0, out[0] - s[0], out[1] - s[1], out[2] - s[2]]
        return g.op("Pad", [t, g.const("pads", np.array(pads, dtype=np.int64))], "pad", mode="constant")

    return g.op("Add", [pad(a, ashape), pad(b, bshape)], "add"), out


def main(src, dst):
    with open(src, "rb") as f:
        data = f.read()
    model = build(read_layers(data))
    onnx.save(model, dst)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
