"""OpenVINO on the CPU: the project's ONNX graphs (FP32 and INT8 QDQ) at f32 or bf16 inference precision.

OpenVINO reads the ONNX file directly; a QDQ graph runs in INT8 (its low-precision transformations
fuse QuantizeLinear / DequantizeLinear into integer kernels, VNNI or AMX where the CPU has them).
``openvino-bf16`` asks for bfloat16 inference (``INFERENCE_PRECISION_HINT``) of float graphs and is
present only where the CPU runs bf16 natively (AMX-BF16 or AVX512-BF16). A model is compiled once per
input shape and reused (tiles of one shape compile once).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from compress.core.cpu import CpuInfo, host_cpu
from compress.core.errors import InputError, first_line
from compress.core.files import read_sidecar, sidecar_path
from export.runtimes.base import Opened, Runtime, is_float_graph
from export.runtimes.ort import full_range_int8_weights


MAX_SHAPES = 8  # compiled models kept (least recently used dropped)


class OVRunner:
    """An OpenVINO model compiled per input shape (NCHW float32 in, NCHW float32 out); safe to call from
    several threads (one infer request per thread)."""

    def __init__(self, path: Path, threads: int, precision: str) -> None:
        import openvino as ov

        self.core, self.path = ov.Core(), path
        try:
            self.model = _read_ir(path) if path.suffix.lower() == ".xml" else self.core.read_model(str(path))
        except RuntimeError as exc:
            raise InputError(f"{path}: OpenVINO cannot read it ({first_line(exc, last=True)})") from exc
        _check_io(self.model, path)
        self.config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
        self.compiled: OrderedDict[tuple[int, ...], object] = OrderedDict()
        self.lock = threading.Lock()
        self.local = threading.local()

    def _compiled(self, shape: tuple[int, ...]):  # noqa: ANN202
        with self.lock:
            if shape in self.compiled:
                self.compiled.move_to_end(shape)
                return self.compiled[shape]
            model = self.model.clone()
            try:
                model.reshape({model.inputs[0].any_name: list(shape)})
                self.compiled[shape] = self.core.compile_model(model, "CPU", self.config)
            except RuntimeError as exc:
                raise InputError(f"{self.path}: OpenVINO cannot run it on a {list(shape)} input "
                                 f"({first_line(exc, last=True)})") from exc
            while len(self.compiled) > MAX_SHAPES:  # a service sees many upload sizes: keep the recent ones
                self.compiled.popitem(last=False)
            return self.compiled[shape]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        shape = tuple(x.shape)
        compiled = self._compiled(shape)
        # one infer request per thread and shape, at most MAX_SHAPES a thread: a request holds its compiled
        # model and buffers, so one kept for every size a thread ever saw would outlive the shared cache
        requests = self.local.__dict__.setdefault("requests", OrderedDict())
        held = requests.get(shape)
        if held is None or held[0] is not compiled:
            requests[shape] = held = (compiled, compiled.create_infer_request())
        requests.move_to_end(shape)
        while len(requests) > MAX_SHAPES:
            requests.popitem(last=False)
        request = held[1]
        request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return request.get_output_tensor(0).data.copy()


def _read_ir(path: Path):  # noqa: ANN202
    """An ``.xml`` read by OpenVINO's IR frontend alone (after :func:`_check_ir`): ``Core.read_model``
    would try every frontend on a broken file, and TensorFlow's logs its own parse error on stderr."""
    from openvino.frontend import FrontEndManager

    _check_ir(path)
    frontend = FrontEndManager().load_by_framework("ir")
    return frontend.convert(frontend.load(str(path)))


def _check_ir(path: Path) -> None:
    """An ``.xml`` must be OpenVINO IR (a ``<net>`` document) with its weights in a regular file: OpenVINO
    would otherwise try its other frontends on the text, or block reading a FIFO named like the weights."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if b"<net" not in head:
        raise InputError(f"{path}: not OpenVINO IR (no <net> element at the start of the file)")
    weights = path.with_suffix(".bin")
    if weights.exists() and not weights.is_file():
        raise InputError(f"{weights}: the IR's weights are not a regular file")


def _check_io(model, path: Path) -> None:  # noqa: ANN001
    """Refuse a model that is not one float32 NCHW RGB input to float outputs: OpenVINO would cast or
    leave the rest uninitialised."""
    import openvino as ov

    if len(model.inputs) != 1 or not model.outputs:
        raise InputError(f"{path}: the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                         "an SR model takes one image and gives one")
    port, shape = model.inputs[0], model.inputs[0].get_partial_shape()
    channels_ok = shape.rank.is_static and shape.rank.get_length() == 4 and (
        shape[1].is_dynamic or shape[1].get_length() == 3)
    if port.get_element_type() != ov.Type.f32 or not channels_ok:
        raise InputError(f"{path}: the model's input is {port.get_element_type().get_type_name()} {shape}, "
                         "not a float32 NCHW RGB image")
    if not model.outputs[0].get_element_type().is_real():
        raise InputError(f"{path}: the model's output is {model.outputs[0].get_element_type().get_type_name()}, "
                         "not floating point")


def int8_saturation_risk(path: Path, cpu: CpuInfo | None = None) -> str:
    """Why an INT8 model may compute otherwise on this x86 CPU without VNNI than where it was scored ('' if
    not): an ONNX graph with full-range 8-bit weights (:func:`export.runtimes.ort.full_range_int8_weights`),
    or an NNCF IR whose sidecar says NNCF kept every weight at 8 bits (``overflow_fix`` "disable", what
    ``auto`` picks on a VNNI host); NNCF's own documentation warns that such weights saturate the integer
    kernels of CPUs without VNNI."""
    cpu = cpu or host_cpu()
    if cpu.vnni:
        return ""
    if path.suffix.lower() == ".onnx":
        made = "its INT8 weights use the full 8-bit range" if full_range_int8_weights(path) else ""
    else:
        disabled = _nncf_fix(path) == "disable"
        made = "NNCF quantized it with overflow_fix \"disable\" (full 8-bit weights)" if disabled else ""
    return (f"{path}: {made} and this CPU ({cpu.model_name}) has no VNNI: OpenVINO's integer kernels may compute "
            "it otherwise than where it was scored; quantize for this host") if made else ""


def _nncf_fix(path: Path) -> str | None:
    """The ``overflow_fix`` an IR's sidecar records (None without a readable one)."""
    if not sidecar_path(path).is_file():
        return None
    try:
        nncf = read_sidecar(path, verify=False).get("nncf")
    except InputError:
        return None
    return nncf.get("overflow_fix") if isinstance(nncf, dict) else None


def _open_f32(path: Path, threads: int, scale: int | None) -> Opened:
    return Opened(OVRunner(path, threads, "f32"))


def _open_bf16(path: Path, threads: int, scale: int | None) -> Opened:
    return Opened(OVRunner(path, threads, "bf16"))


OPENVINO = Runtime("openvino", (".onnx", ".xml"), "openvino", "cpu", _open_f32, bench_extra=True,
                   host_check=int8_saturation_risk,
                   note="OpenVINO CPU plugin, f32 inference precision (INT8 graphs run in INT8)")
OPENVINO_BF16 = Runtime("openvino-bf16", (".onnx", ".xml"), "openvino", "cpu", _open_bf16, bench_extra=True,
                        available=lambda: host_cpu().native_bf16, applies=is_float_graph, own_numerics=True,
                        note="OpenVINO CPU plugin, bfloat16 inference precision (AMX-BF16 / AVX512-BF16 hosts)")
