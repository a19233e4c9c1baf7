import numpy as np
import pytest
import torch

pytest.importorskip("tensorflow_model_optimization")

from export.keras_twins import to_keras  # noqa: E402
from export.onnx_export import parity  # noqa: E402
from export.tflite_export import TFLiteKind, convert, tflite_ops  # noqa: E402
from export.runtimes.tflite import TFLiteRunner  # noqa: E402
from export.tfmot_path import prune_keras, qat_kernel, qat_keras, tfmot_schedule  # noqa: E402
from pruning.schedule import PolynomialDecay  # noqa: E402
from tests.conftest import tiny_edsr, tiny_rrdb, tiny_srcnn  # noqa: E402

pytestmark = pytest.mark.tflite


def _batches(scale, seed=0):
    rng = np.random.default_rng(seed)
    while True:
        lr = rng.random((2, 3, 16, 16), dtype=np.float32)
        yield lr, np.repeat(np.repeat(lr, scale, 2), scale, 3)


def test_tfmot_schedule_matches_pytorch_agp():
    import tensorflow as tf

    ours = PolynomialDecay(0.2, 0.8, begin_step=100, end_step=110, power=3, frequency=2)
    theirs = tfmot_schedule(ours)
    for step in (100, 102, 104, 106, 110):
        should, sparsity = theirs(tf.constant(step, dtype=tf.int64))
        assert float(sparsity) == pytest.approx(ours(step), abs=1e-6)
        assert bool(should) == ours.should_prune(step)


def test_prune_low_magnitude_on_twin_reaches_sparsity_and_strips():
    twin = to_keras(tiny_edsr(2))
    pruned = prune_keras(twin, PolynomialDecay(0.0, 0.5, begin_step=0, end_step=4, frequency=2), _batches(2), steps=6)
    assert not any("prune" in layer.__class__.__name__.lower() for layer in pruned.layers)
    kernel = pruned.get_layer("body_0_conv1").get_weights()[0]
    assert float((kernel == 0).mean()) == pytest.approx(0.5, abs=0.02)
    assert float((pruned.get_layer("conv_first").get_weights()[0] == 0).mean()) == 0.0


def test_prune_keras_on_a_luma_srcnn_prunes_its_middle_conv_and_never_the_colour_conversions():
    twin = to_keras(tiny_srcnn(scale=2, channels=1))
    fixed = {name: twin.get_layer(name).get_weights()[0].copy() for name in ("rgb_to_y", "rgb_to_cbcr", "ycbcr_to_rgb")}
    pruned = prune_keras(twin, PolynomialDecay(0.0, 0.5, begin_step=0, end_step=4, frequency=2), _batches(2), steps=6)
    zeros = {name: float((pruned.get_layer(name).get_weights()[0] == 0).mean()) for name in ("conv1", "conv2", "conv3")}
    assert zeros["conv2"] == pytest.approx(0.5, abs=0.02) and zeros["conv1"] == zeros["conv3"] == 0.0
    for name, kernel in fixed.items():
        np.testing.assert_array_equal(pruned.get_layer(name).get_weights()[0], kernel)


def _qat_int8(model, tmp_path):
    rng = np.random.default_rng(1)
    calib = [rng.random((1, 24, 24, 3), dtype=np.float32) for _ in range(4)]
    qat = qat_keras(to_keras(model), calib, _batches(model.scale), steps=2, lr=1e-7)
    return convert(qat, TFLiteKind.FULL_INT8, tmp_path / "qat.tflite", lambda: iter(calib))


def test_qat_edsr_converts_to_full_integer_close_to_float(tmp_path):
    model = tiny_edsr(2)
    path = _qat_int8(model, tmp_path)
    x = torch.rand(1, 3, 20, 18)
    with torch.no_grad():
        ref = model(x).numpy()
    assert parity(ref, TFLiteRunner(path)(x.numpy())).psnr_db > 40  # ranges initialised: not the ~25 dB of [-6, 6]
    ops = tflite_ops(path)
    assert all(dt[0] == "int8" for name, dt in ops if name in ("CONV_2D", "DEPTH_TO_SPACE"))


@pytest.mark.slow
def test_qat_rrdb_converts(tmp_path):
    model = tiny_rrdb(4)
    x = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        ref = model(x).numpy()
    assert parity(ref, TFLiteRunner(_qat_int8(model, tmp_path))(x.numpy())).psnr_db > 40


def test_qat_of_a_pruned_twin_keeps_its_zeros_and_trains_the_rest():
    """Sparsity-preserving QAT: the kernels' zeros survive Adam steps at a large rate; the others move."""
    torch.manual_seed(0)
    model = tiny_edsr(2)
    with torch.no_grad():
        for conv in (model.body[0].conv1, model.body[1].conv2):
            conv.weight.mul_((torch.rand_like(conv.weight) > 0.5).float())
    twin = to_keras(model)
    rng = np.random.default_rng(1)
    calib = [rng.random((1, 16, 16, 3), dtype=np.float32) for _ in range(2)]
    qat = qat_keras(twin, calib, _batches(2), steps=3, lr=1e-2)
    kernels = {layer.layer.name: qat_kernel(layer).numpy() for layer in qat.layers
               if layer.__class__.__name__ == "QuantizeWrapperV2" and layer.layer.__class__.__name__ == "Conv2D"}
    for name in ("body_0_conv1", "body_1_conv2"):
        before = twin.get_layer(name).get_weights()[0]
        assert (kernels[name][before == 0] == 0).all() and (before == 0).mean() > 0.4
        assert not np.array_equal(kernels[name][before != 0], before[before != 0])
