"""Bicubic enlargement as MATLAB's ``imresize`` and PIL compute it, in PyTorch.

SRCNN was trained on inputs enlarged with MATLAB's bicubic (Keys' cubic with a = -0.5, no
antialiasing when enlarging); PIL's ``resize(..., BICUBIC)`` computes the same kernel. PyTorch's
``interpolate(mode="bicubic")`` uses a = -0.75 and clamps at the border, which costs a third-party
SRCNN about 0.3 dB. Here the enlargement is a fixed convolution per output phase (exportable to ONNX
with dynamic sizes) and PIL's border rule: taps outside the image are dropped and the remaining
weights renormalised (the numerator and the weight sum are both convolutions of zero-padded inputs).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

PIL_BICUBIC_A = -0.5


def _cubic(x: float, a: float) -> float:
    x = abs(x)
    if x <= 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return 0.0


def bicubic_taps(scale: int, a: float = PIL_BICUBIC_A) -> np.ndarray:
    """(scale, 5) weights: output phase p of an x``scale`` bicubic enlargement reads input offsets -2..2
    (half-pixel centres: output pixel ``i*scale + p`` sits at input coordinate ``i + (p + 0.5)/scale - 0.5``)."""
    taps = np.zeros((scale, 5))
    for p in range(scale):
        d = (p + 0.5) / scale - 0.5
        for k in range(-2, 3):
            taps[p, k + 2] = _cubic(k - d, a)
    return taps


def phase_kernels(scale: int, a: float = PIL_BICUBIC_A) -> np.ndarray:
    """(scale², 5, 5) separable kernels, phase ``p * scale + q`` for output row phase p, column phase q."""
    taps = bicubic_taps(scale, a)
    return np.einsum("pi,qj->pqij", taps, taps).reshape(scale * scale, 5, 5)


def bicubic_up(x: torch.Tensor, scale: int, a: float = PIL_BICUBIC_A) -> torch.Tensor:
    """Enlarge NCHW ``x`` by an integer ``scale`` as PIL's BICUBIC does (float images; no clamping)."""
    n, c, h, w = x.shape
    kernel = torch.from_numpy(phase_kernels(scale, a).astype(np.float32)).to(x.device, x.dtype)[:, None]
    num = F.conv2d(F.pad(x.reshape(n * c, 1, h, w), (2, 2, 2, 2)), kernel)
    den = F.conv2d(F.pad(torch.ones_like(x[:1, :1]), (2, 2, 2, 2)), kernel)
    return F.pixel_shuffle((num / den).reshape(n, c * scale * scale, h, w), scale)
