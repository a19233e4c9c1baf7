"""Unstructured magnitude pruning under the AGP schedule.

Masks are recomputed at the schedule's pruning steps (the smallest-magnitude weights of each layer,
or of all layers together with ``scope="global"``), kept through fine-tuning by re-applying them
after every optimizer step, and made permanent by :func:`strip_pruning`. Only convolution weights
are pruned: biases, the mean shift (a buffer) and, optionally, the first and last convolutions stay
dense. Dense runtimes do not run faster on these zeros; the gain is storage (compressed or sparse).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from pruning.schedule import PolynomialDecay

SCOPES = ("layer", "global")


def prunable_convs(model: nn.Module, skip_first_last: bool = True) -> list[tuple[str, nn.Conv2d]]:
    """Convolutions eligible for pruning, in definition order; first and last optionally excluded."""
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return convs[1:-1] if skip_first_last and len(convs) > 2 else convs


def _keep_mask(magnitudes: torch.Tensor, sparsity: float) -> torch.Tensor:
    """1-D keep-mask zeroing exactly ``int(sparsity * n)`` of the smallest ``magnitudes`` (ties at the
    threshold broken by position, so the sparsity is the target's, never more)."""
    k = int(sparsity * magnitudes.numel())
    mask = torch.ones_like(magnitudes)
    if k > 0:
        mask[magnitudes.argsort(stable=True)[:k]] = 0.0
    return mask


def magnitude_masks(weights: list[torch.Tensor], sparsity: float, scope: str) -> list[torch.Tensor]:
    """Keep-masks that zero the ``sparsity`` fraction of smallest magnitudes (per layer or globally).

    Exactly that fraction is zeroed, also where magnitudes tie at the threshold (e.g. weights already zero).
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    flats = [w.detach().abs().flatten() for w in weights]
    if scope == "global":
        pieces = _keep_mask(torch.cat(flats), sparsity).split([f.numel() for f in flats])
    else:
        pieces = [_keep_mask(f, sparsity) for f in flats]
    return [piece.view_as(w).to(w.dtype) for piece, w in zip(pieces, weights)]


@dataclasses.dataclass
class MagnitudePruning:
    """Pruning state attached to a model: the layers, their masks and the schedule."""

    layers: list[tuple[str, nn.Conv2d]]
    schedule: PolynomialDecay
    scope: str
    masks: list[torch.Tensor]
    history: list[tuple[int, float]] = dataclasses.field(default_factory=list)

    def update(self, step: int) -> None:
        """Training hook: new masks at pruning steps, masks re-applied after every step."""
        if self.schedule.should_prune(step):
            self.apply()  # rank on the masked weights: the last optimizer step moved the pruned ones off zero
            target = self.schedule(step)
            self.masks = magnitude_masks([m.weight for _, m in self.layers], target, self.scope)
            self.history.append((step, round(target, 6)))
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        for (_, conv), mask in zip(self.layers, self.masks):
            conv.weight.mul_(mask.to(conv.weight.device))

    def layer_sparsity(self) -> dict[str, float]:
        return {name: float((conv.weight == 0).float().mean()) for name, conv in self.layers}

    def overall_sparsity(self) -> float:
        """Zeros among the weights of the pruned layers (the first and last convolutions and biases not
        counted; :func:`conv_weight_sparsity` counts the whole model's convolution weights)."""
        zeros = sum(int((c.weight == 0).sum()) for _, c in self.layers)
        return zeros / max(sum(c.weight.numel() for _, c in self.layers), 1)


def conv_weight_sparsity(model: nn.Module) -> float:
    """Zeros among all convolution weights of ``model`` (those left dense included), as the file holds them."""
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    return sum(int((w == 0).sum()) for w in weights) / max(sum(w.numel() for w in weights), 1)


def prune_low_magnitude(
    model: nn.Module, schedule: PolynomialDecay, scope: str = "layer", skip_first_last: bool = True
) -> MagnitudePruning:
    """Attach AGP magnitude pruning to ``model``; pass ``.update`` to the training loop as a hook.

    Args:
        model: canonical model (edited in place by the masks).
        schedule: sparsity over training steps (AGP: ``PolynomialDecay(power=3)``).
        scope: ``layer`` (each layer at the target) or ``global`` (one threshold for all layers).
        skip_first_last: keep the first and last convolutions dense (they are small and sensitive).
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    layers = prunable_convs(model, skip_first_last)
    state = MagnitudePruning(layers, schedule, scope, [torch.ones_like(m.weight) for _, m in layers])
    if schedule.begin_step == 0:  # the training loop's hooks see steps 1, 2, ...: step 0 happens here
        state.update(0)
    return state


def strip_pruning(state: MagnitudePruning) -> dict[str, float]:
    """Make the masks permanent (zeros stay in the dense tensors); returns per-layer sparsity."""
    state.apply()
    sparsity = state.layer_sparsity()
    state.masks = []
    state.layers = []
    return sparsity


@dataclasses.dataclass
class FrozenZeros:
    """Gradient masks that hold a model's zero convolution weights at zero (see :func:`freeze_zeros`)."""

    handles: list[torch.utils.hooks.RemovableHandle]
    zeros: int

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def freeze_zeros(model: nn.Module) -> FrozenZeros:
    """Keep every convolution weight that is exactly zero at zero through further training.

    The sparsity-preserving fine-tuning of a pruned model (tfmot's prune-preserving QAT, "PQAT"): each
    convolution weight with zeros gets a gradient hook that masks their gradients, so an optimizer
    without weight decay (Adam, SGD with momentum) never moves them, and a symmetric INT8 weight
    quantizer maps them to 0. Kernels are the 4-D ``weight`` parameters (``weight.original`` under a
    parametrization, such as a QAT weight fake-quantizer). A dense model has no
    exact zeros and is left without hooks.

    Returns:
        The hooks (``.remove()`` them after training) and the number of weights held.
    """
    handles, zeros = [], 0
    for name, weight in model.named_parameters():
        # the kernels: ``conv.weight``, or its leaf under a parametrization (the QAT weight fake-quantizer)
        if weight.ndim != 4 or not name.endswith(("weight", "weight.original")) or not weight.requires_grad:
            continue
        keep = weight.detach() != 0
        if bool(keep.all()):
            continue
        zeros += int((~keep).sum())
        handles.append(weight.register_hook(lambda grad, keep=keep: grad * keep.to(grad.device, grad.dtype)))
    return FrozenZeros(handles, zeros)
