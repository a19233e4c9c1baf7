"""Quantization-aware training that simulates what ONNX Runtime's QDQ INT8 model executes.

Every convolution gets (a) its weight fake-quantized per output channel, symmetric signed 8-bit in
[-127, 127] with scale max|w|/127 (ORT's QInt8 per-channel weights; [-64, 64] for 7-bit weights) and
(b) its input fake-quantized per tensor, asymmetric unsigned 8-bit over a range that always contains
0 (ORT's QUInt8 activations), with round-half-to-even as ORT's QuantizeLinear. ORT's QDQ model also
requantizes the outputs of convolutions and of the residual additions (``Add`` is quantized), so
those get fake quantization too (:func:`output_points`); a convolution followed by ReLU is left
alone there, since ORT fuses the ReLU and quantizes after it, which the next input point covers.

Activation ranges come from MinMax calibration on the calibration patches and stay frozen by
default (``momentum=1``): the trained model is then quantized by ORT with MinMax ranges from the
same patches, so the network trains under the ranges it will run with (a moving average of batch
ranges would drift away from them). Gradients pass straight through (Bengio et al., arXiv:1308.3432).
After training, :func:`strip_qat` leaves a float model whose weights were trained for INT8.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize


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
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -self.qmax, self.qmax)


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
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


def output_points(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules whose outputs ORT's QDQ model requantizes, beyond the convolution inputs.

    Convolution outputs (unless a ReLU follows, which ORT fuses), and the residual blocks whose
    forward ends in an ``Add`` (EDSR's ResBlock, RRDB's dense blocks and RRDB blocks). Those ``Add``
    outputs are requantized even when the recipe leaves ``Add`` out of the quantized operator types:
    they feed a quantized convolution, and ORT then fuses DequantizeLinear-Add-QuantizeLinear into
    ``QLinearAdd``.
    """
    from compress.archs.edsr import ResBlock
    from compress.archs.rrdb import RRDB, ResidualDenseBlock
    from compress.archs.srcnn import SRCNN

    relu_fed = {id(b.conv1) for b in model.modules() if isinstance(b, ResBlock)}
    relu_fed |= {id(m.conv1) for m in model.modules() if isinstance(m, SRCNN)}
    relu_fed |= {id(m.conv2) for m in model.modules() if isinstance(m, SRCNN)}
    return [(n, m) for n, m in model.named_modules()
            if (isinstance(m, nn.Conv2d) and id(m) not in relu_fed) or isinstance(m, (ResBlock, ResidualDenseBlock, RRDB))]


@dataclasses.dataclass
class QATState:
    """Handles to undo QAT: hooks, parametrized convolutions and activation ranges.

    ``ranges`` is keyed ``<module>:in`` (convolution inputs) and ``<module>:out`` (see :func:`output_points`).
    """

    convs: list[tuple[str, nn.Conv2d]]
    ranges: dict[str, ActivationRange]
    hooks: list[torch.utils.hooks.RemovableHandle]
    training_ranges: bool = True


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

    def quant(key: str, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        rng = state.ranges[key]
        if rng.observe_only or (module.training and state.training_ranges and rng.momentum < 1.0):
            rng.update(x.detach())
        return x if rng.observe_only else fake_quant_activation(x, rng)

    def pre_hook(key: str):  # noqa: ANN202
        return lambda module, args: (quant(key, module, args[0]), *args[1:])

    def post_hook(key: str):  # noqa: ANN202
        return lambda module, args, output: quant(key, module, output)

    for name, conv in convs:
        state.hooks.append(conv.register_forward_pre_hook(pre_hook(f"{name}:in")))
    for name, module in outs:
        state.hooks.append(module.register_forward_hook(post_hook(f"{name}:out")))
    model.eval()
    with torch.no_grad():
        for batch in calibration:
            model(torch.from_numpy(batch))
    for rng in ranges.values():
        rng.observe_only = False
    for _, conv in convs:
        parametrize.register_parametrization(conv, "weight", PerChannelWeightFakeQuant(64 if reduce_range else 127))
    return state


def strip_qat(state: QATState) -> None:
    """Remove fake quantization, keeping the trained float weights (not their quantized copies)."""
    for hook in state.hooks:
        hook.remove()
    for _, conv in state.convs:
        if parametrize.is_parametrized(conv, "weight"):
            parametrize.remove_parametrizations(conv, "weight", leave_parametrized=False)
    state.hooks.clear()
