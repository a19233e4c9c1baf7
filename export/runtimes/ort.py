"""ONNX Runtime: CPU and CUDA execution providers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.core.errors import InputError, first_line
from compress.core.infer import Upscaler
from export.runtimes.base import Opened, Runtime


def ort_session(path: str | Path, threads: int = 0, providers: list[str] | None = None):  # noqa: ANN201
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 4  # its own log lines would precede the one-line error; failures still raise
    try:
        return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise InputError(f"{path}: ONNX Runtime cannot load it ({first_line(exc)})") from exc


def image_input(sess, path: str | Path) -> str:  # noqa: ANN001
    """The name of the session's one input, refused unless it is a float32 NCHW image (3 channels if fixed)."""
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise InputError(f"{path}: the graph has {len(inputs)} inputs; an SR model takes one image")
    shape, kind = inputs[0].shape, inputs[0].type
    if kind != "tensor(float)" or len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
        raise InputError(f"{path}: the graph's input is {kind} {shape}, not a float32 NCHW RGB image")
    return inputs[0].name


def ort_upscaler(path: str | Path, threads: int = 0) -> Upscaler:
    sess = ort_session(path, threads)
    name = image_input(sess, path)

    def run(x: np.ndarray) -> np.ndarray:
        try:
            return sess.run(None, {name: x.astype(np.float32)})[0]
        except Exception as exc:  # onnxruntime's own exception types: the graph does not take this input
            raise InputError(f"{path}: ONNX Runtime cannot run it on a float32 image "
                             f"({first_line(exc)})") from exc

    return run


def _open_cpu(path: Path, threads: int, scale: int | None) -> Opened:
    return Opened(ort_upscaler(path, threads))


def _open_cuda(path: Path, threads: int, scale: int | None) -> Opened:
    sess = ort_session(path, threads, ["CUDAExecutionProvider"])
    if "CUDAExecutionProvider" not in sess.get_providers():
        raise RuntimeError("ONNX Runtime's CUDA provider is not available")
    name = image_input(sess, path)
    return Opened(lambda x: sess.run(None, {name: x})[0])  # sess.run returns host memory: synchronous


def _cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


ORT = Runtime("ort", (".onnx",), "onnxruntime", "cpu", _open_cpu, primary=True,
              note="ONNX Runtime, CPU execution provider (MLAS)")
ORT_CUDA = Runtime("ort-cuda", (".onnx",), "onnxruntime", "cuda", _open_cuda, bench_extra=True, available=_cuda,
                   note="ONNX Runtime, CUDA execution provider")
