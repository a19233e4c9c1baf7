"""Structured channel pruning with torch-pruning's dependency graph (Fang et al., DepGraph, CVPR 2023).

Channels are removed for real, so dense runtimes run faster. Coupled channels are removed together:
EDSR's residual stream (every convolution that adds into it), RRDB's dense concatenations and
residual trunk. Convolutions that feed a PixelShuffle (EDSR's upsampler) lose channels in groups of
r*r, which torch-pruning does not model: they are left to it as protected layers (their inputs still
shrink with the residual stream) and pruned by :mod:`pruning.shuffle` when ``upsample_ratio`` asks
for it; an interpolating upsampler's convolutions (RRDB's) are ordinary groups, pruned at
``upsample_ratio`` when it is set and at the trunk's ratio otherwise; the last convolution keeps its
3 outputs. Channel counts are rounded to multiples of ``round_to`` (8 suits INT8 kernels).

The pruned ratio follows the AGP schedule over pruning events, with fine-tuning in between; block
interiors and the upsampler follow the same ramp scaled to their own final ratios.
"""

from __future__ import annotations

import dataclasses
import enum

import torch
import torch_pruning as tp
from torch import nn

from compress.core.archs import structure_of
from pruning.schedule import PolynomialDecay
from pruning.shuffle import kept_groups, prune_shuffle_groups


def protected_convs(model: nn.Module) -> list[nn.Module]:
    """Convolutions whose output channels torch-pruning must not touch (those feeding a PixelShuffle, the
    output convolution)."""
    return structure_of(model).protected_convs()


def widest_prunable(model: nn.Module, upsample_ratio: float = 0.0) -> int:
    """The most channels (or, in a sub-pixel upsampler pruned at ``upsample_ratio`` > 0, shuffle groups)
    of any group channel pruning may narrow (0 if none): a ``round_to`` at or above it keeps every
    layer whole."""
    protected = {id(m) for m in protected_convs(model)}
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d) and id(m) not in protected]
    if upsample_ratio > 0:
        widths += [up.out_channels // (r * r) for up, r, _ in structure_of(model).shuffle_stages()]
    return max(widths, default=0)


def emptied_layers(model: nn.Module, trunk_ratio: float, round_to: int, inner_ratio: float | None = None,
                   upsample_ratio: float = 0.0) -> dict[str, tuple[int, float, int]]:
    """Layers whose final width, under layer-scope pruning, rounds down to no channel at all.

    torch-pruning keeps ``int(width * (1 - ratio))`` channels, rounded down to a multiple of
    ``round_to``; at 0 it leaves the whole group as it was, without a word (a 16-channel RRDB growth
    convolution at ratio 0.5 with ``round_to`` 16). Such a recipe asks for a cut it cannot make.

    Returns:
        name -> (channels, ratio asked, channels that ratio keeps) for each such layer.
    """
    own = {id(m): ratio for convs, ratio in (_per_layer_ratios(model, inner_ratio, upsample_ratio) or {}).items()
           for m in convs}  # the ratios prune_channels gives torch-pruning; every other layer follows the trunk
    protected = {id(m) for m in protected_convs(model)}
    found = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and id(m) not in protected:
            ratio = own.get(id(m), trunk_ratio)
            kept = int(m.out_channels * (1 - ratio))
            if ratio > 0 and kept < round_to:
                found[name] = (m.out_channels, ratio, kept)
    return found


def check_widths(model: nn.Module, round_to: int, trunk_ratio: float, inner_ratio: float | None = None,
                 upsample_ratio: float = 0.0, global_pruning: bool = False) -> None:
    """Refuse a ``round_to`` under which channel pruning of ``model`` would not make the cut it is asked for.

    Raises:
        ValueError: naming ``round_to`` and the layer, when ``round_to`` is not below the widest prunable
            group (nothing would be pruned) or, under layer scope, rounds a layer down to no channel
            (torch-pruning would leave it whole: :func:`emptied_layers`).
    """
    widest = widest_prunable(model, upsample_ratio)
    if round_to >= widest:
        raise ValueError(f"round_to {round_to} is not below the model's widest prunable layer ({widest} channels), "
                         "so nothing would be pruned")
    emptied = {} if global_pruning else emptied_layers(model, trunk_ratio, round_to, inner_ratio, upsample_ratio)
    if emptied:
        name, (width, ratio, kept) = next(iter(emptied.items()))
        raise ValueError(f"round_to {round_to} rounds {len(emptied)} layer(s) down to no channel, which torch-pruning "
                         f"would leave whole instead (first: {name}, {width} channels at ratio {ratio:g} keep {kept}); "
                         f"use round_to <= {min(k for _, _, k in emptied.values())} or a smaller ratio for them")


def _per_layer_ratios(model: nn.Module, inner_ratio: float | None,
                      upsample_ratio: float) -> dict[tuple[nn.Module, ...], float] | None:
    """Final ratios for the groups that do not follow the trunk: block interiors and the convolutions
    of an interpolating upsampler (RRDB's; a sub-pixel upsampler is pruned by :mod:`pruning.shuffle`)."""
    structure = structure_of(model)
    # one tuple key per kind: torch-pruning ranks a tuple's layers together under global pruning (one
    # scope), and each layer on its own otherwise; a key per layer would be its own scope either way
    ratios: dict = {}
    if inner_ratio is not None and structure.inner_convs:
        ratios[tuple(structure.inner_convs)] = inner_ratio
    if upsample_ratio > 0 and structure.upsample_feature_convs:
        ratios[tuple(structure.upsample_feature_convs)] = upsample_ratio
    return ratios or None


class Criterion(enum.Enum):
    """How channel groups are ranked (torch-pruning importances).

    ``MAGNITUDE``: L2 norm of the group's weights (Li et al., "Pruning Filters for Efficient ConvNets",
    ICLR 2017). ``TAYLOR``: first-order Taylor estimate of the loss change, |weight x gradient| summed
    over the group (Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019);
    needs gradients of a batch before each event. ``LAMP``: magnitudes normalised by the layer's
    remaining weights (Lee et al., "Layer-adaptive Sparsity for the Magnitude-based Pruning", ICLR 2021).
    ``FPGM``: distance to the layer's geometric median (He et al., CVPR 2019).
    """

    MAGNITUDE = "magnitude"
    TAYLOR = "taylor"
    LAMP = "lamp"
    FPGM = "fpgm"

    @property
    def needs_gradients(self) -> bool:
        return self is Criterion.TAYLOR

    def importance(self) -> tp.importance.Importance:
        if self is Criterion.TAYLOR:
            return tp.importance.GroupTaylorImportance()
        if self is Criterion.LAMP:
            return tp.importance.LAMPImportance(p=2)
        if self is Criterion.FPGM:
            return tp.importance.FPGMImportance(p=2)
        return tp.importance.GroupMagnitudeImportance(p=2)


def event_ratios(schedule: PolynomialDecay) -> list[float]:
    """Channel ratio the schedule asks for at each of its pruning steps."""
    return [schedule(step) for step in schedule.pruning_steps()]


def ramp_fractions(schedule: PolynomialDecay) -> list[float]:
    """The schedule's ramp at each pruning step as a fraction of its final sparsity (ends at 1).

    Other groups (block interiors, upsampler) follow the same AGP shape scaled to their own final
    ratio; a schedule whose final sparsity is 0 (the trunk left whole) still lends them its shape.
    """
    if schedule.final_sparsity > 0:
        return [r / schedule.final_sparsity for r in event_ratios(schedule)]
    unit = dataclasses.replace(schedule, final_sparsity=0.5)
    return [r / 0.5 for r in event_ratios(unit)]


class RampPruner(tp.pruner.MagnitudePruner):
    """torch-pruning's pruner with AGP-faithful rounding of the kept widths.

    torch-pruning rounds each layer's kept channels *down* to a multiple of ``round_to`` at every
    event, so with few multiples to choose from (64 channels in steps of 8) the first event of a cubic
    ramp (Zhu & Gupta, arXiv:1710.01878: 70% of the final sparsity after one third of the events)
    already lands on the final widths and the later events remove nothing: one-shot pruning under an
    AGP name. Here the events before the last round *up* the width torch-pruning targets (the ramp's
    width, floored), and the last event rounds down as torch-pruning does, so the final widths are
    unchanged (64 channels to 48 over three events: 56, 48, 48 instead of 48, 48, 48). Under global
    pruning each event's widths depend on what the earlier events left, so rounding up there would
    change the final widths: global pruning keeps torch-pruning's rounding.
    """

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        if self.current_step >= self.iterative_steps or self.global_pruning:
            return super()._round_to(n_pruned, current_channels, round_to)
        kept = -(-(current_channels - n_pruned) // round_to) * round_to
        return max(current_channels - kept, 0)


@dataclasses.dataclass
class ChannelPruning:
    """A torch-pruning pruner driven one AGP event at a time.

    Attributes:
        upsample_keeps: shuffle groups each upsampler stage keeps after each event (empty: the
            upsampler's outputs are not pruned).
    """

    model: nn.Module
    pruner: tp.pruner.BasePruner
    events: int
    upsample_keeps: tuple[int, ...] = ()
    done: int = 0

    def step(self) -> None:
        """Run the next pruning event (removes channels from ``model`` in place)."""
        if self.done >= self.events:
            raise RuntimeError(f"all {self.events} pruning events already ran")
        self.pruner.step()
        if self.upsample_keeps:
            prune_shuffle_groups(structure_of(self.model).shuffle_stages(), self.upsample_keeps[self.done])
        self.done += 1

    def widths(self) -> dict[str, int]:
        return {n: m.out_channels for n, m in self.model.named_modules() if isinstance(m, nn.Conv2d)}


def prune_channels(
    model: nn.Module,
    schedule: PolynomialDecay,
    round_to: int = 8,
    example_size: int = 32,
    global_pruning: bool = False,
    inner_ratio: float | None = None,
    criterion: Criterion = Criterion.MAGNITUDE,
    upsample_ratio: float = 0.0,
) -> ChannelPruning:
    """Prepare AGP channel pruning of ``model``; call ``.step()`` at each of ``schedule.pruning_steps()``.

    Args:
        model: canonical EDSR, RRDBNet or SRCNN (pruned in place).
        schedule: fraction of channels removed from every prunable group over training steps; the
            ratio reached at each pruning step is the schedule's value there (fine-tune in between).
        round_to: keep channel counts at multiples of this.
        example_size: side of the random LR input used to trace the graph.
        global_pruning: rank channel groups across layers instead of pruning each group equally.
        inner_ratio: final ratio for the block interiors (``Structure.inner_convs``: EDSR's conv1, RRDB's
            growth convolutions, SRCNN's hidden layers; default: the schedule's final sparsity); the
            same AGP ramp scaled to it.
        criterion: how channel groups are ranked (:class:`Criterion`); with ``TAYLOR`` the caller
            back-propagates a batch's loss before each ``.step()``.
        upsample_ratio: final fraction of shuffle groups removed from every PixelShuffle stage
            (:mod:`pruning.shuffle`), or of the output channels of an interpolating upsampler's
            convolutions (RRDB's), on the same AGP ramp; 0 leaves the upsampler's outputs at the
            trunk's ratio (EDSR: whole).

    Raises:
        ValueError: for a ratio outside [0, 1) or a ``round_to`` that :func:`check_widths` refuses, before
            the model is touched.
    """
    fractions = ramp_fractions(schedule)
    final = schedule.final_sparsity
    if inner_ratio is not None and not 0.0 <= inner_ratio < 1.0:
        raise ValueError(f"inner_ratio must be in [0, 1), got {inner_ratio!r}")
    if not 0.0 <= upsample_ratio < 1.0:
        raise ValueError(f"upsample_ratio must be in [0, 1), got {upsample_ratio!r}")
    check_widths(model, round_to, final, inner_ratio, upsample_ratio, global_pruning)
    per_layer = _per_layer_ratios(model, inner_ratio, upsample_ratio)

    def scheduler(ratio: float, _steps: int) -> list[float]:
        return [0.0] + [f * ratio for f in fractions]

    model.eval()
    device = next(model.parameters()).device
    example = torch.rand(1, 3, example_size, example_size, device=device)
    pruner = RampPruner(
        model,
        example,
        importance=criterion.importance(),
        pruning_ratio=final,
        pruning_ratio_dict=per_layer,
        iterative_steps=len(fractions),
        iterative_pruning_ratio_scheduler=scheduler,
        ignored_layers=protected_convs(model),
        round_to=round_to,
        global_pruning=global_pruning,
    )
    keeps: tuple[int, ...] = ()
    stages = structure_of(model).shuffle_stages()
    if upsample_ratio > 0 and stages:
        up, r, _ = stages[0]
        groups = up.out_channels // (r * r)
        keeps = tuple(kept_groups(groups, ratio, round_to) for ratio in scheduler(upsample_ratio, 0)[1:])
    return ChannelPruning(model=model, pruner=pruner, events=len(fractions), upsample_keeps=keeps)
