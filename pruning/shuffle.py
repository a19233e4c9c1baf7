"""Channel pruning through PixelShuffle: a sub-pixel upsampler loses whole shuffle groups.

A sub-pixel convolution (Shi et al., "Real-Time Single Image and Video Super-Resolution Using an
Efficient Sub-Pixel Convolutional Neural Network", CVPR 2016) with ``G * r²`` outputs feeds a
PixelShuffle(r) that makes ``G`` channels at r times the resolution: output channel ``g`` is built from
input channels ``g*r² .. g*r² + r² - 1``. Removing channel ``g`` after the shuffle therefore removes
those ``r²`` outputs of the upsampling convolution and input ``g`` of the convolution that reads the
shuffled map. torch-pruning's dependency graph does not model PixelShuffle, so these groups are pruned
here. At x4 the two stages run at 1x and 2x the LR size and hold about a third of EDSR-baseline's
MACs, so a trunk-only pruning cannot reach half the MACs there.

Groups are ranked by the L2 norm of every weight they own (the ``r²`` output filters with their
biases and the reading convolution's input slice), the group form of Li et al. (ICLR 2017).
"""

from __future__ import annotations

import torch
from torch import nn


def group_norms(up: nn.Conv2d, reader: nn.Conv2d, r: int) -> torch.Tensor:
    """L2 norm of each shuffle group of ``up`` (its ``r*r`` filters, biases and ``reader``'s input slice)."""
    groups = up.out_channels // (r * r)
    w_out = up.weight.detach().reshape(groups, -1).pow(2).sum(1)
    if up.bias is not None:
        w_out = w_out + up.bias.detach().reshape(groups, r * r).pow(2).sum(1)
    w_in = reader.weight.detach().transpose(0, 1).reshape(groups, -1).pow(2).sum(1)
    return (w_out + w_in).sqrt()


def kept_groups(original: int, ratio: float, round_to: int) -> int:
    """Groups left when ``ratio`` of ``original`` are pruned, rounded to a multiple of ``round_to`` (at
    least ``round_to``, at most ``original``)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"shuffle-group ratio must be in [0, 1), got {ratio!r}")
    keep = original * (1.0 - ratio)
    keep = int(round(keep / round_to)) * round_to
    return min(original, max(round_to, keep))


def _select_out(conv: nn.Conv2d, index: torch.Tensor) -> None:
    conv.weight = nn.Parameter(conv.weight.detach()[index].clone())
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.detach()[index].clone())
    conv.out_channels = int(index.numel())


def _select_in(conv: nn.Conv2d, index: torch.Tensor) -> None:
    conv.weight = nn.Parameter(conv.weight.detach()[:, index].clone())
    conv.in_channels = int(index.numel())


def prune_shuffle_groups(stages: list[tuple[nn.Conv2d, int, nn.Conv2d]], keep: int) -> list[int]:
    """Keep the ``keep`` strongest shuffle groups of every stage, in place.

    Args:
        stages: ``(upsampling conv, shuffle factor r, the conv that reads the shuffled map)`` per stage,
            in forward order (each stage's reader is the next stage's upsampling conv, or the output conv).
        keep: groups to keep in each stage (at most the current count).

    Returns:
        The groups each stage had before.
    """
    before = []
    for up, r, reader in stages:
        groups = up.out_channels // (r * r)
        if up.out_channels != groups * r * r or reader.in_channels != groups:
            raise ValueError(f"upsampling conv with {up.out_channels} outputs does not feed {reader.in_channels} "
                             f"channels through PixelShuffle({r})")
        before.append(groups)
        if keep >= groups:
            continue
        chosen = torch.sort(torch.topk(group_norms(up, reader, r), keep).indices).values
        filters = (chosen[:, None] * (r * r) + torch.arange(r * r)[None, :]).reshape(-1)
        _select_out(up, filters.to(up.weight.device))
        _select_in(reader, chosen.to(reader.weight.device))
    return before
