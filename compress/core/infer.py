"""Whole-image and tiled inference, shared by every runtime (PyTorch, ONNX Runtime, TFLite).

An *upscaler* is any callable mapping a float32 NCHW batch in [0, 1] to its NCHW output ``scale``
times larger. Tiling with overlap bounds memory for large inputs; the overlap is cropped from every
tile so borders match whole-image inference up to the model's receptive field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

Upscaler = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class TileConfig:
    """Tiled inference.

    Attributes:
        tile: LR tile side in pixels (0 disables tiling).
        overlap: LR pixels of context added on each side of a tile and cropped from its output.
    """

    tile: int = 0
    overlap: int = 16

    def __post_init__(self) -> None:
        if self.tile < 0 or self.overlap < 0:
            raise ValueError(f"TileConfig: tile={self.tile}, overlap={self.overlap} must be >= 0")


def torch_upscaler(model: nn.Module, device: str = "cpu") -> Upscaler:
    """Wrap a canonical PyTorch model as an upscaler."""
    model = model.to(device).eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x).to(device)).float().cpu().numpy()

    return run


def upscale(fn: Upscaler, lr: np.ndarray, scale: int, tiles: TileConfig = TileConfig()) -> np.ndarray:
    """Upscale one HWC image in [0, 1]; the output is clipped to [0, 1].

    Args:
        fn: upscaler for NCHW batches.
        lr: HWC float32 image.
        scale: SR factor.
        tiles: tiling; ``tile=0`` runs the whole image at once.
    """
    x = np.ascontiguousarray(lr.transpose(2, 0, 1)[None], dtype=np.float32)
    h, w = x.shape[2:]
    if not tiles.tile or (h <= tiles.tile and w <= tiles.tile):
        out = fn(x)
    else:
        out = np.zeros((1, 3, h * scale, w * scale), dtype=np.float32)
        t, o = tiles.tile, tiles.overlap
        for y0 in range(0, h, t):
            for x0 in range(0, w, t):
                y1, x1 = min(y0 + t, h), min(x0 + t, w)
                ya, xa = max(y0 - o, 0), max(x0 - o, 0)
                yb, xb = min(y1 + o, h), min(x1 + o, w)
                part = fn(np.ascontiguousarray(x[:, :, ya:yb, xa:xb]))
                oy, ox = (y0 - ya) * scale, (x0 - xa) * scale
                out[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = part[
                    :, :, oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale
                ]
    return np.clip(out[0].transpose(1, 2, 0), 0.0, 1.0)
