"""Post-training static INT8 quantization through ONNX Runtime (path in, path out).

QDQ format, signed 8-bit symmetric per-channel weights and unsigned 8-bit asymmetric per-tensor
activations: the combination that ONNX Runtime's x86 CPU provider fuses into VNNI integer kernels
(signed activations fuse only some convolutions). Calibration ranges are computed here and handed to
``quantize_static`` as a calibration cache, because ``quantize_static`` cannot set the histogram size
and its Entropy default (128 bins, 128 quantized bins) leaves a single candidate threshold, which is
MinMax under another name. With the cache, the method a sidecar names is the method that ran.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import io
import math
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
from onnxruntime.quantization.shape_inference import quant_pre_process

from compress.core.cpu import host_cpu, parse_cpuinfo
from compress.core.files import atomic_path
from export.onnx_tail import tied_tensors
from quantization.calibration import PatchCalibrationReader, chunks

# Operators quantized when present: convolution and the data movement around it.
QUANT_OPS = ("Conv", "Add", "Mul", "Sub", "DepthToSpace", "Concat", "Relu", "LeakyRelu", "Resize", "SpaceToDepth")


@dataclasses.dataclass(frozen=True)
class Int8Options:
    """How ``quantize_static`` builds the INT8 graph beyond the calibration ranges.

    Attributes:
        reduce_range: 7-bit weights in [-64, 64] for CPUs without VNNI (see :func:`cpu_has_vnni`).
        float_op_types: operator types ``quantize_static`` leaves unquantized. ORT still fuses such a
            node into an integer kernel when DequantizeLinear feeds it and QuantizeLinear follows it
            (EDSR's residual ``Add`` before a convolution becomes ``QLinearAdd``); what stays float is
            the rest: with ``("Add",)``, EDSR's output mean-shift ``Add``, so the SR image is not
            rounded to an 8-bit grid over the output's range, coarser than the image's own 8 bits.
            :func:`kernel_report` lists what ran in float.
    """

    reduce_range: bool = False
    float_op_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        bad = [t for t in self.float_op_types if t not in QUANT_OPS or t == "Conv"]
        if bad:
            allowed = [t for t in QUANT_OPS if t != "Conv"]
            raise ValueError(f"float_op_types must be a subset of {allowed}, got {list(self.float_op_types)}")

    def op_types(self) -> list[str]:
        return [t for t in QUANT_OPS if t not in self.float_op_types]


DEFAULT_PERCENTILE = 99.99  # the recipes' and calibrate()'s: ORT's own default, 99.999, keeps outliers
#: Patches per ORT ``collect_data`` call (:func:`quantization.calibration.chunks`). Percentile calibration
#: of the compact RRDB x4 on 64 px patches peaks at 3.8 GB for 16 patches, 4.8 GB for 48 in three calls
#: and 10.7 GB for 48 in one. The default split's 2 images x 8 patches are one call, so their ranges are
#: a single call's; more patches merge ranges (MinMax exactly; a histogram gains bins of its first
#: chunk's width, so Entropy's threshold search, quadratic in the bins, slows as later chunks widen it).
CALIBRATION_CHUNK = 16


class Calibration(enum.Enum):
    """How activation ranges are chosen from calibration data."""

    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"

    @property
    def ort(self) -> CalibrationMethod:
        return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                "entropy": CalibrationMethod.Entropy}[self.value]

    def calibrator_options(self, percentile: float) -> dict[str, object]:
        # symmetric=False throughout: ORT's symmetric histograms (|x|) drop what later chunks add below the
        # first chunk's lowest edge, so chunked calibration would differ from one call there
        if self is Calibration.PERCENTILE:
            return {"num_bins": 2048, "percentile": percentile, "symmetric": False}
        if self is Calibration.ENTROPY:
            return {"num_bins": 1024, "num_quantized_bins": 256, "symmetric": False}  # 385 candidate thresholds
        return {"symmetric": False}


def cpu_has_vnni(cpuinfo: str | None = None) -> bool:
    """Whether this x86 CPU (or the one ``cpuinfo``, a ``/proc/cpuinfo`` text, describes) has VNNI
    (AVX512-VNNI, AVX-VNNI or AMX-INT8); non-x86 hosts count as yes (:attr:`CpuInfo.vnni`).

    Without VNNI, ONNX Runtime's U8S8 kernels multiply with VPMADDUBSW, whose int16 sums saturate
    with full-range 8-bit weights; ORT's documented remedy is 7-bit weights (``reduce_range``).
    """
    return (host_cpu() if cpuinfo is None else parse_cpuinfo(cpuinfo)).vnni


def reduce_weight_range(setting: str) -> bool:
    """``auto`` (7-bit weights exactly when the CPU lacks VNNI), ``full`` or ``reduced``."""
    if setting not in ("auto", "full", "reduced"):
        raise ValueError(f"weight_range must be auto, full or reduced, got {setting!r}")
    return setting == "reduced" or (setting == "auto" and not cpu_has_vnni())


def preprocess(fp32: Path, out: Path) -> Path:
    """ORT's recommended pre-processing (shape inference and graph optimisation) before quantization."""
    quant_pre_process(str(fp32), str(out), skip_symbolic_shape=False)
    return out


def calibrate(model: Path, reader: PatchCalibrationReader, method: Calibration, cache: Path,
              percentile: float = DEFAULT_PERCENTILE, chunk: int = CALIBRATION_CHUNK) -> dict[str, tuple[float, float]]:
    """Run one calibrator over the reader and write ORT's calibration cache; returns the ranges.

    The reader is fed to ORT in chunks of ``chunk`` patches, so memory does not grow with the number
    of calibration patches (see :data:`CALIBRATION_CHUNK` for what merging changes).

    A convolution output that a channel ``Slice`` trims (:mod:`export.onnx_tail`), and the tail's
    PixelShuffle after it, take the range of the Slice output (:func:`export.onnx_tail.tied_tensors`).
    """
    with tempfile.TemporaryDirectory(prefix="calib.") as tmp:
        calibrator = create_calibrator(
            model, list(QUANT_OPS) + ["Slice"], augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=method.ort, extra_options=method.calibrator_options(percentile),
        )
        reader.rewind()
        with contextlib.redirect_stdout(io.StringIO()):  # ORT's calibrators print progress
            for part in chunks(reader, chunk):  # memory bounded by a chunk's tensors
                calibrator.collect_data(part)
            ranges = calibrator.compute_data()
        del calibrator
    graph = onnx.load(str(model), load_external_data=False).graph
    for ref, *tied in tied_tensors(graph):
        for name in tied:
            if ref in ranges and name in ranges:
                ranges[name] = ranges[ref]
    pin_image_inputs(ranges, graph)
    save_tensors_data(ranges, cache)
    return {name: tensor_range(td) for name, td in ranges.data.items()}


VALUE_MOVING_OPS = ("Pad", "Reshape", "Transpose", "SpaceToDepth", "DepthToSpace", "Identity", "Squeeze",
                    "Unsqueeze", "Flatten")
AFFINE_OPS = ("Sub", "Add", "Mul", "Div")


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """The graph's constant tensors by name (initializers and ``Constant`` nodes), still as protos:
    only the few an image tensor meets are converted, not every weight."""
    protos = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            protos[node.output[0]] = node.attribute[0].t
    return protos


def _affine(op: str, lo: float, hi: float, c: np.ndarray, image_first: bool) -> tuple[float, float] | None:
    """The interval of ``image op c`` (or ``c op image``) over every channel of the constant ``c``."""
    cs = np.asarray(c, dtype=np.float64).ravel()
    if cs.size == 0 or not np.all(np.isfinite(cs)):
        return None
    if op == "Div" and (not image_first or np.any(cs == 0)):
        return None
    ends = np.array([lo, hi])[:, None]
    if op == "Add":
        v = ends + cs
    elif op == "Sub":
        v = ends - cs if image_first else cs - ends
    elif op == "Mul":
        v = ends * cs
    else:
        v = ends / cs
    return float(v.min()), float(v.max())


def image_ranges(graph: onnx.GraphProto) -> dict[str, tuple[float, float]]:
    """The exact range of every tensor that holds the image's own pixels: the graph's inputs (an
    image in [0, 1]) and what operators that only move values (RRDB x2's pixel unshuffle, padding with
    zeros) or apply a constant (EDSR's mean shift ``(x - mean) * 255``) make of them, as intervals."""
    consts = _constants(graph)
    found = {t.name: (0.0, 1.0) for t in graph.input}
    for node in graph.node:  # ONNX graphs list nodes in topological order
        ins = list(node.input)
        if node.op_type in VALUE_MOVING_OPS and ins and ins[0] in found:
            lo, hi = found[ins[0]]
            if node.op_type == "Pad":
                lo, hi = min(lo, 0.0), max(hi, 0.0)
            found.update({out: (lo, hi) for out in node.output})
        elif node.op_type in AFFINE_OPS and len(ins) == 2:
            first = ins[0] in found and ins[1] in consts
            if first or (ins[1] in found and ins[0] in consts):
                image, const = (ins[0], ins[1]) if first else (ins[1], ins[0])
                interval = _affine(node.op_type, *found[image], numpy_helper.to_array(consts[const]), first)
                if interval is not None:
                    found[node.output[0]] = interval
    return found


def pin_image_inputs(ranges: object, graph: onnx.GraphProto) -> set[str]:
    """Give the image's tensors (:func:`image_ranges`) in a calibration result (ORT ``TensorsData``)
    their exact ranges, in place; returns their names.

    The input is an image in [0, 1] (every artifact's contract), so its range, and that of what the
    graph makes of it before the first convolution, is known rather than estimated: the input itself
    gets scale 1/255 with zero point 0, which holds every 8-bit pixel value exactly, where a range read
    off the calibration patches (a Percentile's 0.999, a MinMax of images without pure white) would
    clip the brightest values before the first convolution.
    """
    from onnxruntime.quantization.calibrate import TensorData

    pinned = {name: r for name, r in image_ranges(graph).items() if name in ranges}
    for name, (lo, hi) in pinned.items():
        ranges[name] = TensorData(lowest=np.float32(lo), highest=np.float32(hi))
    return set(pinned)


def tensor_range(td: object) -> tuple[float, float]:
    """(low, high) of one calibration-cache entry (an ORT ``TensorData``) as floats."""
    lo, hi = td.range_value
    return float(np.asarray(lo).min()), float(np.asarray(hi).max())


def quantize(model: Path, out: Path, cache: Path, method: Calibration, exclude: list[str] | None = None,
             options: Int8Options = Int8Options()) -> Path:
    """QDQ INT8 model from a pre-processed FP32 model and a calibration cache, written atomically.

    ``exclude`` names nodes kept in float; ``options`` sets 7-bit weights and operator types kept in float.
    EDSR's input mean shift is quantized with the rest, its mean rounded to 8 bits. Kept in float with
    its exact constants (as QAT simulates it), the shipped x2's Percentile graph lost more, not less
    (0.090 / 0.039 / 0.019 against 0.085 / 0.034 / 0.018 dB, Set5 / Set14 / embedded), the x4's lost
    less on Set5 only (0.014 / 0.030 / 0.022 against 0.021 / 0.029 / 0.020; MEASUREMENTS, session 37).
    Either way the first convolution reads a grid of 1.045 levels: ``(x - mean) * 255``
    spans 266 values, more than 8 bits hold on one per-tensor scale.
    """
    with atomic_path(out) as tmp:
        quantize_static(
            str(model), str(tmp), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=options.op_types(), per_channel=True, reduce_range=options.reduce_range,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude or []), calibrate_method=method.ort,
            calibration_cache_path=str(cache),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        if exclude:
            model_proto = onnx.load(str(tmp))
            read_unquantized_inputs(model_proto.graph, set(exclude))
            onnx.save(model_proto, str(tmp))
    return out


def read_unquantized_inputs(graph: onnx.GraphProto, nodes: set[str]) -> None:
    """Make the named nodes read the float tensors before their inputs' QuantizeLinear (in place).

    ``quantize_static`` leaves an excluded node's weights in float but still feeds it through
    DequantizeLinear and quantizes its output for the next node; ORT (1.2x and later, its
    ``WeightBiasQuantization`` transformer) then quantizes the float weights itself and fuses the
    node into ``QLinearConv``, so the node would run in INT8 after all. Reading the float tensor
    breaks that pattern: the node really runs in float, on an input that was never rounded. The
    cost: the producer of that tensor now also hands it to a float consumer, so ORT cannot fuse the
    producer either (a leading Conv+ReLU stays float too). :func:`kernel_report` lists both, and
    the sensitivity scores measure exactly this graph.
    """
    producer = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.name not in nodes:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]


def range_summary(ranges: dict[str, tuple[float, float]]) -> dict[str, float]:
    widths = [hi - lo for lo, hi in ranges.values() if math.isfinite(hi - lo)]
    return {"tensors": len(ranges), "mean_range_width": round(float(np.mean(widths)), 5) if widths else 0.0,
            "max_range_width": round(float(np.max(widths)), 5) if widths else 0.0}


def optimized_graph(model: Path) -> onnx.GraphProto:
    """The graph ONNX Runtime's CPU provider runs after its (extended, layout-neutral) fusions."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    with tempfile.TemporaryDirectory(prefix="ortopt.") as tmp:
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        return onnx.load(opts.optimized_model_filepath).graph


def kernel_report(model: Path) -> dict[str, object]:
    """Which operators run on integer kernels and which in float, after ORT's fusions.

    A fused QDQ convolution appears as ``QLinearConv`` (an integer kernel). A node counts as float when
    one of its inputs is a float tensor: the output of a ``DequantizeLinear`` or a float graph input.
    """
    graph = optimized_graph(model)
    float_tensors = {i.name for i in graph.input}
    float_tensors |= {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    counts: dict[str, int] = {}
    in_float: list[str] = []
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if any(i in float_tensors for i in node.input):
            in_float.append(f"{node.op_type}:{node.name}")
            float_tensors |= set(node.output)
    return {"ops_after_fusion": dict(sorted(counts.items())), "float_nodes": in_float,
            "integer_convs": counts.get("QLinearConv", 0),
            "float_convs": sum(counts.get(k, 0) for k in ("Conv", "FusedConv"))}
