"""The quantize recipe: PTQ calibration methods, mixed precision, QAT."""

from __future__ import annotations

import dataclasses

from compress.core.data import PatchConfig
from compress.core.train_config import TrainConfig
from quantization.calibration import CalibrationConfig
from quantization.nncf_ptq import NNCFConfig
from export.tfmot_path import TFLiteQATConfig
from quantization.ptq import DEFAULT_PERCENTILE, Calibration, Int8Options, reduce_weight_range

METHODS = tuple(c.value for c in Calibration)
QAT_FROM = ("each", "best")


@dataclasses.dataclass(frozen=True)
class QuantRecipe:
    """A quantization run.

    Attributes:
        ptq_methods: calibration methods to run (``minmax``, ``percentile``, ``entropy``), one artifact each.
        percentile: ``percentile`` calibration keeps this central share of each activation histogram and
            clips the rest, half from each tail (ONNX Runtime, asymmetric ranges: 99.99 cuts 0.005% a side).
        weight_range: ``auto`` (7-bit weights exactly when the CPU lacks VNNI, whose absence makes ORT's
            U8S8 kernels saturate), ``full`` (8-bit) or ``reduced`` (7-bit).
        float_op_types: operator types ``quantize_static`` leaves unquantized (see
            :class:`quantization.ptq.Int8Options` for what ORT still fuses).
        calibration_data: ``default`` (the embedded calibration split) or a folder of HR images.
        calibration: patch sampling for calibration.
        mixed_precision: rank layer sensitivity and keep the most sensitive convolutions in float.
        budget_db: mixed precision stops once INT8 is within this of FP32 (on the calibration images).
        max_float_nodes: at most this many convolutions stay float.
        qat: run quantization-aware training of the QDQ graph for ONNX Runtime too (``nncf.qat`` switches
            NNCF's QAT of the OpenVINO IR; both use ``patch`` and ``train``).
        qat_calibration: the calibration method whose ranges QAT trains under and ORT then runs with;
            ``auto``: the PTQ method of ``ptq_methods`` that scores best on the calibration crops, so
            QAT starts from the best PTQ model.
        qat_from: ``each``: every QAT the recipe switches on (``qat`` for ONNX Runtime, ``nncf.qat``)
            starts from its own runtime's PTQ model; ``best``: of those, only the one whose PTQ start
            scores best on the calibration crops runs (the ORT method ``qat_calibration`` names, or the
            best ORT method under ``auto``, against NNCF's PTQ IR), so QAT always starts from the best
            PTQ model the stage made, whichever runtime calibrated it.
        qat_keep: ``better`` keeps a QAT model only if it scores above its PTQ starting point on the
            calibration crops (ORT's QAT: the same calibration without training; NNCF's QAT: NNCF's PTQ
            IR), else says so and keeps only the PTQ model; ``always`` keeps it regardless.
        data: ``default`` or a folder of HR training images for QAT.
        patch: QAT patches.
        train: QAT fine-tuning, for both QATs (``distill_weight`` distils from the FP32 model;
            ``val_every`` scores the fake-quantized model on the calibration crops every that many steps;
            ``ema_decay`` trains on but keeps the moving average of the weights, which starts at the PTQ start;
            ``optimizer = "sgd"`` moves each weight in proportion to its gradient, where Adam moves every
            weight by about ``lr`` a step).
        tflite_qat: tfmot QAT of the Keras twin, converted to full-integer TFLite.
        nncf: NNCF post-training quantization of the OpenVINO IR (one more INT8 candidate, run by
            OpenVINO), on the same calibration patches, and (``nncf.qat``) NNCF's QAT from it.
    """

    ptq_methods: tuple[str, ...] = ("minmax", "percentile", "entropy")
    percentile: float = DEFAULT_PERCENTILE
    weight_range: str = "auto"
    float_op_types: tuple[str, ...] = ()
    calibration_data: str = "default"
    calibration: CalibrationConfig = CalibrationConfig()
    mixed_precision: bool = True
    budget_db: float = 0.05
    max_float_nodes: int = 4
    qat: bool = True
    qat_calibration: str = "auto"
    qat_from: str = "each"
    qat_keep: str = "better"
    data: str = "default"
    patch: PatchConfig = PatchConfig(lr_patch=32, batch_size=8)
    train: TrainConfig = TrainConfig(steps=200, lr=2e-5, lr_schedule="cosine", distill_weight=0.5)
    tflite_qat: TFLiteQATConfig = TFLiteQATConfig()
    nncf: NNCFConfig = NNCFConfig()

    def __post_init__(self) -> None:
        for name in ("data", "calibration_data"):
            if not getattr(self, name):
                raise ValueError(f"{name} must be 'default' or a folder, got ''")
        bad = [m for m in self.ptq_methods if m not in METHODS]
        if bad or not self.ptq_methods or len(set(self.ptq_methods)) < len(self.ptq_methods):
            raise ValueError(f"ptq_methods must be a non-empty subset of {METHODS}, each once, got {list(self.ptq_methods)}")
        reduce_weight_range(self.weight_range)  # validates the setting
        if self.qat_from not in QAT_FROM:
            raise ValueError(f"qat_from must be one of {QAT_FROM}, got {self.qat_from!r}")
        if self.qat_keep not in ("better", "always"):
            raise ValueError(f"qat_keep must be better or always, got {self.qat_keep!r}")
        if self.train.keep_best:
            raise ValueError("train.keep_best must be false for QAT: qat_keep decides on the calibration crops "
                             "whether the QAT model is kept")
        if self.qat_calibration not in (*METHODS, "auto"):
            raise ValueError(f"qat_calibration must be one of {(*METHODS, 'auto')}, got {self.qat_calibration!r}")
        if (self.qat or self.nncf.qat) and self.qat_calibration not in (*self.ptq_methods, "auto"):
            raise ValueError(f"qat_calibration {self.qat_calibration!r} is not in ptq_methods {list(self.ptq_methods)}: "
                             "the PTQ model QAT starts from would be neither reported nor delivered, even where it "
                             "scores best; add it to ptq_methods")
        Int8Options(float_op_types=self.float_op_types)  # validates the operator types
        if self.qat and "Mul" in self.float_op_types:
            raise ValueError("float_op_types: 'Mul' with qat = true: the ORT QAT (quantization.qat) requantizes "
                             "RRDB's scaled branches (x 0.2), which a float Mul leaves unrounded, so it would train "
                             "against another graph than the one that runs; remove 'Mul' or set qat = false")
        if not 90.0 <= self.percentile < 100.0:
            raise ValueError(f"percentile must be in [90, 100), got {self.percentile}")
        if self.budget_db < 0:
            raise ValueError(f"budget_db must be >= 0, got {self.budget_db}")
        if self.max_float_nodes < 0:
            raise ValueError(f"max_float_nodes must be >= 0, got {self.max_float_nodes}")
        if self.train.feature_distill_weight:
            raise ValueError("train.feature_distill_weight must be 0 for QAT (the fake-quantized model's modules "
                             f"do not match the FP32 teacher's), got {self.train.feature_distill_weight}")
