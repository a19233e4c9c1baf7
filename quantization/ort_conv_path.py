"""Which ONNX Runtime kernel family runs an INT8 convolution, and an exact rewrite that picks the other one.

ONNX Runtime's CPU provider computes a ``QLinearConv`` with U8 activations and S8 weights whose zero
points are all 0 (the form :mod:`quantization.ptq` writes) with MLAS's symmetric indirect convolution
(``MlasConvSym``, ``onnxruntime/core/mlas/lib/convsym.cpp``), whose x86 kernels stop at AVX512-VNNI.
MLAS's AMX-INT8 kernel serves only its quantized GEMM (``MlasGemmU8S8DispatchAmx``,
``qgemm_kernel_amx.cpp``), which a convolution reaches through im2col when the symmetric path is
refused, e.g. by a non-zero weight zero point (``QLinearConv::PrePack``). OpenVINO's oneDNN, by
contrast, ranks AMX brgemm convolutions first for u8 x s8 (the 2.7-3x gap issue #16 measured on an AMX
Xeon, absent on an AMD EPYC with AVX512-VNNI only).

:func:`shift_weight_zero_points` makes a twin of a QDQ graph in which every S8 convolution weight is
stored one step lower with zero point -1: the dequantized weights, and so the outputs, are bit for bit
those of the original, but ONNX Runtime now takes the im2col + QGEMM path. Whether that is faster is a
property of the host (``python -m benchmarks.ort_conv_path`` times both): on the AMD EPYC it is about
2x slower; on an AMX host the QGEMM path is the only one that can use AMX.
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


def shift_weight_zero_points(src: str | Path, dst: str | Path) -> int:
    """Write ``dst``: ``src`` with every S8 convolution weight stored as ``q - 1`` with zero point ``-1``.

    ``(q - 1) - (-1) = q``, so every dequantized weight, and the model's output, is unchanged; only the
    kernel ONNX Runtime chooses differs (see the module docstring).

    Args:
        src: a QDQ ONNX model whose convolution weights are symmetric S8 (zero point 0, values >= -127).
        dst: where the twin is written (atomically).

    Returns:
        The number of weight tensors rewritten.

    Raises:
        ValueError: a weight already has a non-zero zero point or holds -128 (it cannot move down),
            naming the tensor; or ``src`` has no S8 convolution weight at all.
    """
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    nodes = _weight_dequantizers(model.graph)
    if not nodes:
        raise ValueError(f"{src}: no S8 convolution weight with a zero point to shift")
    for node in nodes:
        q = numpy_helper.to_array(inits[node.input[0]])
        zero = numpy_helper.to_array(inits[node.input[2]])
        if zero.any():
            raise ValueError(f"{src}: {node.input[2]} is not 0; the weights are not symmetric")
        if q.min() < -127:
            raise ValueError(f"{src}: {node.input[0]} holds -128 and cannot be stored one step lower")
        inits[node.input[0]].CopyFrom(numpy_helper.from_array((q.astype(np.int16) - 1).astype(np.int8), node.input[0]))
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(np.full_like(zero, -1), node.input[2]))
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return len(nodes)
