#!/usr/bin/env python3
"""Convert MediaPipe's face_landmark.tflite / iris_landmark.tflite (Apache-2.0, shipped in the
`mediapipe==0.10.14` wheel under mediapipe/modules/) to ONNX, by hand: the two graphs use only
DEQUANTIZE (fp16 weights), CONV_2D, DEPTHWISE_CONV_2D, PRELU, ADD, MAX_POOL_2D, PAD and RESHAPE.

Run by scripts/fetch-models.sh (face_mesh.onnx, iris_landmark.onnx: the eye model behind the
`eye_aperture` quality measure, models/src/face/eyes.rs). The ONNX model takes NHWC float input
(N, H, W, 3) in 0-1, any batch N, and returns the TFLite outputs flattened, under their names.
Deterministic (the same bytes for the same inputs and onnx version); checked against Google's
LiteRT interpreter (docs/face-quality.md).

    pip install tflite==2.18.0 onnx numpy
    python3 convert_tflite.py face_landmark.tflite face_mesh.onnx
"""
import sys

import numpy as np
import onnx
import tflite
from onnx import TensorProto, helper, numpy_helper

TYPES = {0: np.float32, 1: np.float16, 2: np.int32}
OPS = {v: k for k, v in tflite.BuiltinOperator.__dict__.items() if not k.startswith("_")}
ACTIVATIONS = {0: None, 1: "Relu", 3: "Relu6"}


def convert(src, dst):
    buf = open(src, "rb").read()
    model = tflite.Model.GetRootAsModel(buf, 0)
    g = model.Subgraphs(0)

    def opcode(op):
        oc = model.OperatorCodes(op.OpcodeIndex())
        return OPS[max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())]

    consts = {}
    for i in range(g.TensorsLength()):
        t = g.Tensors(i)
        b = model.Buffers(t.Buffer())
        if b.DataLength():
            raw = b.DataAsNumpy().tobytes()
            consts[i] = np.frombuffer(raw, dtype=TYPES[t.Type()]).reshape(t.ShapeAsNumpy())
    ops = [g.Operators(k) for k in range(g.OperatorsLength())]
    for op in ops:
        if opcode(op) == "DEQUANTIZE":
            consts[op.Outputs(0)] = consts[op.Inputs(0)].astype(np.float32)

    nodes, inits = [], {}

    def name(i):
        return "t%d" % i

    def init(n, arr):
        inits[n] = numpy_helper.from_array(np.ascontiguousarray(arr), n)
        return n

    def options(op, cls):
        o = cls()
        tab = op.BuiltinOptions()
        o.Init(tab.Bytes, tab.Pos)
        return o

    def emit(kind, inputs, out, activation=0, **attrs):
        act = ACTIVATIONS[activation]
        pre = out + "_pre" if act else out
        nodes.append(helper.make_node(kind, inputs, [pre], **attrs))
        if act:
            nodes.append(helper.make_node(act, [pre], [out]))

    for op in ops:
        code = opcode(op)
        ins = [op.Inputs(j) for j in range(op.InputsLength())]
        out = name(op.Outputs(0))
        if code == "DEQUANTIZE":
            continue
        if code in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            depthwise = code == "DEPTHWISE_CONV_2D"
            o = options(op, tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions)
            w = consts[ins[1]].astype(np.float32)
            # TFLite: conv OHWI, depthwise 1HWC; ONNX: OIHW.
            w = w.transpose(3, 0, 1, 2) if depthwise else w.transpose(0, 3, 1, 2)
            inputs = [name(ins[0]), init(out + "_w", w)]
            if len(ins) > 2 and ins[2] >= 0:
                inputs.append(init(out + "_b", consts[ins[2]].astype(np.float32)))
            attrs = dict(strides=[o.StrideH(), o.StrideW()], group=w.shape[0] if depthwise else 1,
                         kernel_shape=list(w.shape[2:]))
            if o.Padding() == tflite.Padding.SAME:
                attrs["auto_pad"] = "SAME_UPPER"  # TFLite pads the extra pixel at the end
            emit("Conv", inputs, out, o.FusedActivationFunction(), **attrs)
        elif code == "PRELU":
            alpha = consts[ins[1]].astype(np.float32).reshape(-1, 1, 1)
            emit("PRelu", [name(ins[0]), init(out + "_a", alpha)], out)
        elif code == "ADD":
            o = options(op, tflite.AddOptions)
            emit("Add", [name(ins[0]), name(ins[1])], out, o.FusedActivationFunction())
        elif code == "MAX_POOL_2D":
            o = options(op, tflite.Pool2DOptions)
            attrs = dict(kernel_shape=[o.FilterHeight(), o.FilterWidth()],
                         strides=[o.StrideH(), o.StrideW()])
            if o.Padding() == tflite.Padding.SAME:
                attrs["auto_pad"] = "SAME_UPPER"
            emit("MaxPool", [name(ins[0])], out, **attrs)
        elif code == "PAD":
            p = consts[ins[1]].astype(np.int64)[[0, 3, 1, 2]]  # NHWC pairs -> NCHW
            emit("Pad", [name(ins[0]), init(out + "_p", np.concatenate([p[:, 0], p[:, 1]]))], out)
        elif code == "RESHAPE":
            shape = g.Tensors(op.Outputs(0)).ShapeAsNumpy().astype(np.int64)
            shape[0] = -1  # any batch
            nodes.append(helper.make_node("Transpose", [name(ins[0])], [out + "_nhwc"],
                                          perm=[0, 2, 3, 1]))
            emit("Reshape", [out + "_nhwc", init(out + "_s", shape)], out)
        else:
            sys.exit(f"{src}: operator {code} is not handled")

    gin = g.Tensors(g.Inputs(0))
    _, h, w, c = (int(v) for v in gin.ShapeAsNumpy())
    nodes.insert(0, helper.make_node("Transpose", ["input"], [name(g.Inputs(0))], perm=[0, 3, 1, 2]))
    outputs = []
    for i in range(g.OutputsLength()):
        t = g.Tensors(g.Outputs(i))
        n = t.Name().decode()
        nodes.append(helper.make_node("Flatten", [name(g.Outputs(i))], [n]))
        outputs.append(helper.make_tensor_value_info(n, TensorProto.FLOAT,
                                                     ["N", int(np.prod(t.ShapeAsNumpy()[1:]))]))
    graph = helper.make_graph(nodes, "mediapipe",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", h, w, c])],
                              outputs, initializer=list(inits.values()))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8  # ONNX Runtime 1.31 reads up to IR 13
    onnx.checker.check_model(m)
    onnx.save(m, dst)


if __name__ == "__main__":
    convert(sys.argv[1], sys.argv[2])
