"""ONNX Runtime: CPU and CUDA execution providers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.core.cpu import CpuInfo, host_cpu
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
            return sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]  # no copy of float32 input
        except Exception as exc:  # onnxruntime's own exception types: the graph does not take this input
            raise InputError(f"{path}: ONNX Runtime cannot run it on a float32 image "
                             f"({first_line(exc)})") from exc

    return run


REDUCED_WEIGHT_MAX = 64  # ORT's reduce_range weights: 7 bits, [-64, 64]


def full_range_int8_weights(path: str | Path) -> bool:
    """Whether an ONNX graph dequantizes signed 8-bit weights past the 7-bit range ([-64, 64])."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception:  # protobuf's DecodeError and kin: ORT opened it, so leave the verdict to ORT
        return False
    dequantized = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return any(t.data_type == onnx.TensorProto.INT8 and t.name in dequantized
               and int(np.abs(numpy_helper.to_array(t).astype(np.int16)).max(initial=0)) > REDUCED_WEIGHT_MAX
               for t in model.graph.initializer)


def saturation_risk(path: str | Path, cpu: CpuInfo | None = None) -> str:
    """Why ``path`` may compute otherwise here: full-range INT8 weights on an x86 CPU without VNNI ('' if not).

    Without VNNI, ONNX Runtime's U8S8 kernels multiply with AVX2's VPMADDUBSW, whose 16-bit pair sums
    saturate once 8-bit weights use their full range (255 x 127 x 2 > 32767): a graph quantized on a
    VNNI host (``weight_range = "auto"`` chose full range there) loses accuracy silently on such a CPU.
    """
    cpu = cpu or host_cpu()
    if cpu.vnni or not full_range_int8_weights(path):
        return ""
    return (f"{path}: its INT8 weights use the full 8-bit range and this CPU ({cpu.model_name}) has no "
            "VNNI: ONNX Runtime's AVX2 kernels can saturate on them; quantize for this host with "
            "weight_range = \"reduced\"")


def _open_cpu(path: Path, threads: int, scale: int | None) -> Opened:
    return Opened(ort_upscaler(path, threads))


def _open_cuda(path: Path, threads: int, scale: int | None) -> Opened:
    sess = ort_session(path, threads, ["CUDAExecutionProvider"])
    if "CUDAExecutionProvider" not in sess.get_providers():
        raise RuntimeError("ONNX Runtime's CUDA provider is not available")
    name = image_input(sess, path)
    return Opened(lambda x: sess.run(None, {name: x})[0])  # sess.run returns host memory: synchronous


def _cuda() -> bool:
    """ONNX Runtime's CUDA provider and a GPU to run it on: onnxruntime-gpu lists the provider on any
    host, so the device is asked of CUDA itself (through PyTorch, which a GPU install has as a CUDA build)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


ORT = Runtime("ort", (".onnx",), "onnxruntime", "cpu", _open_cpu, primary=True, host_check=saturation_risk,
              note="ONNX Runtime, CPU execution provider (MLAS)")
ORT_CUDA = Runtime("ort-cuda", (".onnx",), "onnxruntime", "cuda", _open_cuda, bench_extra=True, available=_cuda,
                   note="ONNX Runtime, CUDA execution provider")
