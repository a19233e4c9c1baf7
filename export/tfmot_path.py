"""TensorFlow Model Optimization on the Keras twins: AGP pruning and quantization-aware training.

* :func:`prune_keras` wraps only the convolutions (``prune_low_magnitude`` refuses a whole model with
  custom layers) with tfmot's ``PolynomialDecay`` built from the same :class:`PolynomialDecay` the
  PyTorch pruner uses, fine-tunes with ``UpdatePruningStep`` and ends with ``strip_pruning``.
* :func:`qat_keras` annotates every layer (custom layers and ``Rescaling`` get an output-only
  QuantizeConfig), applies ``quantize_apply``, initialises every activation range from the float
  model's outputs on calibration patches (tfmot starts from [-6, 6], which a short run never fixes),
  then fine-tunes, keeping the zeros of a pruned twin's kernels at zero. Full-integer conversion still
  needs a representative dataset afterwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from export.keras_twins import keras
from compress.core.data import PatchConfig
from pruning.schedule import PolynomialDecay


@dataclasses.dataclass(frozen=True)
class TFLiteQATConfig:
    """tfmot QAT settings (the quantize recipe's ``[tflite_qat]`` table).

    Attributes:
        enabled: run it.
        steps: fine-tuning steps.
        lr: Adam learning rate.
        patch: training patches.
    """

    enabled: bool = True
    steps: int = 100
    lr: float = 1e-6
    patch: PatchConfig = PatchConfig(lr_patch=32, batch_size=8, seed=4)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"TFLiteQATConfig.steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"TFLiteQATConfig.lr must be > 0, got {self.lr}")


def _tfmot():  # noqa: ANN202
    keras()
    import tensorflow_model_optimization as tfmot

    return tfmot


def tfmot_schedule(schedule: PolynomialDecay):  # noqa: ANN201
    """The tfmot twin of an AGP schedule (same sparsity at every step)."""
    return _tfmot().sparsity.keras.PolynomialDecay(
        initial_sparsity=schedule.initial_sparsity, final_sparsity=schedule.final_sparsity,
        begin_step=schedule.begin_step, end_step=schedule.end_step, power=schedule.power, frequency=schedule.frequency)


def _dataset(batches: Iterator[tuple[np.ndarray, np.ndarray]]):  # noqa: ANN202
    import tensorflow as tf

    def gen():  # noqa: ANN202
        for lr, hr in batches:
            yield lr.transpose(0, 2, 3, 1), hr.transpose(0, 2, 3, 1)

    spec = (tf.TensorSpec((None, None, None, 3), tf.float32), tf.TensorSpec((None, None, None, 3), tf.float32))
    return tf.data.Dataset.from_generator(gen, output_signature=spec)


def _conv_names(kmodel) -> list[str]:  # noqa: ANN001
    """The twin's learned convolutions in order; the fixed colour conversions of a one-channel SRCNN twin
    (``trainable=False`` 1x1 convolutions) are not the model's and are never pruned."""
    tfk = keras()
    return [layer.name for layer in kmodel.layers if isinstance(layer, tfk.layers.Conv2D) and layer.trainable]


def prune_keras(kmodel, schedule: PolynomialDecay, batches, steps: int, lr: float = 1e-5,  # noqa: ANN001, ANN201
                skip_first_last: bool = True):
    """AGP magnitude pruning of the twin's convolutions with fine-tuning; returns the stripped model."""
    tfk, tfmot = keras(), _tfmot()
    convs = _conv_names(kmodel)
    targets = set(convs[1:-1] if skip_first_last and len(convs) > 2 else convs)
    sched = tfmot_schedule(schedule)

    def wrap(layer):  # noqa: ANN001, ANN202
        clone = layer.__class__.from_config(layer.get_config())
        return tfmot.sparsity.keras.prune_low_magnitude(clone, pruning_schedule=sched) if layer.name in targets else clone

    pruned = tfk.models.clone_model(kmodel, clone_function=wrap)
    for src, dst in zip(kmodel.layers, pruned.layers):
        weights = src.get_weights()
        if weights:
            target = dst.layer if hasattr(dst, "layer") else dst
            target.set_weights(weights)
    pruned.compile(optimizer=tfk.optimizers.Adam(lr), loss="mae")
    pruned.fit(_dataset(batches), steps_per_epoch=steps, epochs=1, verbose=0,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    return tfmot.sparsity.keras.strip_pruning(pruned)


def _output_config():  # noqa: ANN202
    tfmot = _tfmot()
    quantizers = tfmot.quantization.keras.quantizers

    class OutputQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
        """No weights; quantize the layer's output with a moving-average 8-bit quantizer."""

        def get_weights_and_quantizers(self, layer):  # noqa: ANN001, ANN201
            return []

        def get_activations_and_quantizers(self, layer):  # noqa: ANN001, ANN201
            return []

        def set_quantize_weights(self, layer, quantize_weights) -> None:  # noqa: ANN001
            pass

        def set_quantize_activations(self, layer, quantize_activations) -> None:  # noqa: ANN001
            pass

        def get_output_quantizers(self, layer):  # noqa: ANN001, ANN201
            return [quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

        def get_config(self) -> dict:
            return {}

    return OutputQuantizeConfig


def qat_keras(kmodel, calibration: list[np.ndarray], batches, steps: int, lr: float = 1e-5):  # noqa: ANN001, ANN201
    """Quantization-aware training of a twin; returns the QAT model (convert it with a representative set)."""
    tfk, tfmot = keras(), _tfmot()
    qk = tfmot.quantization.keras
    registry = qk.default_8bit.Default8BitQuantizeRegistry()
    OutputQuantizeConfig = _output_config()
    custom = {}
    for layer in kmodel.layers:
        custom[type(layer).__name__] = custom[f"srcompress>{type(layer).__name__}"] = type(layer)

    def annotate(layer):  # noqa: ANN001, ANN202
        clone = layer.__class__.from_config(layer.get_config())
        if isinstance(layer, tfk.layers.InputLayer):
            return clone
        config = None if registry.supports(layer) else OutputQuantizeConfig()
        return qk.quantize_annotate_layer(clone, quantize_config=config)

    annotated = tfk.models.clone_model(kmodel, clone_function=annotate)
    annotated.set_weights(kmodel.get_weights())
    with qk.quantize_scope({"OutputQuantizeConfig": OutputQuantizeConfig, **custom}):
        qat = qk.quantize_apply(annotated)
    init_ranges(qat, kmodel, calibration)
    qat.compile(optimizer=tfk.optimizers.Adam(lr), loss="mae")
    qat.fit(_dataset(batches), steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[_zeros_kept(qat, kmodel)])
    return qat


def _zeros_kept(qat, float_model):  # noqa: ANN001, ANN202
    """A callback that sets the QAT model's convolution kernels back to zero wherever the float model's
    are zero, after every batch: a pruned twin's sparsity survives the fine-tuning (Zhu & Gupta keep
    pruned weights at zero the same way; a symmetric weight quantizer maps them to 0)."""
    tfk = keras()
    masks = []
    for layer in qat.layers:
        inner = getattr(layer, "layer", None)
        if isinstance(inner, tfk.layers.Conv2D):
            kernel = float_model.get_layer(inner.name).get_weights()[0]
            if not kernel.all():
                masks.append((qat_kernel(layer), (kernel != 0).astype(np.float32)))

    class ZerosKept(tfk.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None) -> None:  # noqa: ANN001
            for variable, keep in masks:
                variable.assign(variable * keep)

    return ZerosKept()


def init_ranges(qat, float_model, calibration: list[np.ndarray]) -> int:  # noqa: ANN001
    """Set every range of the QAT model from the float model: activations and outputs from their
    min/max on the calibration batches, kernels from their per-channel absolute maximum.

    Returns the number of ranges set.
    """
    tfk = keras()
    names = [layer.name for layer in float_model.layers if not isinstance(layer, tfk.layers.InputLayer)]
    probe = tfk.Model(float_model.input, [float_model.get_layer(n).output for n in names])
    lo = {n: 0.0 for n in names}
    hi = {n: 0.0 for n in names}
    for batch in calibration:
        for n, out in zip(names, probe(batch, training=False)):
            lo[n], hi[n] = min(lo[n], float(np.min(out))), max(hi[n], float(np.max(out)))
    count = 0
    for layer in qat.layers:
        inner = getattr(getattr(layer, "layer", None), "name", None)
        for var in layer.weights:
            vname = _short_name(var)
            if vname in ("kernel_min", "kernel_max"):  # per-output-channel symmetric, as the quantizer computes
                kernel = float_model.get_layer(inner).get_weights()[0]
                bound = np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0)
                var.assign(np.broadcast_to(-bound if vname == "kernel_min" else bound, var.shape).astype(np.float32))
                count += 1
            elif vname.endswith(("_min", "_max")):
                if layer.name.startswith("quantize_layer"):  # uniquified to quantize_layer_N in later models
                    value = 0.0 if vname.endswith("_min") else 1.0
                elif inner in lo:
                    value = lo[inner] if vname.endswith("_min") else hi[inner]
                else:
                    continue
                var.assign(np.full(var.shape, value, dtype=np.float32))
                count += 1
    return count


def qat_kernel(wrapper):  # noqa: ANN001, ANN201
    """The kernel variable of a QAT-wrapped convolution (the wrapped layer's ``kernel`` attribute holds
    the fake-quantized tensor of the last call instead)."""
    (kernel,) = [w for w in wrapper.trainable_weights if _short_name(w) == "kernel"]
    return kernel


def _short_name(var) -> str:  # noqa: ANN001
    """A Keras variable's own name, without its layer's scope or the ``:0`` suffix."""
    return var.name.split("/")[-1].split(":")[0]
