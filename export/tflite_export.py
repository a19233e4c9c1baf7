"""TFLite export of a Keras twin at FP32, FP16, dynamic-range INT8 and full-integer INT8.

The full-integer model takes a representative dataset of calibration patches and keeps every
operator, ``DEPTH_TO_SPACE`` included, in INT8 (``TFLITE_BUILTINS_INT8`` only); input and output stay
float32 so one runner serves every variant. Inputs have dynamic height and width.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from compress.core.files import atomic_path
from export.keras_twins import keras


class TFLiteKind(enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    DYNAMIC_INT8 = "dynamic_int8"
    FULL_INT8 = "int8"


def convert(kmodel, kind: TFLiteKind, out: Path,  # noqa: ANN001
            representative: Callable[[], Iterable[np.ndarray]] | None = None) -> Path:
    """Convert a Keras model; ``representative`` yields NHWC float32 batches (required for FULL_INT8)."""
    keras()
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(kmodel)
    if kind is not TFLiteKind.FP32:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind is TFLiteKind.FP16:
        converter.target_spec.supported_types = [tf.float16]
    if kind is TFLiteKind.FULL_INT8:
        if representative is None:
            raise ValueError("full-integer TFLite conversion needs a representative dataset")
        converter.representative_dataset = lambda: ([batch] for batch in representative())
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    data = converter.convert()
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return out


def tflite_ops(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(operator, input dtypes) of every op in a TFLite model."""
    keras()
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_path=str(path))
    tensors = {t["index"]: t["dtype"].__name__ for t in interp.get_tensor_details()}
    return [(op["op_name"], tuple(tensors.get(i, "?") for i in op["inputs"] if i >= 0)) for op in interp._get_ops_details()]


def nhwc_batches(patches: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    """NCHW patches (as the calibration reader yields) to NHWC."""
    for p in patches:
        yield np.ascontiguousarray(p.transpose(0, 2, 3, 1))
