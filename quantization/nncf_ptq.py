"""Post-training INT8 quantization of the OpenVINO IR with NNCF (path in, path out).

NNCF's ``nncf.quantize`` is the quantizer OpenVINO's own INT8 models come from: it places
FakeQuantize nodes where OpenVINO's CPU plugin fuses them into integer kernels, takes per-channel
symmetric weight ranges and, with the ``mixed`` preset, asymmetric activation ranges, and then
corrects the shift that weight rounding puts on each layer's output mean (bias correction; Nagel et
al., "Data-Free Quantization Through Weight Equalization and Bias Correction", ICCV 2019). It is the
INT8 candidate that sits beside the ONNX Runtime-calibrated QDQ graphs, fed the same calibration
patches (:func:`quantization.calibration.iter_patches`).
"""

from __future__ import annotations

import dataclasses
import enum
import time
from pathlib import Path

import numpy as np

from export.openvino_ir import save_ir
from quantization.ptq import cpu_has_vnni


#: ``NNCFConfig.activation_ranges`` -> attribute of ``nncf.quantization.range_estimator.RangeEstimatorParametersSet``.
RANGE_ESTIMATORS = {"minmax": "MINMAX", "mean_minmax": "MEAN_MINMAX", "mean_quantile": "MEAN_QUANTILE",
                    "histogram": "HISTOGRAM"}


class BiasCorrection(enum.Enum):
    """Which of NNCF's bias corrections runs after the ranges are set."""

    NONE = "none"  # ranges only
    FAST = "fast"  # FastBiasCorrection: one pass, the shift estimated per layer from the statistics
    FULL = "full"  # BiasCorrection: layer by layer on the already-quantized prefix (slower, more exact)


@dataclasses.dataclass(frozen=True)
class NNCFConfig:
    """NNCF post-training quantization of the FP32 graph.

    Attributes:
        enabled: make the candidate (needs ``nncf`` and ``openvino``).
        preset: ``mixed`` (asymmetric activations: SR activations after mean shift and residual
            additions are not centred on zero) or ``performance`` (symmetric everywhere).
        bias_correction: ``none``, ``fast`` or ``full`` (see :class:`BiasCorrection`).
        activation_ranges: NNCF's activation range estimator (:data:`RANGE_ESTIMATORS`): ``minmax``
            (extremes over all samples), ``mean_minmax`` (mean of per-sample extremes), ``mean_quantile``
            (mean of per-sample 1e-4 quantiles) or ``histogram``.
        overflow_fix: ``auto`` (off where the CPU has VNNI, whose integer dot products do not
            saturate; NNCF's first-layer 7-bit weights otherwise), ``enable``, ``first_layer_only``
            or ``disable``.
        float_convs: convolutions left in float by role, ``first`` (the 3-channel input
            convolution) and / or ``last`` (the output convolution): both are a few percent of the
            MACs and the most sensitive layers of an SR network (on the shipped EDSR x2, keeping them
            float took Set5's loss from 0.091 to 0.071 dB).
        qat: also fine-tune NNCF's quantized PyTorch model from this PTQ (learned ranges,
            :mod:`quantization.nncf_qat`), with the quantize recipe's ``patch`` and ``train`` (shared
            with the recipe's ONNX Runtime QAT, which its own ``qat`` switches).
    """

    enabled: bool = True
    preset: str = "mixed"
    bias_correction: str = "fast"
    activation_ranges: str = "histogram"
    overflow_fix: str = "auto"
    float_convs: tuple[str, ...] = ("first", "last")
    qat: bool = False

    def __post_init__(self) -> None:
        if self.preset not in ("mixed", "performance"):
            raise ValueError(f"nncf.preset must be mixed or performance, got {self.preset!r}")
        if self.bias_correction not in {b.value for b in BiasCorrection}:
            raise ValueError(f"nncf.bias_correction must be one of none, fast, full, got {self.bias_correction!r}")
        if self.activation_ranges not in RANGE_ESTIMATORS:
            raise ValueError(f"nncf.activation_ranges must be one of {list(RANGE_ESTIMATORS)}, "
                             f"got {self.activation_ranges!r}")
        if not set(self.float_convs) <= {"first", "last"}:
            raise ValueError(f"nncf.float_convs must be a subset of ['first', 'last'], got {list(self.float_convs)}")
        if self.qat and self.bias_correction == BiasCorrection.FULL.value:
            raise ValueError("nncf.bias_correction full is not supported with nncf.qat (NNCF's PyTorch backend "
                             "has fast bias correction only); use fast or none")
        if self.overflow_fix not in ("auto", "enable", "first_layer_only", "disable"):
            raise ValueError(f"nncf.overflow_fix must be auto, enable, first_layer_only or disable, "
                             f"got {self.overflow_fix!r}")

    def overflow(self, has_vnni: bool) -> str:
        if self.overflow_fix != "auto":
            return self.overflow_fix
        return "disable" if has_vnni else "first_layer_only"


def pick_roles(convs: list[str], roles: tuple[str, ...]) -> list[str]:
    """The ``first`` and / or ``last`` of ``convs`` (ordered names), once each."""
    if not convs:
        return []
    return list(dict.fromkeys(([convs[0]] if "first" in roles else []) + ([convs[-1]] if "last" in roles else [])))


def float_conv_names(model: object, roles: tuple[str, ...]) -> list[str]:
    """Names of the ``first`` / ``last`` Convolution of an ``openvino.Model`` in execution order."""
    return pick_roles([op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"],
                      roles)


def nncf_quantize(fp32: Path, patches: list[np.ndarray], out_xml: Path, cfg: NNCFConfig,
                  has_vnni: bool | None = None) -> tuple[Path, dict]:
    """Quantize the FP32 ONNX ``fp32`` with NNCF on ``patches`` (NCHW float32, batch 1) and save INT8 IR.

    ``has_vnni`` is that of the CPU the IR will run on (``overflow_fix = auto``; default: this one).

    Returns:
        The ``.xml`` path and a record of what ran (preset, bias correction, samples, seconds).
    """
    import openvino as ov

    if not patches:
        raise ValueError("nncf_quantize: no calibration patches")
    t0 = time.perf_counter()
    model = ov.convert_model(str(fp32))  # constant-folded: each bias a constant Add NNCF can correct
    floats = float_conv_names(model, cfg.float_convs)
    has_vnni = cpu_has_vnni() if has_vnni is None else has_vnni
    quantized = run_nncf(model, patches, cfg, has_vnni, floats)
    save_ir(quantized, out_xml)
    fq = sum(1 for op in quantized.get_ops() if op.get_type_name() == "FakeQuantize")
    return out_xml, {**describe(cfg, has_vnni), "float_convs": floats, "samples": len(patches),
                     "fake_quantize_nodes": fq, "seconds": round(time.perf_counter() - t0, 1)}


def describe(cfg: NNCFConfig, has_vnni: bool) -> dict[str, str]:
    """What an NNCF quantization ran with, for sidecars."""
    import nncf

    return {"tool": f"nncf {nncf.__version__}", "preset": cfg.preset, "bias_correction": cfg.bias_correction,
            "activation_ranges": cfg.activation_ranges, "overflow_fix": cfg.overflow(has_vnni)}


def run_nncf(model: object, samples: list, cfg: NNCFConfig, has_vnni: bool, float_nodes: list[str]) -> object:
    """``nncf.quantize`` of an OpenVINO or PyTorch ``model`` on ``samples`` with the settings of ``cfg``.

    Args:
        model: ``openvino.Model`` or ``torch.nn.Module`` (NNCF picks the backend from its type).
        samples: calibration inputs of the backend's type (NumPy arrays, torch tensors).
        cfg: preset, range estimator, bias correction and overflow fix.
        has_vnni: the CPU's VNNI (decides ``overflow_fix = auto``).
        float_nodes: node names NNCF must leave in float (its ``IgnoredScope``; a missing name is an error).
    """
    import nncf
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    bias = BiasCorrection(cfg.bias_correction)
    advanced = nncf.AdvancedQuantizationParameters(
        disable_bias_correction=bias is BiasCorrection.NONE, overflow_fix=nncf.OverflowFix(cfg.overflow(has_vnni)),
        activations_range_estimator_params=getattr(RangeEstimatorParametersSet, RANGE_ESTIMATORS[cfg.activation_ranges]))
    return nncf.quantize(model, nncf.Dataset(samples), preset=nncf.QuantizationPreset(cfg.preset),
                         target_device=nncf.TargetDevice.CPU, subset_size=len(samples),
                         fast_bias_correction=bias is not BiasCorrection.FULL, advanced_parameters=advanced,
                         ignored_scope=nncf.IgnoredScope(names=float_nodes) if float_nodes else None)
