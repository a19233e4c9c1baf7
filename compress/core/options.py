"""argparse types: every command-line value is validated where it is parsed, with the option named.

A bad value makes argparse print ``error: argument --X: <problem>`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Callable, NoReturn

from compress.core.errors import error_line
from compress.core.train_config import MAX_LR

SCALES = (2, 3, 4)
MAX_THREADS = 1024  # OpenMP aborts or crashes past some thousands; no CPU needs more than this
MAX_UPLOAD_MB = 4096  # a request body the service may buffer (``serve --max-upload-mb``)
MAX_PIXELS = 1_000_000_000  # decoded input pixels a request may ask for (``serve --max-pixels``)
MAX_TIMEOUT_S = 3600.0  # the service's upload and header timeouts
MIN_TILE, MAX_TILE = 32, 8192  # below 32 LR pixels a tile is mostly overlap: hours of work for a photo


class Parser(argparse.ArgumentParser):
    """Usage errors in one line (``error: <prog>: <problem>``, escaped and cut by
    :func:`~compress.core.errors.error_line`), exit status 2; subcommands inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, error_line(f"error: {self.prog}: {message}") + "\n")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _int_in(text: str, name: str, low: int, high: int, note: str = "") -> int:
    """An integer in ``[low, high]``; the message names the option's ``name``."""
    value = _int(text)
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{name} must be {low}..{high}{note}, got {value}")
    return value


def int_range(name: str, low: int, high: int) -> Callable[[str], int]:
    """An argparse type for an integer option ``name`` in ``[low, high]`` (for one-off options)."""

    def parse(text: str) -> int:
        return _int_in(text, name, low, high)

    parse.__name__ = name
    return parse


seed = int_range("--seed", 0, 2**63 - 1)  # a recipe override: every RNG here takes a uint64-safe int


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def threads(text: str) -> int:
    """Runtime threads, 0 (the library's default) to :data:`MAX_THREADS`."""
    return _int_in(text, "threads", 0, MAX_THREADS, " (0: the library's default)")


def bench_threads(text: str) -> int:
    """Threads for timing, 1 to :data:`MAX_THREADS` (a benchmark names its thread count)."""
    return _int_in(text, "threads", 1, MAX_THREADS, " for a benchmark")


def bench_warmup(text: str) -> int:
    """Untimed calls before timing, 2..1000 (a benchmark warms up at least twice)."""
    return _int_in(text, "warmup", 2, 1000)


def bench_runs(text: str) -> int:
    """Timed runs per configuration, 1..1000 (the p50 of 10 is the default)."""
    return _int_in(text, "runs", 1, 1000)


def workers(text: str) -> int:
    """Concurrent inference threads of the service, 1..64 (each holds a model's activations)."""
    return _int_in(text, "workers", 1, 64)


def concurrency(text: str) -> int:
    """Requests a load test keeps in flight, 1..64."""
    return _int_in(text, "concurrency", 1, 64)


def queue(text: str) -> int:
    """Requests waiting beyond the workers, 0..1024 (each holds its upload)."""
    return _int_in(text, "queue", 0, 1024)


def tile(text: str) -> int:
    """An LR tile side: 0 (automatic) or :data:`MIN_TILE` to :data:`MAX_TILE`."""
    value = _int(text)
    if value != 0 and not MIN_TILE <= value <= MAX_TILE:
        raise argparse.ArgumentTypeError(f"tile must be 0 (automatic) or {MIN_TILE}..{MAX_TILE}, got {value}")
    return value


def quality(text: str) -> int:
    """A JPEG / WebP quality, 1..100 (PIL's WebP encoder refuses more; its JPEG encoder clamps silently)."""
    return _int_in(text, "quality", 1, 100)


def port(text: str) -> int:
    return _int_in(text, "port", 1, 65535)


def scale(text: str) -> int:
    value = _int(text)
    if value not in SCALES:
        raise argparse.ArgumentTypeError(f"scale must be one of {', '.join(map(str, SCALES))}, got {value}")
    return value


def artifact_scale(text: str) -> int:
    """An artifact's scale, 1..4: the pipeline's 2, 3, 4 and RRDB's x1 (pixel-unshuffle) checkpoints."""
    return _int_in(text, "scale", 1, 4)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def float_range(name: str, high: float) -> Callable[[str], float]:
    """An argparse type for a number option ``name`` in ``(0, high]`` (sizes and times a host can hold)."""

    def parse(text: str) -> float:
        value = positive_float(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"{name} must be in (0, {high:g}], got {text}")
        return value

    parse.__name__ = name
    return parse


def learning_rate(text: str) -> float:
    """A learning rate in (0, :data:`~compress.core.train_config.MAX_LR`]."""
    value = positive_float(text)
    if value > MAX_LR:
        raise argparse.ArgumentTypeError(f"must be in (0, {MAX_LR}], got {text}")
    return value


def unit_float(text: str) -> float:
    """A number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def folder(text: str) -> str:
    """A folder path, not empty (``""`` would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; name a folder")
    return text


def _two_sides(text: str, form: str, example: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"size must be {form} (e.g. {example}), got {text!r}")
    a, b = int(m.group(1)), int(m.group(2))
    if not (1 <= a <= 8192 and 1 <= b <= 8192):
        raise argparse.ArgumentTypeError(f"size sides must be 1..8192, got {text}")
    return a, b


def size_hw(text: str) -> tuple[int, int]:
    """An LR size ``HxW``, positive integers, at most 8192 each, as ``(height, width)``."""
    return _two_sides(text, "HxW", "256x256")


def output_wh(text: str) -> tuple[int, int]:
    """An output size as displays name it, ``WxH`` (``1920x1080``), at most 8192 a side, as ``(width, height)``."""
    return _two_sides(text, "WxH", "1920x1080")


def lr_size(text: str) -> str:
    """``HxW`` (as :func:`size_hw`) or ``1080p`` (the LR size of a 1920x1080 output)."""
    if text == "1080p":
        return text
    if not re.fullmatch(r"\d+x\d+", text):
        raise argparse.ArgumentTypeError(f"size must be HxW (e.g. 256x256) or 1080p, got {text!r}")
    size_hw(text)
    return text


def safetensors_out(text: str) -> str:
    """An output checkpoint path: ``.safetensors``, not an existing folder."""
    path = Path(text)
    if path.suffix != ".safetensors":
        raise argparse.ArgumentTypeError(f"{text}: output checkpoints are written as .safetensors")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a folder")
    return text


def existing_file(text: str) -> Path:
    """A path that names a file (a model artifact to time, say)."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: {'is a folder' if path.is_dir() else 'no such file'}")
    return path
