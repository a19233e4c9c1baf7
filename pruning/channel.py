"""Structured channel pruning with torch-pruning's dependency graph (Fang et al., DepGraph, CVPR 2023).

Channels are removed for real, so dense runtimes run faster. Coupled channels are removed together:
EDSR's residual stream (every convolution that adds into it), RRDB's dense concatenations and
residual trunk. Convolutions that feed a PixelShuffle (EDSR's upsampler) would have to lose channels
in groups of r*r and torch-pruning does not model PixelShuffle, so their outputs are left alone (their
inputs still shrink with the residual stream); the last convolution keeps its 3 outputs. Channel
counts are rounded to multiples of ``round_to`` (8 suits INT8 kernels).

The pruned ratio follows the AGP schedule over pruning events, with fine-tuning in between.
"""

from __future__ import annotations

import dataclasses

import torch
import torch_pruning as tp
from torch import nn

from compress.archs import EDSR, RRDBNet, SRCNN
from pruning.schedule import PolynomialDecay


def protected_convs(model: nn.Module) -> list[nn.Module]:
    """Convolutions whose output channels must not be pruned."""
    if isinstance(model, EDSR):
        return [m for m in model.upsample if isinstance(m, nn.Conv2d)] + [model.conv_last]
    if isinstance(model, RRDBNet):
        return [model.conv_last]
    if isinstance(model, SRCNN):
        return [model.conv3]
    raise TypeError(f"channel pruning supports EDSR, RRDBNet and SRCNN, not {type(model).__name__}")


def event_ratios(schedule: PolynomialDecay) -> list[float]:
    """Channel ratio the schedule asks for at each of its pruning steps."""
    return [schedule(step) for step in schedule.pruning_steps()]


@dataclasses.dataclass
class ChannelPruning:
    """A torch-pruning pruner driven one AGP event at a time."""

    model: nn.Module
    pruner: tp.pruner.BasePruner
    events: int
    done: int = 0

    def step(self) -> None:
        """Run the next pruning event (removes channels from ``model`` in place)."""
        if self.done >= self.events:
            raise RuntimeError(f"all {self.events} pruning events already ran")
        self.pruner.step()
        self.done += 1

    def widths(self) -> dict[str, int]:
        return {n: m.out_channels for n, m in self.model.named_modules() if isinstance(m, nn.Conv2d)}


def prune_channels(
    model: nn.Module,
    schedule: PolynomialDecay,
    round_to: int = 8,
    example_size: int = 32,
    global_pruning: bool = False,
) -> ChannelPruning:
    """Prepare AGP channel pruning of ``model``; call ``.step()`` at each of ``schedule.pruning_steps()``.

    Args:
        model: canonical EDSR, RRDBNet or SRCNN (pruned in place).
        schedule: fraction of channels removed from every prunable group over training steps; the
            ratio reached at each pruning step is the schedule's value there (fine-tune in between).
        round_to: keep channel counts at multiples of this.
        example_size: side of the random LR input used to trace the graph.
        global_pruning: rank channel groups across layers instead of pruning each group equally.

    Importance is the L2 norm of each channel group's weights (torch-pruning's GroupMagnitudeImportance).
    """
    ratios = event_ratios(schedule)
    model.eval()
    device = next(model.parameters()).device
    example = torch.rand(1, 3, example_size, example_size, device=device)
    pruner = tp.pruner.MagnitudePruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=schedule.final_sparsity,
        iterative_steps=len(ratios),
        iterative_pruning_ratio_scheduler=lambda _ratio, _steps: [0.0, *ratios],
        ignored_layers=protected_convs(model),
        round_to=round_to,
        global_pruning=global_pruning,
    )
    return ChannelPruning(model=model, pruner=pruner, events=len(ratios))
