import numpy as np
import pytest
import torch

pytest.importorskip("tf_keras")

from export.keras_twins import shuffle_perm, to_keras  # noqa: E402
from export.onnx_export import parity  # noqa: E402
from export.tflite_export import TFLiteKind, convert, tflite_ops  # noqa: E402
from export.runtimes.tflite import TFLiteRunner  # noqa: E402
from tests.conftest import tiny_edsr, tiny_pruned_edsr, tiny_rrdb, tiny_srcnn  # noqa: E402

pytestmark = pytest.mark.tflite

TWINS = [("edsr_x2", lambda: tiny_edsr(2)), ("edsr_x3", lambda: tiny_edsr(3)), ("edsr_x4", lambda: tiny_edsr(4)),
         ("edsr_x4_pruned", lambda: tiny_pruned_edsr(4)),
         ("rrdb_x4", lambda: tiny_rrdb(4)), ("rrdb_x2", lambda: tiny_rrdb(2)),
         ("srcnn_y_x3", lambda: tiny_srcnn(3, 1)), ("srcnn_rgb_x4", lambda: tiny_srcnn(4, 3))]


@pytest.mark.parametrize(("name", "make"), TWINS)
def test_keras_twin_matches_pytorch(name, make):
    model = make()
    twin = to_keras(model)
    x = torch.rand(1, 3, 16, 12)
    with torch.no_grad():
        ref = model(x).numpy().transpose(0, 2, 3, 1)
    assert np.abs(twin(x.numpy().transpose(0, 2, 3, 1)).numpy() - ref).max() < 1e-5


def test_depth_to_space_order_matches_pixel_shuffle():
    import tensorflow as tf

    r, c = 3, 2
    x = torch.arange(c * r * r * 2 * 2, dtype=torch.float32).view(1, c * r * r, 2, 2)
    ref = torch.nn.functional.pixel_shuffle(x, r).numpy().transpose(0, 2, 3, 1)
    tf_in = x.numpy()[:, shuffle_perm(c * r * r, r)].transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(tf.nn.depth_to_space(tf_in, r).numpy(), ref)


@pytest.fixture(scope="module")
def edsr_tflite(tmp_path_factory):
    model = tiny_edsr(2)
    twin = to_keras(model)
    rng = np.random.default_rng(0)
    rep = lambda: (rng.random((1, 24, 24, 3), dtype=np.float32) for _ in range(8))  # noqa: E731
    out = tmp_path_factory.mktemp("tfl")
    return model, {kind: convert(twin, kind, out / f"m_{kind.value}.tflite", rep) for kind in TFLiteKind}


@pytest.mark.parametrize("kind", list(TFLiteKind))
def test_each_variant_runs_at_several_sizes(edsr_tflite, kind):
    model, paths = edsr_tflite
    runner = TFLiteRunner(paths[kind], threads=2)
    bound = {TFLiteKind.FP32: 80, TFLiteKind.FP16: 55, TFLiteKind.DYNAMIC_INT8: 40, TFLiteKind.FULL_INT8: 35}[kind]
    for h, w in ((16, 20), (33, 17), (16, 20)):
        x = torch.rand(1, 3, h, w)
        with torch.no_grad():
            ref = model(x).numpy()
        got = runner(x.numpy())
        assert got.shape == ref.shape
        assert parity(ref, got).psnr_db > bound


def test_full_integer_keeps_depth_to_space_in_int8(edsr_tflite):
    _, paths = edsr_tflite
    ops = tflite_ops(paths[TFLiteKind.FULL_INT8])
    d2s = [dtypes for name, dtypes in ops if name == "DEPTH_TO_SPACE"]
    assert d2s and all(dt[0] == "int8" for dt in d2s)
    assert all(dt[0] == "int8" for name, dt in ops if name == "CONV_2D")


def test_full_integer_needs_representative_data(tmp_path):
    with pytest.raises(ValueError, match="representative dataset"):
        convert(to_keras(tiny_edsr(2)), TFLiteKind.FULL_INT8, tmp_path / "x.tflite")


def test_builtin_kernels_without_xnnpack_agree_with_xnnpack(edsr_tflite):
    _, paths = edsr_tflite
    x = np.random.default_rng(3).random((1, 3, 20, 16), dtype=np.float32)
    for kind in (TFLiteKind.FP32, TFLiteKind.FULL_INT8):
        fast, builtin = TFLiteRunner(paths[kind]), TFLiteRunner(paths[kind], xnnpack=False)
        assert parity(builtin(x), fast(x)).psnr_db > 40
