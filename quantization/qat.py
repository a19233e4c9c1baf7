"""Quantization-aware training that simulates what ONNX Runtime's QDQ INT8 model executes.

Every convolution gets (a) its weight fake-quantized per output channel, symmetric signed 8-bit in
[-127, 127] with scale max|w|/127 (ORT's QInt8 per-channel weights; [-64, 64] for 7-bit weights) and
(b) its input fake-quantized per tensor, asymmetric unsigned 8-bit over a range that always contains
0 (ORT's QUInt8 activations), with round-half-to-even as ORT's QuantizeLinear. ORT's QDQ model also
requantizes the outputs of convolutions and of the residual additions (``Add`` is quantized), so
those get fake quantization too (:func:`output_points`); a convolution followed by ReLU is left
alone there, since ORT fuses the ReLU and quantizes after it, which the next input point covers.

Activation ranges come from MinMax calibration on the calibration patches and stay frozen by
default (``momentum=1``), and :func:`write_qat_ranges` hands exactly those ranges to ORT's
``quantize_static`` for the tensors QAT simulated, so the network trains under the ranges it will run
with (a moving average of batch ranges, or a fresh calibration of the trained model, would drift away
from them). Gradients pass straight through (Bengio et al., arXiv:1308.3432).
After training, :func:`strip_qat` leaves a float model whose weights were trained for INT8.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn.utils import parametrize

from compress.core.archs import structure_of
from compress.core.train_config import TrainConfig
from export.onnx_tail import tied_tensors
from quantization.ptq import image_ranges, pin_image_inputs, tensor_range


def qat_train_config(cfg: TrainConfig) -> TrainConfig:
    """The training settings QAT runs with: FP32 where the recipe says ``precision = "auto"``.

    QAT simulates integer arithmetic, which bf16 autocast blurs on a CPU with native bf16: the next
    convolution casts each fake-quantized activation to bf16's 8 significant bits, so a value ``n * scale``
    with ``|n|`` near 255 moves by up to half a quantization step, and a bf16 forward pass differs from
    FP32 by a few tenths of a grey level RMS, the size of the error QAT is there to remove. A recipe may
    still ask for ``precision = "bf16"`` (faster, approximate); ``fp32`` stays ``fp32``.
    """
    return dataclasses.replace(cfg, precision="fp32") if cfg.precision == "auto" else cfg


class PerChannelWeightFakeQuant(nn.Module):
    """Weight parametrization: symmetric per-output-channel INT8 in [-qmax, qmax].

    ``qmax`` is 127 for ORT's full-range signed weights and 64 for ``reduce_range`` (7-bit) weights.
    """

    def __init__(self, qmax: int = 127) -> None:
        super().__init__()
        self.qmax = qmax

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = (w.detach().abs().amax(dim=(1, 2, 3)) / self.qmax).clamp(min=1e-12)
        zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w.float(), scale.float(), zero, 0, -self.qmax, self.qmax)


@dataclasses.dataclass
class ActivationRange:
    """Running range of one activation tensor (min <= 0 <= max, as ORT forces)."""

    lo: float = 0.0
    hi: float = 0.0
    momentum: float = 0.99
    initialised: bool = False
    observe_only: bool = False

    def update(self, x: torch.Tensor) -> None:
        lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        if self.observe_only:
            self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
            self.initialised = True
        elif not self.initialised:
            self.lo, self.hi, self.initialised = lo, hi, True
        else:
            m = self.momentum
            self.lo, self.hi = m * self.lo + (1 - m) * lo, m * self.hi + (1 - m) * hi

    def qparams(self) -> tuple[float, int]:
        """ORT's asymmetric uint8 parameters: scale = (max - min) / 255, zero point rounded."""
        scale = max((self.hi - self.lo) / 255.0, 1e-8)
        zero = int(np.clip(np.round(-self.lo / scale), 0, 255))
        return scale, zero


def fake_quant_activation(x: torch.Tensor, rng: ActivationRange) -> torch.Tensor:
    scale, zero = rng.qparams()
    # FP32 rounding even under bf16 autocast: the grid is ORT's, not bf16's
    return torch.fake_quantize_per_tensor_affine(x.float(), scale, zero, 0, 255)


def output_points(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules whose outputs ORT's QDQ model requantizes, beyond the convolution inputs.

    Convolution outputs (unless a ReLU follows, which ORT fuses), the residual blocks whose
    forward ends in an ``Add`` (EDSR's ResBlock, RRDB's dense blocks and RRDB blocks), and the
    constant scalings of a block's output (RRDB's 0.2 before its sum: ``QLinearMul``). Those ``Add``
    outputs are requantized even when the recipe leaves ``Add`` out of the quantized operator types:
    they feed a quantized convolution, and ORT then fuses DequantizeLinear-Add-QuantizeLinear into
    ``QLinearAdd``.
    """
    facts = structure_of(model)
    relu_fed = {id(c) for c in facts.relu_fed_convs}
    blocks = {id(b) for b in facts.residual_blocks + facts.scaled_sums}
    return [(n, m) for n, m in model.named_modules()
            if (isinstance(m, nn.Conv2d) and id(m) not in relu_fed) or id(m) in blocks]


@dataclasses.dataclass
class QATState:
    """Handles to undo QAT: hooks, parametrized convolutions and activation ranges.

    ``ranges`` is keyed ``<module>:in`` (convolution inputs) and ``<module>:out`` (see :func:`output_points`).
    ``aliases`` maps a convolution input key to the block output key whose tensor it is (EDSR's
    ``body.1.conv1:in`` is ``body.0:out``): one tensor, one range object, quantized once.
    ``read_from`` maps an output key whose module reads another point's tensor to that point's key
    (RRDB's ``body.0.branch_scale:out`` reads ``body.0.rdb3:out``): the ONNX tensor is found from it.
    """

    convs: list[tuple[str, nn.Conv2d]]
    ranges: dict[str, ActivationRange]
    hooks: list[torch.utils.hooks.RemovableHandle]
    training_ranges: bool = True
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)
    read_from: dict[str, str] = dataclasses.field(default_factory=dict)


def prepare_qat(model: nn.Module, calibration: Iterable[np.ndarray], momentum: float = 1.0,
                reduce_range: bool = False) -> QATState:
    """Insert fake quantization into every convolution of ``model`` (in place).

    Args:
        model: canonical FP32 (or pruned) model.
        calibration: LR batches (NCHW float32) that initialise the activation ranges by MinMax.
        momentum: EMA momentum of activation ranges during training (1: frozen at the MinMax calibration).
        reduce_range: simulate 7-bit weights, as ORT's ``reduce_range`` (CPUs without VNNI).
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    outs = output_points(model)
    ranges = {f"{n}:{side}": ActivationRange(momentum=momentum, observe_only=True)
              for side, mods in (("in", convs), ("out", outs)) for n, _ in mods}
    state = QATState(convs=convs, ranges=ranges, hooks=[])
    scalings = {id(m) for m in structure_of(model).scaled_sums}
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # block outputs of the current calibration batch

    def quant(key: str, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        rng = state.ranges[key]
        if rng.observe_only or (module.training and state.training_ranges and rng.momentum < 1.0):
            rng.update(x.detach())
        return x if rng.observe_only else fake_quant_activation(x, rng)

    def pre_hook(key: str):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple) -> tuple:
            if state.ranges[key].observe_only and id(args[0]) in produced:
                state.aliases[key] = produced[id(args[0])][0]
            if key in state.aliases and not state.ranges[key].observe_only:
                return args  # the producing block's output hook quantized this tensor
            return (quant(key, module, args[0]), *args[1:])
        return hook

    def post_hook(key: str):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            if state.ranges[key].observe_only and not isinstance(module, nn.Conv2d):
                if id(module) in scalings and id(args[0]) in produced:
                    state.read_from[key] = produced[id(args[0])][0]
                produced[id(output)] = (key, output)  # the reference keeps the id unique in this batch
            return quant(key, module, output)
        return hook

    for name, conv in convs:
        state.hooks.append(conv.register_forward_pre_hook(pre_hook(f"{name}:in")))
    for name, module in outs:
        state.hooks.append(module.register_forward_hook(post_hook(f"{name}:out")))
    _hook_leaky_relus(model, state, convs, quant, momentum, produced)
    model.eval()
    with torch.no_grad():
        for batch in calibration:
            produced.clear()
            model(torch.from_numpy(batch))
    produced.clear()
    for key, source in state.aliases.items():
        ranges[key] = ranges[source]
    for rng in ranges.values():
        rng.observe_only = False
    for _, conv in convs:
        parametrize.register_parametrization(conv, "weight", PerChannelWeightFakeQuant(64 if reduce_range else 127))
    return state

def _hook_leaky_relus(model: nn.Module, state: QATState, convs: list[tuple[str, nn.Conv2d]], quant,  # noqa: ANN001
                      momentum: float, produced: dict[int, tuple[str, torch.Tensor]]) -> None:
    """Fake-quantize every LeakyReLU output that follows a convolution, keyed ``<conv>:act``.

    ORT fuses a ReLU into the convolution before it but runs LeakyReLU as its own ``QLinearLeakyRelu``,
    which requantizes its output (RRDB's dense blocks and upsampler: 75 such tensors in the compact
    RRDB x4). A module such as RRDB's ``lrelu`` is called after several convolutions, so each point is
    named by the convolution whose output it reads (the ONNX ``LeakyRelu`` node reading that Conv).
    Points exist only where the calibration pass met them; an output that a convolution reads next
    (RRDB's upsampler) is registered in ``produced``, so that convolution's input aliases it.
    """
    made_by: dict[int, tuple[str, weakref.ref]] = {}  # conv outputs of the current forward, by id

    def reset(module: nn.Module, args: tuple) -> None:
        made_by.clear()

    def record(name: str):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            made_by[id(output)] = (name, weakref.ref(output))
        return hook

    def requantize(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        conv, ref = made_by.pop(id(args[0]), ("", None))
        if ref is None or ref() is not args[0]:  # not a convolution's output (or a reused id)
            return None
        key = f"{conv}:act"
        observing = state.ranges[f"{convs[0][0]}:in"].observe_only
        if key not in state.ranges:
            if not observing:
                return None  # not met during calibration: no range to run with
            state.ranges[key] = ActivationRange(momentum=momentum, observe_only=True)
        out = quant(key, module, output)
        if observing:
            produced[id(out)] = (key, out)
        return out

    state.hooks.append(model.register_forward_pre_hook(reset))
    for name, conv in convs:
        state.hooks.append(conv.register_forward_hook(record(name)))  # after the output's own quantization
    for module in model.modules():
        if isinstance(module, nn.LeakyReLU):
            state.hooks.append(module.register_forward_hook(requantize))


def strip_qat(state: QATState) -> None:
    """Remove fake quantization, keeping the trained float weights (not their quantized copies)."""
    for hook in state.hooks:
        hook.remove()
    for _, conv in state.convs:
        if parametrize.is_parametrized(conv, "weight"):
            parametrize.remove_parametrizations(conv, "weight", leave_parametrized=False)
    state.hooks.clear()


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
