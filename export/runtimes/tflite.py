"""A TFLite runner (XNNPACK, configurable threads) usable as an upscaler for any input size.

``xnnpack=False`` runs TFLite's built-in kernels without the default XNNPACK delegate, to show what
the delegate buys (the ``tflite-builtin`` runtime).

The interpreter is resized for each new input shape. When resizing fails (XNNPACK has been seen to
refuse reshaping an INT8 model), a fresh interpreter is built for that shape instead.

The TFLite interpreter does not verify a model file: a few changed bytes can crash the process or make it
allocate gigabytes. :func:`vet` (the runtime's ``vet``) therefore loads a file the user names, and runs it
once, in a child process with a memory limit and a timeout, before this process opens it.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np

from compress.core.errors import InputError, error_line, first_line
from compress.core.infer import Upscaler
from export.keras_twins import keras
from export.runtimes.base import Opened, Runtime


warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated", category=UserWarning)


class TFLiteRunner:
    """Run a TFLite SR model on NCHW float32 batches (it converts to and from NHWC)."""

    def __init__(self, path: str | Path, threads: int = 2, xnnpack: bool = True) -> None:
        keras()
        import tensorflow as tf

        self.path, self.threads, self._tf, self.xnnpack = Path(path), threads, tf, xnnpack
        if not self.path.is_file():
            raise InputError(f"{self.path}: TFLite file not found")
        self.rebuilt_for: list[tuple[int, ...]] = []
        self._lock = threading.Lock()
        self._interp = self._new()
        self._check_io()
        self._shape: tuple[int, ...] | None = None

    def _new(self):  # noqa: ANN202
        try:
            resolver = self._tf.lite.experimental.OpResolverType
            return self._tf.lite.Interpreter(
                model_path=str(self.path), num_threads=self.threads,
                experimental_op_resolver_type=resolver.AUTO if self.xnnpack else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        except (ValueError, RuntimeError, MemoryError) as exc:
            raise InputError(f"{self.path}: not a loadable TFLite model ({first_line(exc)})") from exc

    def _check_io(self) -> None:
        """One float32 NHWC RGB input, a float NHWC output: anything else would be cast or left unfed."""
        inputs, outputs = self._interp.get_input_details(), self._interp.get_output_details()
        if len(inputs) != 1 or not outputs:
            raise InputError(f"{self.path}: the model has {len(inputs)} inputs and {len(outputs)} outputs; "
                             "an SR model takes one image and gives one")
        shape, kind = [int(v) for v in inputs[0]["shape"]], inputs[0]["dtype"]
        if kind != np.float32 or len(shape) != 4 or shape[-1] != 3:
            raise InputError(f"{self.path}: the model's input is {np.dtype(kind).name} {shape}, "
                             "not a float32 NHWC RGB image")
        if not np.issubdtype(outputs[0]["dtype"], np.floating) or len(outputs[0]["shape"]) != 4:
            raise InputError(f"{self.path}: the model's output is {np.dtype(outputs[0]['dtype']).name} "
                             f"{[int(v) for v in outputs[0]['shape']]}, not a floating-point NHWC image")

    def _resize(self, shape: tuple[int, ...]) -> None:
        self._interp.resize_tensor_input(self._interp.get_input_details()[0]["index"], list(shape), strict=False)
        self._interp.allocate_tensors()

    def _prepare(self, shape: tuple[int, ...]) -> None:
        if shape == self._shape:
            return
        try:
            self._resize(shape)
        except (RuntimeError, ValueError):
            self.rebuilt_for.append(shape)
            self._interp = self._new()
            try:
                self._resize(shape)
            except (RuntimeError, ValueError, MemoryError) as exc:
                raise InputError(f"{self.path}: TFLite cannot run it on a {list(shape)} input "
                                 f"({first_line(exc)})") from exc
        self._shape = shape

    def __call__(self, x: np.ndarray) -> np.ndarray:
        nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=np.float32)
        with self._lock:  # one interpreter: calls from several threads take turns
            self._prepare(nhwc.shape)
            self._interp.set_tensor(self._interp.get_input_details()[0]["index"], nhwc)
            self._interp.invoke()
            return self._interp.get_tensor(self._interp.get_output_details()[0]["index"]).transpose(0, 3, 1, 2).copy()


VET_TIMEOUT_S = 120
VET_MEMORY_BYTES = 4 << 30  # what loading and one 8x8 run may add to the child's address space


def vet(path: Path) -> None:
    """Load ``path`` and run it once on an 8x8 input in a child process (memory-limited, timed out).

    Raises:
        InputError: the child crashed (a signal), ran out of time or memory, or refused the file.
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                       os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run([sys.executable, "-P", "-m", "export.runtimes.tflite", str(Path(path).resolve())],
                              env=env, capture_output=True, text=True, timeout=VET_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise InputError(f"{path}: TFLite did not load and run it within {VET_TIMEOUT_S} s") from None
    if proc.returncode < 0:
        raise InputError(f"{path}: the TFLite interpreter crashed on it ({signal.Signals(-proc.returncode).name}) "
                         "in a test process; the file is damaged or hostile")
    if proc.returncode != 0:
        said = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
        raise InputError(said[-1].removeprefix("error: ") if said else
                         f"{path}: TFLite cannot load and run it (exit {proc.returncode}: "
                         f"{first_line(proc.stderr, last=True)})")


def _vet_child(path: str) -> int:
    """The child of :func:`vet`: open ``path`` as :class:`TFLiteRunner` does and run an 8x8 input."""
    keras()
    status = Path("/proc/self/status")
    if status.is_file():  # Linux: the address space may grow by VET_MEMORY_BYTES, within any inherited limit
        vm_kib = next(int(ln.split()[1]) for ln in status.read_text().splitlines() if ln.startswith("VmSize:"))
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        limit = vm_kib * 1024 + VET_MEMORY_BYTES
        limit = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        TFLiteRunner(path, threads=1)(np.zeros((1, 3, 8, 8), dtype=np.float32))
    except InputError as exc:
        print(f"error: {error_line(str(exc))}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"error: {path}: loading it needs more than {VET_MEMORY_BYTES >> 30} GiB", file=sys.stderr)
        return 2
    return 0


def tflite_upscaler(path: str | Path, threads: int = 2) -> Upscaler:
    return TFLiteRunner(path, threads)


def _open_xnnpack(path: Path, threads: int, scale: int | None) -> Opened:
    # threads 0 ("the library's default"): 2, not TFLite's own default, which is one thread
    return Opened(TFLiteRunner(path, threads or 2))


def _open_builtin(path: Path, threads: int, scale: int | None) -> Opened:
    return Opened(TFLiteRunner(path, threads or 2, xnnpack=False))


TFLITE = Runtime("tflite", (".tflite",), "tensorflow", "cpu", _open_xnnpack, primary=True, vet=vet,
                 note="TFLite interpreter with the XNNPACK delegate")
TFLITE_BUILTIN = Runtime("tflite-builtin", (".tflite",), "tensorflow", "cpu", _open_builtin, vet=vet,
                         note="TFLite built-in kernels, no delegate")


if __name__ == "__main__":
    sys.exit(_vet_child(sys.argv[1]))
