"""The runtime table: every way the project runs an artifact, declared once.

``eval``, ``bench``, ``report``, ``upscale`` and ``serve`` all go through :data:`RUNTIMES`. Adding a
runtime is one file in this package (its open function and its :class:`Runtime` entry) and one entry
in :data:`RUNTIMES`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from compress.core.errors import BadModelOutput, InputError
from compress.core.files import require_regular
from compress.core.infer import Upscaler
from compress.core.registry import by_name
from export.runtimes import openvino, ort, pytorch, tflite
from export.runtimes.base import Opened, Runtime, SaturationRisk, is_float_graph
from export.runtimes.ort import ort_session, ort_upscaler
from export.runtimes.tflite import TFLiteRunner, tflite_upscaler

RUNTIMES: tuple[Runtime, ...] = (
    pytorch.PYTORCH,
    pytorch.PYTORCH_BF16,
    pytorch.PYTORCH_CUDA_FP16,
    ort.ORT,
    ort.ORT_CUDA,
    tflite.TFLITE,
    tflite.TFLITE_BUILTIN,
    openvino.OPENVINO,
    openvino.OPENVINO_BF16,
)

__all__ = ["RUNTIMES", "Opened", "Runtime", "TFLiteRunner", "available", "for_file", "is_float_graph", "open_artifact", "open_upscaler",
           "ort_session", "ort_upscaler", "probe_scale", "runs_here", "runtime", "tflite_upscaler"]


def runtime(name: str) -> Runtime:
    """The entry called ``name``."""
    return by_name(RUNTIMES, name, "runtime", InputError)


def runs_here(name: str) -> bool:
    """Whether the runtime called ``name`` exists and this host can run it (a report made on another
    host may name one that cannot run here, such as bf16 inference on a CPU without native bf16)."""
    return any(rt.name == name and rt.present() for rt in RUNTIMES)


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


PROBE_SCALES = (1, 2, 3, 4)  # factors an artifact may have (RRDB x1 included) when no scale is asked for


def output_problem(x: np.ndarray, y: object, scale: int) -> str:
    """What is wrong with ``y`` as the output of an x``scale`` SR model for the NCHW input ``x`` ('' if nothing)."""
    if not isinstance(y, np.ndarray) or y.ndim != 4:
        return f"its output has shape {getattr(y, 'shape', None)}, not NCHW"
    if not np.issubdtype(y.dtype, np.floating):
        return f"its output is {y.dtype}, not a floating-point image"
    if y.shape[:2] != x.shape[:2]:
        return f"its output has {y.shape[1]} channels for an input of {x.shape[1]} (shape {tuple(y.shape)})"
    if y.shape[2:] != (x.shape[2] * scale, x.shape[3] * scale):
        fy, fx = y.shape[2] / x.shape[2], y.shape[3] / x.shape[3]
        have = f"x{fy:g}" if fy == fx else f"x{fy:g} in height and x{fx:g} in width"
        return f"this model upscales {have}, not x{scale} (input {tuple(x.shape)}, output {tuple(y.shape)})"
    return ""


def checked_scale(run: Upscaler, scale: int, label: str) -> Upscaler:
    """Wrap ``run`` so that every call checks its output: float NCHW, the input's channels, ``scale``
    times its height and width (a fixed-size or odd graph can pass on one input and not on another)."""

    def call(x: np.ndarray) -> np.ndarray:
        y = run(x)
        if problem := output_problem(x, y, scale):
            raise BadModelOutput(f"{label}: {problem}")
        return y

    return call


def probe_scale(run: Upscaler, label: str = "model") -> int:
    """The scale an upscaler has, from one call on an 8x8 RGB input: the same integer factor in height
    and width, one of :data:`PROBE_SCALES`, with a float RGB output."""
    x = np.zeros((1, 3, 8, 8), dtype=np.float32)
    y = run(x)
    factor = y.shape[-1] // 8 if isinstance(y, np.ndarray) and y.ndim == 4 else 0
    if factor not in PROBE_SCALES or output_problem(x, y, factor):
        raise InputError(f"{label}: not a super-resolution model of scale {', '.join(map(str, PROBE_SCALES))}: "
                         f"an 8x8 RGB input gave {getattr(y, 'dtype', '')} output of shape {getattr(y, 'shape', None)}")
    return factor


def open_artifact(path: str | Path, runtime_name: str | None = None, threads: int = 0,
                  scale: int | None = None, untrusted: bool = False) -> Opened:
    """Open ``path`` on ``runtime_name`` (default: the primary runtime for its suffix).

    Every call of the returned upscaler checks its output against ``scale`` (without ``scale``: the
    scale one probe on an 8x8 input finds, in ``Opened.scale``). ``untrusted`` (a file the user names):
    runtimes that cannot load a damaged file safely in-process test it in a child process first, and
    a runtime's ``host_check`` reason, if any, is warned (:class:`SaturationRisk`).
    """
    path = Path(path)
    rt = runtime(runtime_name) if runtime_name else for_file(path)
    if path.suffix.lower() not in rt.suffixes:
        raise InputError(f"{path}: runtime {rt.name} opens {', '.join(rt.suffixes)} files")
    require_regular(path)
    if rt.absence():
        raise InputError(f"{path}: runtime {rt.name} is not available on this host ({rt.absence()})")
    if untrusted and rt.vet is not None:
        rt.vet(path)
    opened = rt.open(path, threads, scale)
    why = rt.host_check(path) if untrusted and rt.host_check is not None else ""
    if why:
        warnings.warn(why, SaturationRisk, stacklevel=2)
    scale = scale if scale is not None else probe_scale(opened.run, str(path))
    return Opened(checked_scale(opened.run, scale, str(path)), opened.sync, scale)


def open_upscaler(path: str | Path, scale: int | None = None, threads: int = 0) -> Upscaler:
    """Upscaler for any artifact on its primary runtime (checkpoint, ``.onnx``, ``.tflite``)."""
    return open_artifact(path, None, threads, scale).run
