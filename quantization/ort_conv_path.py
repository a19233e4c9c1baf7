"""Which ONNX Runtime kernel family runs an INT8 convolution, and an exact rewrite that picks the other one.

ONNX Runtime's CPU provider computes a ``QLinearConv`` with U8 activations and S8 weights whose zero
points are all 0 (the form :mod:`quantization.ptq` writes) with MLAS's symmetric indirect convolution
(``MlasConvSym``, ``onnxruntime/core/mlas/lib/convsym.cpp``), whose x86 kernels stop at AVX512-VNNI.
MLAS's AMX-INT8 kernel serves only its quantized GEMM (``MlasGemmU8S8DispatchAmx``,
``qgemm_kernel_amx.cpp``), which a convolution reaches through im2col when the symmetric path is
refused, e.g. by a non-zero weight zero point (``QLinearConv::PrePack``). OpenVINO's oneDNN, by
contrast, ranks AMX brgemm convolutions first for u8 x s8 (the 2.7-3x gap issue #16 measured on an AMX
Xeon, absent on an AMD EPYC with AVX512-VNNI only).

:func:`shift_weight_zero_points` makes a twin of a QDQ graph in which every output channel of every S8
convolution weight is stored one step lower with zero point -1 (or one step higher with zero point +1
where the channel already sits at the bottom of its range): the dequantized weights, and so the outputs,
are bit for bit those of the original, but ONNX Runtime now takes the im2col + QGEMM path. Bit for bit
on a CPU with VNNI: without it, MLAS's VPMADDUBSW sums saturate full-range weights differently on the two
paths (7-bit weights, ``reduce_range``, agree; ``benchmarks.ort_conv_path`` checks and refuses). Whether that
is faster is a property of the host (``python -m benchmarks.ort_conv_path`` times both): on the AMD EPYC
of session 17 it ran at 0.5-0.74x; on an AMX host the QGEMM path is the only one that can use AMX.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from compress.core.files import atomic_path


def _weight_dequantizers(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The ``DequantizeLinear`` nodes that feed a convolution's weight from S8 initializers with a zero point."""
    inits = {i.name: i for i in graph.initializer}
    weights = {node.input[1] for node in graph.node if node.op_type == "Conv" and len(node.input) > 1}
    return [node for node in graph.node
            if node.op_type == "DequantizeLinear" and node.output[0] in weights and len(node.input) == 3
            and node.input[0] in inits and node.input[2] in inits
            and inits[node.input[0]].data_type == onnx.TensorProto.INT8]


def _shift_one(q: np.ndarray, zero: np.ndarray, axis: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(q + d, d)`` with ``d`` = -1 or +1 per channel along ``axis``, keeping every value inside the weight's
    range: [-64, 64] for ORT's 7-bit weights (``reduce_range``: larger values may saturate its int16 sums on CPUs
    without VNNI), else the int8 range."""
    lo, hi = (-64, 64) if np.abs(q.astype(np.int16)).max() <= 64 else (-128, 127)
    channels = np.moveaxis(q.astype(np.int16), axis, 0).reshape(q.shape[axis], -1) if zero.ndim else \
        q.astype(np.int16).reshape(1, -1)
    down, up = channels.min(axis=1) - 1 >= lo, channels.max(axis=1) + 1 <= hi
    if not (down | up).all():
        raise ValueError(f"{name}: a channel spans its whole range [{lo}, {hi}]; it cannot be stored one step away")
    step = np.where(down, -1, 1).astype(np.int16)
    shape = [1] * q.ndim
    if zero.ndim:
        shape[axis] = q.shape[axis]
    shifted = (q.astype(np.int16) + step.reshape(shape if zero.ndim else ())).astype(np.int8)
    return shifted, step.astype(np.int8).reshape(zero.shape)


def shift_weight_zero_points(src: str | Path, dst: str | Path) -> int:
    """Write ``dst``: ``src`` with every S8 convolution weight stored one step away, its zero point the same step.

    ``(q + d) - d = q``, so every dequantized weight, and the model's output, is unchanged; only the kernel
    ONNX Runtime chooses differs (see the module docstring).

    Args:
        src: a QDQ ONNX model whose convolution weights are symmetric S8 (zero point 0), full-range or 7-bit.
        dst: where the twin is written (atomically).

    Returns:
        The number of weight tensors rewritten.

    Raises:
        ValueError: naming the tensor, when a weight already has a non-zero zero point, is read by more than
            one node, or has a channel that spans its whole range; or when ``src`` has no S8 convolution weight.
    """
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    nodes = _weight_dequantizers(model.graph)
    if not nodes:
        raise ValueError(f"{src}: no S8 convolution weight with a zero point to shift")
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    for node in nodes:
        q, zero = numpy_helper.to_array(inits[node.input[0]]), numpy_helper.to_array(inits[node.input[2]])
        if zero.any():
            raise ValueError(f"{src}: {node.input[2]} is not 0; the weights are not symmetric")
        if readers[node.input[0]] > 1 or readers[node.input[2]] > 1:
            raise ValueError(f"{src}: {node.input[0]} is read by more than one node; shifting it twice would be wrong")
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % q.ndim
        shifted, step = _shift_one(q, zero, axis, f"{src}: {node.input[0]}")
        inits[node.input[0]].CopyFrom(numpy_helper.from_array(shifted, node.input[0]))
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(step, node.input[2]))
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return len(nodes)
