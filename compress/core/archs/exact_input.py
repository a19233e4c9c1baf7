"""The first layers of a network read the image in their own precision, never autocast's bf16.

bf16 keeps 8 significant bits: an 8-bit level k/255 over 0.5 rounds up to (k+1)/256 (+0.17 grey levels
over the 256 levels), and EDSR's mean-shifted ``(x - mean) * 255`` rounds to half and whole levels
beyond 64 in magnitude (-0.023 / -0.002 / +0.018 levels on R / G / B over the 256 levels). A network
trained under bf16 autocast on those shifted inputs is run on the exact ones (FP32, ONNX, INT8), so its
output comes out offset; the compact RRDB's mean Y error on Set5 fell from -0.37 to -0.21 grey levels
once its first convolution read FP32 (artifacts/default/MODELS.md). Only the layers that read the image
itself run in FP32; the rest of the network keeps autocast's speed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def no_autocast(x: torch.Tensor) -> Iterator[None]:
    """Autocast off for ``x``'s device inside the block (a no-op where it was off)."""
    with torch.autocast(x.device.type, enabled=False):
        yield


def read_exactly(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` in ``conv``'s weight precision, whatever autocast is in force around it."""
    with no_autocast(x):
        return conv(x.to(conv.weight.dtype))
