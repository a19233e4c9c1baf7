"""Open any artifact the pipeline makes (checkpoint, ONNX, TFLite) as an upscaler."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.errors import InputError
from compress.infer import Upscaler, torch_upscaler


def ort_session(path: str | Path, threads: int = 0, providers: list[str] | None = None):  # noqa: ANN201
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise InputError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]})") from exc


def ort_upscaler(path: str | Path, threads: int = 0) -> Upscaler:
    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: x.astype(np.float32)})[0]

    return run


def open_upscaler(path: str | Path, scale: int | None = None, threads: int = 0) -> Upscaler:
    """Upscaler for a checkpoint (``.pth/.pt/.safetensors``), an ``.onnx`` or a ``.tflite`` file."""
    path = Path(path)
    if path.suffix == ".tflite":
        from export.tflite_runtime import TFLiteRunner

        return TFLiteRunner(path, threads or 2)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise InputError(f"{path}: ONNX file not found")
        return ort_upscaler(path, threads)
    if path.suffix in (".pth", ".pt", ".safetensors"):
        from compress.checkpoint import load_checkpoint

        if threads:
            import torch

            torch.set_num_threads(threads)
        return torch_upscaler(load_checkpoint(path, scale).model)
    raise InputError(f"{path}: unsupported model file type {path.suffix!r} (.pth, .pt, .safetensors, .onnx, .tflite)")
