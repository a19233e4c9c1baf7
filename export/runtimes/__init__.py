"""The runtime table: every way the project runs an artifact, declared once.

``eval``, ``bench``, ``report``, ``upscale`` and ``serve`` all go through :data:`RUNTIMES`. Adding a
runtime is one file in this package (its open function and its :class:`Runtime` entry) and one entry
in :data:`RUNTIMES`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.core.errors import InputError
from compress.core.infer import Upscaler
from compress.core.registry import by_name
from export.runtimes import openvino, ort, pytorch, tflite
from export.runtimes.base import Opened, Runtime
from export.runtimes.ort import ort_session, ort_upscaler
from export.runtimes.tflite import TFLiteRunner, tflite_upscaler

RUNTIMES: tuple[Runtime, ...] = (
    pytorch.PYTORCH,
    pytorch.PYTORCH_CUDA_FP16,
    ort.ORT,
    ort.ORT_CUDA,
    tflite.TFLITE,
    tflite.TFLITE_BUILTIN,
    openvino.OPENVINO,
    openvino.OPENVINO_BF16,
)

__all__ = ["RUNTIMES", "Opened", "Runtime", "TFLiteRunner", "available", "for_file", "open_artifact", "open_upscaler",
           "ort_session", "ort_upscaler", "probe_scale", "runtime", "tflite_upscaler"]


def runtime(name: str) -> Runtime:
    """The entry called ``name``."""
    return by_name(RUNTIMES, name, "runtime", InputError)


def available() -> tuple[Runtime, ...]:
    """The runtimes this host can run (library installed, device present)."""
    return tuple(rt for rt in RUNTIMES if rt.present())


def suffixes() -> tuple[str, ...]:
    return tuple(dict.fromkeys(s for rt in RUNTIMES for s in rt.suffixes))


def for_file(path: str | Path) -> Runtime:
    """The runtime for a file, by its suffix: the primary one, else the first that opens it."""
    suffix = Path(path).suffix.lower()
    for rt in sorted(RUNTIMES, key=lambda r: not r.primary):
        if suffix in rt.suffixes:
            return rt
    raise InputError(f"{path}: unsupported model file type {Path(path).suffix!r} ({', '.join(suffixes())})")


def checked_scale(run: Upscaler, scale: int | None, label: str) -> Upscaler:
    """Wrap ``run`` so that its first call checks the output is ``scale`` times the input."""
    if scale is None:
        return run
    checked = False

    def call(x: np.ndarray) -> np.ndarray:
        nonlocal checked
        y = run(x)
        if not checked:
            got = (y.shape[-2] / x.shape[-2], y.shape[-1] / x.shape[-1]) if y.ndim == 4 else None
            if got is None or got[0] != got[1] or got[0] != scale or y.shape[1] != x.shape[1]:
                have = f"x{got[0]:g}" if got and got[0] == got[1] else f"output shape {tuple(y.shape)}"
                raise InputError(f"{label}: this model upscales {have}, not x{scale} (input {tuple(x.shape)})")
            checked = True
        return y

    return call


def probe_scale(run: Upscaler) -> int:
    """The scale an upscaler has, from one call on an 8x8 input."""
    return int(run(np.zeros((1, 3, 8, 8), dtype=np.float32)).shape[-1] // 8)


def open_artifact(path: str | Path, runtime_name: str | None = None, threads: int = 0,
                  scale: int | None = None) -> Opened:
    """Open ``path`` on ``runtime_name`` (default: the primary runtime for its suffix).

    With ``scale`` the first call checks that the model upscales by that factor.
    """
    path = Path(path)
    rt = runtime(runtime_name) if runtime_name else for_file(path)
    if path.suffix.lower() not in rt.suffixes:
        raise InputError(f"{path}: runtime {rt.name} opens {', '.join(rt.suffixes)} files")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if not rt.present():
        raise InputError(f"{path}: runtime {rt.name} is not available on this host ({rt.library} not importable"
                         f"{'' if rt.device == 'cpu' else ' or no ' + rt.device.upper() + ' device'})")
    opened = rt.open(path, threads, scale)
    return Opened(checked_scale(opened.run, scale, str(path)), opened.sync)


def open_upscaler(path: str | Path, scale: int | None = None, threads: int = 0) -> Upscaler:
    """Upscaler for any artifact on its primary runtime (checkpoint, ``.onnx``, ``.tflite``)."""
    return open_artifact(path, None, threads, scale).run
