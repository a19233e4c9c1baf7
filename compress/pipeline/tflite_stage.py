"""TFLite artifacts of a run: FP32, FP16, dynamic-range INT8 and full-integer INT8 (PTQ) in the export
stage, and full-integer INT8 after tfmot QAT in the quantize stage."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from compress.core.checkpoint import LoadedModel
from compress.core.data import ImagePair, random_patches
from compress.core.default_data import split_paths, training_pairs
from compress.core.files import write_sidecar
from compress.core.evaluate import psnr_delta_db, quality
from export.tfmot_path import TFLiteQATConfig
from export.onnx_export import Parity, parity, require_parity
from quantization.calibration import CalibrationConfig, iter_patches


def _parity(loaded: LoadedModel, path: Path, threads: int = 2) -> Parity:
    from export.runtimes.tflite import TFLiteRunner

    x = torch.from_numpy(np.random.default_rng(0).random((1, 3, 48, 40), dtype=np.float32))
    with torch.inference_mode():
        ref = loaded.model(x).numpy()
    return parity(ref, TFLiteRunner(path, threads)(x.numpy()))


def _calibration(scale: int, cfg: CalibrationConfig, paths: list[Path]) -> list[np.ndarray]:
    """NHWC calibration patches of ``paths``."""
    from export.tflite_export import nhwc_batches

    return list(nhwc_batches(iter_patches(paths, scale, cfg)))


def export_tflite(loaded: LoadedModel, src: Path, out_dir: Path, sets: dict[str, list[ImagePair]],
                  calibration: CalibrationConfig = CalibrationConfig()) -> dict[str, object]:
    """Keras twin with parity check, then the four TFLite variants with sidecars, each scored on ``sets``
    (:func:`~compress.core.evaluate.eval_sets`, read by the caller before it writes anything)."""
    from export.keras_twins import to_keras
    from export.tflite_export import TFLiteKind, convert, tflite_ops
    from export.runtimes.tflite import tflite_upscaler

    twin = to_keras(loaded.model)
    x = np.random.default_rng(1).random((1, 3, 32, 24), dtype=np.float32)
    with torch.inference_mode():
        ref = loaded.model(torch.from_numpy(x)).numpy()
    twin_parity = require_parity(parity(ref, twin(x.transpose(0, 2, 3, 1)).numpy().transpose(0, 3, 1, 2)),
                                 f"{out_dir}: the Keras twin disagrees with the PyTorch model").to_dict()
    calib = _calibration(loaded.scale, calibration, split_paths("calibration"))
    summary = {}
    for kind in TFLiteKind:
        path = convert(twin, kind, out_dir / f"model_{kind.value}.tflite", lambda: iter(calib))
        par = _parity(loaded, path)
        if kind is TFLiteKind.FP32:  # the float16 and integer variants differ by design: recorded only
            require_parity(par, f"{path}: FP32 TFLite output disagrees with PyTorch", (path,))
        q = quality(tflite_upscaler(path), sets, loaded.scale)
        ops = tflite_ops(path)
        write_sidecar(path, {
            "stage": "export", "format": f"tflite-{kind.value}", "method": f"tflite-{kind.value}",
            "arch": loaded.arch, "scale": loaded.scale,
            "params": loaded.describe()["params"], "keras_twin_parity_vs_pytorch": twin_parity,
            "parity_vs_pytorch": par.to_dict(), "quality": q,
            "calibration": {"samples": len(calib), "split": "calibration"} if kind is TFLiteKind.FULL_INT8 else None,
            "op_input_dtypes": sorted({f"{name}:{dt[0] if dt else '-'}" for name, dt in ops}),
        }, source=src)
        summary[path.name] = {k: v["psnr_y_db"] for k, v in q.items()}
    return summary


def tfmot_qat_tflite(loaded: LoadedModel, src: Path, out_dir: Path, cfg: TFLiteQATConfig, data: str,
                     reference: dict[str, dict], sets: dict[str, list[ImagePair]],
                     calibration: CalibrationConfig = CalibrationConfig(),
                     calibration_paths: list[Path] | None = None) -> dict[str, dict[str, float]]:
    """tfmot QAT of the twin (ranges initialised from calibration), converted to full-integer TFLite.

    ``calibration_paths`` are the quantize recipe's calibration images (default: the embedded split), as
    ONNX Runtime's and NNCF's quantizers of the same recipe use.

    Returns:
        ``{file name: {set: dB change against reference}}``, ``reference`` being the FP32 model's
        quality per evaluation set (as every other quantized artifact is compared).
    """
    from export.keras_twins import to_keras
    from export.tflite_export import TFLiteKind, convert, tflite_ops
    from export.runtimes.tflite import tflite_upscaler
    from export.tfmot_path import qat_keras

    paths = split_paths("calibration") if calibration_paths is None else calibration_paths
    calib = _calibration(loaded.scale, calibration, paths)
    pairs = training_pairs(data, loaded.scale)
    qat = qat_keras(to_keras(loaded.model), calib, random_patches(pairs, loaded.scale, cfg.patch, shard=False), cfg.steps, cfg.lr)
    path = convert(qat, TFLiteKind.FULL_INT8, out_dir / "model_int8_tfmot_qat.tflite", lambda: iter(calib))
    q = quality(tflite_upscaler(path), sets, loaded.scale)
    delta = psnr_delta_db(q, reference)
    write_sidecar(path, {
        "stage": "quantize", "format": "tflite-int8", "method": "tfmot-qat", "qat": dataclasses.asdict(cfg),
        "arch": loaded.arch, "scale": loaded.scale,
        "params": loaded.describe()["params"], "parity_vs_pytorch": _parity(loaded, path).to_dict(), "quality": q,
        "psnr_y_delta_db": delta,
        "calibration": {"samples": len(calib), "images": [p.name for p in paths],
                        "used_for": "QAT range init and conversion"},
        "op_input_dtypes": sorted({f"{name}:{dt[0] if dt else '-'}" for name, dt in tflite_ops(path)}),
    }, source=src)
    return {path.name: delta}
