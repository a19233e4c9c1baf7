"""Quantization-aware training that simulates what ONNX Runtime's QDQ INT8 model executes.

Every convolution gets (a) its weight fake-quantized per output channel, symmetric signed 8-bit in
[-127, 127] with scale max|w|/127 (ORT's QInt8 per-channel weights; [-64, 64] for 7-bit weights) and
(b) its input fake-quantized per tensor, asymmetric unsigned 8-bit over a range that always contains
0 (ORT's QUInt8 activations), with round-half-to-even as ORT's QuantizeLinear. ORT's QDQ model also
requantizes the outputs of convolutions and of the residual additions (``Add`` is quantized), so
those get fake quantization too (:func:`output_points`); a convolution followed by ReLU is left
alone there, since ORT fuses the ReLU and quantizes after it, which the next input point covers.

Activation ranges come from MinMax calibration on the calibration patches and stay frozen by
default (``momentum=1``), and :func:`quantization.qat_ranges.write_qat_ranges` hands exactly those
ranges to ORT's ``quantize_static`` for the tensors QAT simulated, so the network trains under the
ranges it will run with (a moving average of batch ranges, or a fresh calibration of the trained model, would drift away
from them). Gradients pass straight through (Bengio et al., arXiv:1308.3432).
After training, :func:`strip_qat` leaves a float model whose weights were trained for INT8.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from compress.core.archs import structure_of
from compress.core.train_config import TrainConfig


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
