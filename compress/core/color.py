"""BT.601 colour conversions, as MATLAB's ``rgb2ycbcr`` (the SR literature's PSNR-Y convention).

Values are in [0, 1]; Y spans [16/255, 235/255]. Works on numpy arrays (H, W, 3) and on torch
tensors (N, 3, H, W).
"""

from __future__ import annotations

import numpy as np
import torch

BT601_MATRIX = np.array(
    [[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]], dtype=np.float64
) / 255.0
BT601_OFFSET = np.array([16.0, 128.0, 128.0]) / 255.0
BT601_INVERSE = np.linalg.inv(BT601_MATRIX)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Luma of an (H, W, 3) RGB array in [0, 1], BT.601 studio swing, as float64."""
    return img.astype(np.float64) @ BT601_MATRIX[0] + BT601_OFFSET[0]


def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] to YCbCr in [0, 1] (BT.601)."""
    m = torch.as_tensor(BT601_MATRIX, dtype=x.dtype, device=x.device)
    off = torch.as_tensor(BT601_OFFSET, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return torch.einsum("ij,njhw->nihw", m, x) + off


def ycbcr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_ycbcr`."""
    m = torch.as_tensor(BT601_INVERSE, dtype=x.dtype, device=x.device)
    off = torch.as_tensor(BT601_OFFSET, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return torch.einsum("ij,njhw->nihw", m, x - off)
