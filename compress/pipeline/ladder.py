"""The latency ladder: the largest output each latency target admits, measured rather than extrapolated.

A linear fit of p50 against output megapixels over the sizes already timed only picks the first
rung. From there the ladder times real sizes (each in its own process, as every bench configuration)
until a passing rung and a failing rung at most ``STEP`` apart bracket the answer: the report states
the passing size, and the failing one beside it, both measured.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

STEP = 1.15  # output-megapixel ratio between rungs: the resolution of the answer
MAX_RUNGS = 6
MIN_LR_SIDE = 32
MAX_OUTPUT_MP = 40.0  # the top rung (an 8K frame is 33 MP): beyond it the answer is "at least this"
ASPECT = 16 / 9  # rungs are 16:9 frames, like the 1080p output the targets are read against


def target_label(target_ms: float) -> str:
    """``300ms``, ``1000ms``, ``10s``: the names the report, ``upscale --target`` and ``serve`` use."""
    return f"{target_ms / 1000:g}s" if target_ms >= 10_000 else f"{target_ms:g}ms"


@dataclasses.dataclass(frozen=True)
class Rung:
    """One timed size."""

    lr_size: tuple[int, int]
    out_mp: float
    p50_ms: float | None  # None: the configuration failed (its error is in the bench results)


def first_guess_mp(points: list[tuple[float, float]], target_ms: float) -> float | None:
    """Output MP where the least-squares line p50 = a + b * MP through (out_mp, p50_ms) meets the
    target; only where the ladder starts, never a reported figure. None with fewer than 2 points."""
    if len(points) < 2:
        return None
    mp, ms = np.array(sorted(points)).T
    b, a = np.polyfit(mp, ms, 1)
    if b <= 0:
        return float(mp.max())
    return float(max((target_ms - a) / b, 0.01))


def lr_for_output(mp: float, scale: int) -> tuple[int, int]:
    """A 16:9 LR size (sides multiples of 4, at least ``MIN_LR_SIDE``) whose x``scale`` output has about
    ``mp`` megapixels."""
    lr_px = mp * 1e6 / (scale * scale)
    h = max(MIN_LR_SIDE, 4 * round(math.sqrt(lr_px / ASPECT) / 4))
    w = max(MIN_LR_SIDE, 4 * round(h * ASPECT / 4))
    return h, w


def next_rung(mp: float, p50_ms: float, target_ms: float, passed: float | None, failed: float | None) -> float | None:
    """The next rung's output MP, or None once the bracket is within ``STEP``.

    Before a bracket: latency is about proportional to pixels, so jump by ``target / p50`` (at least
    ``STEP``, at most 4x, in the direction of the target). With a bracket: its geometric middle.
    """
    if passed is not None and failed is not None:
        return None if failed / passed <= STEP * 1.001 else math.sqrt(passed * failed)
    ratio = target_ms / p50_ms
    ratio = min(max(ratio, STEP), 4.0) if p50_ms <= target_ms else max(min(ratio, 1 / STEP), 0.25)
    return mp * ratio


def climb(time_at: Callable[[tuple[int, int]], float | None], start_mp: float, target_ms: float,
          scale: int) -> dict[str, object]:
    """Time rungs from ``start_mp`` (see :func:`next_rung`) until a passing rung and a failing one at
    most ``STEP`` above it bracket the largest output meeting ``target_ms``.

    Args:
        time_at: p50 ms of an LR size (None when it failed).
        start_mp: first rung, in output megapixels.
        target_ms: the latency target.
        scale: upscaling factor.

    Returns:
        ``max_output_mp`` (largest measured passing output, None if none passed), ``failing_mp``
        (smallest measured failing output above it, None if none failed) and every rung.
    """
    rungs: list[Rung] = []
    mp, passed, failed = start_mp, None, None
    for _ in range(MAX_RUNGS):
        size = lr_for_output(min(mp, MAX_OUTPUT_MP), scale)
        if any(r.lr_size == size for r in rungs):
            break  # clamped at the smallest or the largest rung
        p50 = time_at(size)
        out_mp = round(size[0] * size[1] * scale * scale / 1e6, 4)
        rungs.append(Rung(size, out_mp, p50))
        if p50 is None:
            break
        if p50 <= target_ms:
            passed = max(passed or 0.0, out_mp)
        else:
            failed = min(failed or math.inf, out_mp)
        mp = next_rung(out_mp, p50, target_ms, passed, failed)
        if mp is None:
            break
    return {"target_ms": target_ms, "max_output_mp": passed, "failing_mp": failed,
            "rungs": [dataclasses.asdict(r) for r in rungs]}
