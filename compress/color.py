"""BT.601 colour conversions, as MATLAB's ``rgb2ycbcr`` (the SR literature's PSNR-Y convention).

Values are in [0, 1]; Y spans [16/255, 235/255]. Works on numpy arrays (H, W, 3) and on torch
tensors (N, 3, H, W).
"""

from __future__ import annotations

import numpy as np
import torch

_M = np.array(
    [[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]], dtype=np.float64
) / 255.0
_OFF = np.array([16.0, 128.0, 128.0]) / 255.0
_M_INV = np.linalg.inv(_M)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Luma of an (H, W, 3) RGB array in [0, 1], BT.601 studio swing, as float64."""
    return img.astype(np.float64) @ _M[0] + _OFF[0]


def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] to YCbCr in [0, 1] (BT.601)."""
    m = torch.as_tensor(_M, dtype=x.dtype, device=x.device)
    off = torch.as_tensor(_OFF, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return torch.einsum("ij,njhw->nihw", m, x) + off


def ycbcr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_ycbcr`."""
    m = torch.as_tensor(_M_INV, dtype=x.dtype, device=x.device)
    off = torch.as_tensor(_OFF, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return torch.einsum("ij,njhw->nihw", m, x - off)
