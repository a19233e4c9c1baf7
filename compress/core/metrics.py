"""PSNR and SSIM as the SR literature reports them.

Convention (EDSR, RCAN, BasicSR): both images rounded to 8 bits, converted to the Y channel of BT.601
(MATLAB ``rgb2ycbcr``), ``scale`` pixels shaved from each border, PSNR over a peak of 255. SSIM is
Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), K1=0.01, K2=0.03, on the same Y image.
RGB PSNR is available but always labelled as such.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter

from compress.core.color import rgb_to_y


def shave(img: np.ndarray, border: int) -> np.ndarray:
    return img[border:-border, border:-border] if border > 0 else img


def psnr_db(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    """PSNR between two arrays on the same scale; inf when they are identical."""
    if a.shape != b.shape:
        raise ValueError(f"psnr_db: shapes differ {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def _y255(img: np.ndarray) -> np.ndarray:
    u8 = np.clip(np.round(img * 255.0), 0, 255) / 255.0
    return rgb_to_y(u8) * 255.0


def y_planes(sr: np.ndarray, hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Both images rounded to 8 bits, as BT.601 Y in [16, 235] levels, ``scale`` pixels shaved: what
    every Y metric compares (compute once, score many)."""
    return shave(_y255(sr), scale), shave(_y255(hr), scale)


def psnr_y_db(sr: np.ndarray, hr: np.ndarray, scale: int) -> float:
    """PSNR on BT.601 Y, ``scale`` pixels shaved, both images rounded to 8 bits (HWC RGB in [0, 1])."""
    return psnr_db(*y_planes(sr, hr, scale), peak=255.0)


def mean_error(a: np.ndarray, b: np.ndarray) -> float:
    """Signed mean of ``a - b`` (same shape)."""
    if a.shape != b.shape:
        raise ValueError(f"mean_error: shapes differ {a.shape} vs {b.shape}")
    return float(np.mean(a.astype(np.float64) - b.astype(np.float64)))


def mean_error_y(sr: np.ndarray, hr: np.ndarray, scale: int) -> float:
    """Signed mean of ``Y(sr) - Y(hr)`` in 8-bit Y levels, same rounding and shave as :func:`psnr_y_db`.

    A model that is too dark or too bright overall (an L1-trained network sits at the median, not the
    mean; INT8 quantization can shift the output's level) shows here; its square is the part of the MSE
    a constant offset explains.
    """
    return mean_error(*y_planes(sr, hr, scale))


def psnr_rgb_db(sr: np.ndarray, hr: np.ndarray, scale: int) -> float:
    """PSNR over the three RGB channels, ``scale`` pixels shaved (not the literature's convention)."""
    q = lambda x: np.clip(np.round(x * 255.0), 0, 255)  # noqa: E731
    return psnr_db(shave(q(sr), scale), shave(q(hr), scale), peak=255.0)


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Mean SSIM of two single-channel images (Gaussian window, sigma 1.5, truncated to 11x11)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    blur = lambda x: gaussian_filter(x, 1.5, truncate=3.5, mode="reflect")  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    # 'valid' region as in the reference implementation: drop the 5-pixel rim the window overhangs
    return float(s[5:-5, 5:-5].mean()) if min(s.shape) > 10 else float(s.mean())


def ssim_y(sr: np.ndarray, hr: np.ndarray, scale: int) -> float:
    """SSIM on BT.601 Y with ``scale`` pixels shaved (HWC RGB in [0, 1])."""
    return ssim(*y_planes(sr, hr, scale))
