"""The record every runtime entry of :data:`export.runtimes.RUNTIMES` is."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from pathlib import Path

from compress.core.infer import Upscaler


class SaturationRisk(UserWarning):
    """An INT8 model whose weights can overflow this CPU's integer kernels."""


@dataclasses.dataclass(frozen=True)
class Opened:
    """An artifact opened on a runtime.

    Attributes:
        run: NCHW float32 in [0, 1] -> NCHW float32, the upscaler.
        sync: waits for an asynchronous device before the bench reads the clock (None on the CPU).
        scale: the SR factor every call of ``run`` is checked against (None before
            :func:`export.runtimes.open_artifact` knows it).
    """

    run: Upscaler
    sync: Callable[[], None] | None = None
    scale: int | None = None


@dataclasses.dataclass(frozen=True)
class Runtime:
    """One way to run an artifact.

    Attributes:
        name: the name used by ``bench`` (``--runtime``), the report and ``latency.json``.
        suffixes: file suffixes it opens.
        library: the Python module whose import decides whether it is present.
        device: ``cpu`` or ``cuda``.
        open: ``open(path, threads, scale)`` -> :class:`Opened` (``threads`` 0: the library's default,
            TFLite's 2, since its own is one thread;
            ``scale`` is needed by checkpoints whose shapes do not reveal it).
        primary: the runtime ``eval``, ``upscale`` and ``serve`` use for its suffixes (one per suffix).
        bench_extra: the bench also times every artifact of the primary runtime for these suffixes on
            it, when present (GPU variants).
        available: extra presence check beyond the import (a GPU, native bf16), or None.
        applies: which files of its suffixes it is meant for (e.g. bf16 inference: float graphs), or None.
        own_numerics: it computes in another precision than the artifact's (bf16 inference of an FP32
            graph), so the artifact's measured PSNR does not hold for it: the bench measures its own.
        host_check: ``host_check(path)`` says why ``path`` may compute otherwise on this host than on the
            one that made and scored it (full-range INT8 weights without VNNI; '' when it will not), or
            None: ``open_artifact`` warns a user who deploys it, and the bench scores it here.
        vet: ``vet(path)`` tests a file the user named in a child process before this process opens it,
            for a library that a damaged file can crash or hang (raises ``InputError``); None: not needed.
        note: what it is, for help texts and the report.
    """

    name: str
    suffixes: tuple[str, ...]
    library: str
    device: str
    open: Callable[[Path, int, int | None], Opened]
    primary: bool = False
    bench_extra: bool = False
    available: Callable[[], bool] | None = None
    applies: Callable[[Path], bool] | None = None
    own_numerics: bool = False
    vet: Callable[[Path], None] | None = None
    host_check: Callable[[Path], str] | None = None
    note: str = ""

    def present(self) -> bool:
        """Whether this host can run it: the library is installed (and the device is there)."""
        return not self.absence()

    def absence(self) -> str:
        """Why this host cannot run it ('' when it can)."""
        if importlib.util.find_spec(self.library) is None:
            return f"{self.library} is not installed"
        if self.available is not None and not self.available():
            return f"this host lacks what it needs: {self.note or self.device}"
        return ""


def is_float_graph(path: Path) -> bool:
    """Whether a graph has no quantizer (QuantizeLinear in ONNX, FakeQuantize in IR): a float graph
    computes the same on every float runtime, to rounding; a quantized one runs on each runtime's own
    integer kernels (bf16 inference is for float graphs)."""
    import onnx

    if path.suffix.lower() == ".xml":
        return b"FakeQuantize" not in path.read_bytes()
    graph = onnx.load(str(path), load_external_data=False).graph
    return not any(n.op_type == "QuantizeLinear" for n in graph.node)
