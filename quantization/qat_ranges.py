"""QAT's activation ranges to and from ONNX Runtime's calibration of the FP32 graph.

:func:`prepare_qat` (in :mod:`quantization.qat`) fake-quantizes tensors of the PyTorch model; these
functions map them to the tensors of the preprocessed ONNX graph ORT quantizes: :func:`load_qat_ranges`
starts QAT from a calibration's ranges, :func:`pin_image_ranges` gives the image's tensors the exact
ranges ORT pins, and :func:`write_qat_ranges` hands the trained ranges back to ``quantize_static``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from torch import nn
from torch.nn.utils import parametrize

from export.onnx_tail import tied_tensors
from quantization.ptq import image_ranges, pin_image_inputs, tensor_range
from quantization.qat import QATState


def _raw_weight(conv: nn.Conv2d) -> np.ndarray:
    """A convolution's float weight, under QAT's parametrization or not."""
    w = conv.parametrizations.weight.original if parametrize.is_parametrized(conv, "weight") else conv.weight
    return w.detach().float().numpy()


def _sum_after(consumers: dict[str, list[onnx.NodeProto]], tensor: str) -> str | None:
    """The output of the ``Add`` that ``tensor`` reaches through ``Mul`` nodes only (a residual sum).

    ``consumers`` maps each tensor of the graph to the nodes that read it.
    """
    while len(consumers.get(tensor, [])) == 1 and consumers[tensor][0].op_type in ("Mul", "Add"):
        node = consumers[tensor][0]
        if node.op_type == "Add":
            return node.output[0]
        tensor = node.output[0]
    return None


def _tensor_keys(state: QATState, model: Path, factors: dict[str, float] | None = None) -> dict[str, str]:
    """QAT range key -> the ONNX tensor it quantizes, found through each convolution's weight name.

    ORT's pre-processing folds a constant ``Mul`` after a convolution (RRDB's 0.2 residual scale) into
    its weights and renames them ``ConvMulFusion_W_<name>``: the Conv node's output is then the rescaled
    tensor, so the ``<name>:out`` range is that tensor's range divided by the folded factor (recorded
    in ``factors``, read from the fused weights). A residual block whose output feeds no convolution
    (RRDB's third dense block, scaled by 0.2 before its sum) maps to the ``Add`` its last direct
    convolution reaches; LeakyReLU points (``<conv>:act``) to the ``LeakyRelu`` node reading the Conv.
    """
    graph = onnx.load(str(model), load_external_data=False).graph
    convs = {n.input[1]: n for n in graph.node if n.op_type == "Conv"}
    weights = {t.name: t for t in graph.initializer if t.name.startswith("ConvMulFusion_W_")}
    lrelu_of = {n.input[0]: n.output[0] for n in graph.node if n.op_type == "LeakyRelu"}
    keys: dict[str, str] = {}
    for name, conv in state.convs:
        plain, fused = convs.get(f"{name}.weight"), convs.get(f"ConvMulFusion_W_{name}.weight")
        if plain is None and fused is None:
            raise ValueError(f"{model}: no Conv node with weight {name}.weight (QAT ranges cannot be mapped)")
        node = plain or fused
        keys[f"{name}:in"] = node.input[0]
        if f"{name}:out" in state.ranges:
            keys[f"{name}:out"] = node.output[0]
        if plain is None and f"{name}:out" in keys:
            w, wf = _raw_weight(conv), onnx.numpy_helper.to_array(weights[fused.input[1]])
            norm = float((w * w).sum())
            if norm > 0 and factors is not None:
                factors[f"{name}:out"] = float((w * wf).sum()) / norm
            elif norm == 0:  # all-zero weights: the folded factor cannot be read, the range not mapped
                del keys[f"{name}:out"]
        if f"{name}:act" in state.ranges and node.output[0] in lrelu_of:
            keys[f"{name}:act"] = lrelu_of[node.output[0]]
    for key, source in state.aliases.items():
        keys[source] = keys[key]
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    for key in [k for k in state.ranges if k.endswith(":out") and k not in keys]:
        block = key.removesuffix(":out")
        last = [n for n, _ in state.convs if n.rpartition(".")[0] == block]
        total = _sum_after(consumers, keys[f"{last[-1]}:out"]) if last and f"{last[-1]}:out" in keys else None
        if total is not None:
            keys[key] = total
    for key, source in state.read_from.items():  # a constant Mul of a point's tensor: ORT's QLinearMul
        muls = [n for n in consumers.get(keys.get(source, ""), []) if n.op_type == "Mul"]
        if key not in keys and len(muls) == 1:
            keys[key] = muls[0].output[0]
    return keys


def load_qat_ranges(state: QATState, model: Path, cache: Path) -> int:
    """Replace QAT's MinMax ranges with those of an ORT calibration cache (e.g. Percentile).

    Args:
        state: from :func:`prepare_qat`, before training.
        model: the pre-processed FP32 ONNX model the cache was calibrated on.
        cache: calibration cache written by :func:`quantization.ptq.calibrate`.

    Returns:
        The number of range keys taken from the cache (the others keep their MinMax range).
    """
    from onnxruntime.quantization.calibrate import load_tensors_data

    data = load_tensors_data(cache)
    factors: dict[str, float] = {}
    loaded = 0
    for key, tensor in _tensor_keys(state, model, factors).items():
        if tensor in data:
            lo, hi = (v / factors.get(key, 1.0) for v in tensor_range(data[tensor]))
            lo, hi = min(lo, hi), max(lo, hi)
            state.ranges[key].lo, state.ranges[key].hi = min(lo, 0.0), max(hi, 0.0)
            loaded += 1
    return loaded


def write_qat_ranges(state: QATState, model: Path, cache: Path) -> int:
    """Overwrite ORT calibration ranges in ``cache`` with the ranges QAT trained under.

    Each convolution of ``state`` is found in the ONNX ``model`` by its weight initializer
    (``<module>.weight``, as the exporter names it); its input tensor takes the ``<module>:in`` range
    and its output tensor the ``<module>:out`` range where QAT simulated one. A block output is the
    input of the convolution it aliases, and the tensors tied to a rewritten output convolution
    (:func:`export.onnx_tail.tied_tensors`) take its range. Tensors QAT did not simulate keep the
    cache's calibrated range.

    Args:
        state: QAT state after training (ranges kept after :func:`strip_qat`).
        model: the pre-processed FP32 ONNX model that ``quantize_static`` will read.
        cache: calibration cache written by :func:`quantization.ptq.calibrate` for ``model``; rewritten.

    Returns:
        The number of tensors whose range now comes from QAT.
    """
    from onnxruntime.quantization.calibrate import TensorData, load_tensors_data, save_tensors_data

    data = load_tensors_data(cache)
    written = set()
    factors: dict[str, float] = {}
    for key, tensor in _tensor_keys(state, model, factors).items():
        if tensor in data:
            rng, f = state.ranges[key], factors.get(key, 1.0)
            lo, hi = sorted((rng.lo * f, rng.hi * f))
            data[tensor] = TensorData(lowest=np.float32(lo), highest=np.float32(hi))
            written.add(tensor)
    graph = onnx.load(str(model), load_external_data=False).graph
    for group in tied_tensors(graph):
        source = next((t for t in group if t in written), None)
        for name in group if source is not None else ():
            if name in data:
                data[name] = data[source]
                written.add(name)
    pinned = pin_image_inputs(data, graph)  # as calibrate pins it
    save_tensors_data(data, cache)
    return len(written - pinned)


def pin_image_ranges(state: QATState, model: Path) -> list[str]:
    """Give the convolution inputs that hold the image's own pixels the exact ranges the INT8 graph will
    use (:func:`quantization.ptq.image_ranges`), so QAT trains on the grid that runs: [0, 1] at
    scale 1/255 (every 8-bit pixel exact) for RRDB's first convolution, EDSR's mean-shifted
    ``(x - mean) * 255`` interval for its head. Call after :func:`prepare_qat` (and any
    :func:`load_qat_ranges`), before training.

    Returns:
        The range keys pinned.
    """
    exact = image_ranges(onnx.load(str(model), load_external_data=False).graph)
    factors: dict[str, float] = {}
    pinned = []
    for key, tensor in _tensor_keys(state, model, factors).items():
        if tensor in exact and key not in factors:
            state.ranges[key].lo, state.ranges[key].hi = min(exact[tensor][0], 0.0), max(exact[tensor][1], 0.0)
            pinned.append(key)
    return pinned
