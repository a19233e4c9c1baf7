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

from compress.core.data import round_to_u8

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


def _windows(n: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis as (start, end, window_start, window_end), every window of one length.

    Each tile ``[start, end)`` is read with ``overlap`` pixels of context; windows at the image edge
    are shifted inwards rather than cut, so a compiled runtime sees one input shape for every tile.
    """
    length = min(n, tile + 2 * overlap)
    out = []
    for start in range(0, n, tile):
        end = min(start + tile, n)
        ws = min(max(start - overlap, 0), n - length)
        out.append((start, end, ws, ws + length))
    return out


class NonFiniteOutput(ValueError):
    """The model's output holds NaN or Inf."""


def clip_finite(arr: np.ndarray) -> np.ndarray:
    """A model's float output clipped to [0, 1], refusing NaN and Inf (which clipping would hide)."""
    if not np.isfinite(arr).all():
        raise NonFiniteOutput("the model's output holds NaN or Inf")
    return np.clip(arr, 0.0, 1.0)


def to_u8(arr: np.ndarray) -> np.ndarray:
    """A model's float output to uint8 (:func:`compress.core.data.round_to_u8`), refusing NaN and Inf.

    Raises:
        NonFiniteOutput: ``arr`` holds NaN or Inf (they have no 8-bit value).
    """
    if not np.isfinite(arr).all():
        raise NonFiniteOutput("the model's output holds NaN or Inf")
    return round_to_u8(arr)


def _tiled(fn: Upscaler, x: np.ndarray, scale: int, tiles: TileConfig, out: np.ndarray,
           store: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Fill the HWC ``out`` tile by tile with ``store`` of each tile's cropped HWC output."""
    h, w = x.shape[2:]
    for y0, y1, ya, yb in _windows(h, tiles.tile, tiles.overlap):
        for x0, x1, xa, xb in _windows(w, tiles.tile, tiles.overlap):
            part = fn(np.ascontiguousarray(x[:, :, ya:yb, xa:xb]))
            oy, ox = (y0 - ya) * scale, (x0 - xa) * scale
            crop = part[0, :, oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale]
            out[y0 * scale : y1 * scale, x0 * scale : x1 * scale] = store(crop.transpose(1, 2, 0))
    return out


def _whole(x: np.ndarray, tiles: TileConfig) -> bool:
    h, w = x.shape[2:]
    return not tiles.tile or (h <= tiles.tile and w <= tiles.tile)


def _nchw(lr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(lr.transpose(2, 0, 1)[None], dtype=np.float32)


def upscale(fn: Upscaler, lr: np.ndarray, scale: int, tiles: TileConfig = TileConfig()) -> np.ndarray:
    """Upscale one HWC image in [0, 1]; the output is clipped to [0, 1].

    Raises:
        NonFiniteOutput: the model's output holds NaN or Inf (clipping would hide an Inf).

    Args:
        fn: upscaler for NCHW batches.
        lr: HWC float32 image.
        scale: SR factor.
        tiles: tiling; ``tile=0`` runs the whole image at once. Tiles are read with ``overlap`` pixels of
            context on each side and all have one shape (see :func:`_windows`).
    """
    x = _nchw(lr)
    if _whole(x, tiles):
        return clip_finite(fn(x)[0].transpose(1, 2, 0))
    h, w = x.shape[2:]
    out = np.zeros((h * scale, w * scale, 3), dtype=np.float32)
    return _tiled(fn, x, scale, tiles, out, clip_finite)


def upscale_u8(fn: Upscaler, lr: np.ndarray, scale: int, tiles: TileConfig = TileConfig()) -> np.ndarray:
    """:func:`upscale` straight to an 8-bit HWC image (:func:`to_u8` per tile): a tiled run holds the
    uint8 output and one tile's float output, a quarter of what a float32 output would take.

    Raises:
        NonFiniteOutput: the model's output holds NaN or Inf.
    """
    x = _nchw(lr)
    if _whole(x, tiles):
        return to_u8(fn(x)[0].transpose(1, 2, 0))
    h, w = x.shape[2:]
    return _tiled(fn, x, scale, tiles, np.zeros((h * scale, w * scale, 3), dtype=np.uint8), to_u8)


#: One policy for evaluation, ``upscale``, ``serve`` and the bench: the whole image up to this many
#: output pixels (4 MP: 1 MP of LR at x2, 0.44 MP at x3, 0.25 MP at x4; the upsampler's activations
#: live on the output grid, about 1 GB per 64-channel FP32 activation there; the 1080p outputs are under
#: it at every scale), tiles of one shape beyond, so memory is bounded by the tile (at x4 a 512 px tile
#: gives 4.2 MP, about the whole-image cap).
AUTO_TILE_OUT_PIXELS = 4_000_000
AUTO_TILE = TileConfig(tile=512, overlap=24)


def auto_tiles(lr_shape: tuple[int, ...], tiles: TileConfig, scale: int) -> TileConfig:
    """``tiles`` if tiling was asked for, else :data:`AUTO_TILE` where the output would exceed
    :data:`AUTO_TILE_OUT_PIXELS`, else whole-image."""
    if tiles.tile or lr_shape[0] * lr_shape[1] * scale * scale <= AUTO_TILE_OUT_PIXELS:
        return tiles
    return AUTO_TILE
