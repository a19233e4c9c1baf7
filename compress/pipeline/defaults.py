"""The shipped default weights in ``artifacts/default/`` (one per architecture and scale)."""

from __future__ import annotations

from pathlib import Path

from compress.core.errors import InputError

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "artifacts" / "default"
DEFAULT_MODELS = {("edsr", 2): "edsr_baseline_x2.safetensors", ("edsr", 3): "edsr_baseline_x3.safetensors",
                  ("edsr", 4): "edsr_baseline_x4.safetensors", ("rrdb", 4): "rrdb_compact_x4.safetensors"}


SHIPPED_ARCHS = tuple(dict.fromkeys(a for a, _ in DEFAULT_MODELS))


def default_scale(arch: str) -> int:
    """The scale of ``arch``'s shipped default when none is asked for: its smallest shipped one."""
    scales = [s for a, s in DEFAULT_MODELS if a == arch]
    if not scales:
        raise InputError(f"no shipped default {arch} model; shipped: {', '.join(SHIPPED_ARCHS)}")
    return min(scales)


def default_checkpoint(scale: int, arch: str = "edsr") -> Path:
    """The shipped default weights for (``arch``, ``scale``) in ``artifacts/default/``."""
    if (arch, scale) not in DEFAULT_MODELS:
        raise InputError(f"no shipped default {arch} model for scale {scale}; shipped: "
                         + ", ".join(f"{a} x{s}" for a, s in DEFAULT_MODELS))
    path = DEFAULT_DIR / DEFAULT_MODELS[(arch, scale)]
    if not path.is_file():
        raise InputError(f"{path}: no shipped {arch} x{scale} weights here (see artifacts/default/MODELS.md); "
                         f"pass MODEL=your checkpoint, or train them with make train and copy them there")
    return path
