"""A TFLite runner (XNNPACK, configurable threads) usable as an upscaler for any input size.

``xnnpack=False`` runs TFLite's built-in kernels without the default XNNPACK delegate, to show what
the delegate buys (the ``tflite-builtin`` runtime).

The interpreter is resized for each new input shape. When resizing fails (XNNPACK has been seen to
refuse reshaping an INT8 model), a fresh interpreter is built for that shape instead.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from compress.core.errors import InputError
from compress.core.infer import Upscaler
from export.keras_twins import keras
from export.runtimes.base import Opened, Runtime


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
        self._shape: tuple[int, ...] | None = None

    def _new(self):  # noqa: ANN202
        try:
            resolver = self._tf.lite.experimental.OpResolverType
            return self._tf.lite.Interpreter(
                model_path=str(self.path), num_threads=self.threads,
                experimental_op_resolver_type=resolver.AUTO if self.xnnpack else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        except ValueError as exc:
            raise InputError(f"{self.path}: not a loadable TFLite model ({exc})") from exc

    def _prepare(self, shape: tuple[int, ...]) -> None:
        if shape == self._shape:
            return
        idx = self._interp.get_input_details()[0]["index"]
        try:
            self._interp.resize_tensor_input(idx, list(shape), strict=False)
            self._interp.allocate_tensors()
        except (RuntimeError, ValueError):
            self.rebuilt_for.append(shape)
            self._interp = self._new()
            self._interp.resize_tensor_input(idx, list(shape), strict=False)
            self._interp.allocate_tensors()
        self._shape = shape

    def __call__(self, x: np.ndarray) -> np.ndarray:
        nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=np.float32)
        with self._lock:  # one interpreter: calls from several threads take turns
            self._prepare(nhwc.shape)
            self._interp.set_tensor(self._interp.get_input_details()[0]["index"], nhwc)
            self._interp.invoke()
            return self._interp.get_tensor(self._interp.get_output_details()[0]["index"]).transpose(0, 3, 1, 2).copy()


def tflite_upscaler(path: str | Path, threads: int = 2) -> Upscaler:
    return TFLiteRunner(path, threads)


def _open_xnnpack(path: Path, threads: int, scale: int | None) -> Opened:
    return Opened(TFLiteRunner(path, threads or 2))


def _open_builtin(path: Path, threads: int, scale: int | None) -> Opened:
    return Opened(TFLiteRunner(path, threads or 2, xnnpack=False))


TFLITE = Runtime("tflite", (".tflite",), "tensorflow", "cpu", _open_xnnpack, primary=True,
                 note="TFLite interpreter with the XNNPACK delegate")
TFLITE_BUILTIN = Runtime("tflite-builtin", (".tflite",), "tensorflow", "cpu", _open_builtin,
                         note="TFLite built-in kernels, no delegate")
