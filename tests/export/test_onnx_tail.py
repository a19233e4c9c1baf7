import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from export.runtimes import ort_upscaler
from export.onnx_export import export_onnx, onnx_op_counts
from export.onnx_tail import TailKind, lr_kernel, recorded_rewrites, tied_tensors
from quantization.calibration import CalibrationConfig, PatchCalibrationReader
from quantization.ptq import Calibration, calibrate, preprocess
from tests.conftest import tiny_edsr, tiny_pruned_edsr, tiny_rrdb, tiny_srcnn, write_image


@pytest.mark.parametrize("r", [2, 3, 4])
def test_lr_kernel_equals_conv_after_pixel_shuffle(r):
    g = torch.Generator().manual_seed(r)
    x = torch.randn(1, 5 * r * r, 7, 9, generator=g, dtype=torch.float64)
    w = torch.randn(3, 5, 3, 3, generator=g, dtype=torch.float64)
    hr = F.conv2d(F.pixel_shuffle(x, r), w, padding=1)
    lr = F.pixel_shuffle(F.conv2d(x, torch.from_numpy(lr_kernel(w.numpy(), r)), padding=1), r)
    torch.testing.assert_close(lr, hr, rtol=0, atol=1e-12)


def test_lr_kernel_rejects_what_it_cannot_express():
    with pytest.raises(ValueError, match="3x3 kernel and r >= 2"):
        lr_kernel(np.zeros((3, 4, 5, 5), np.float32), 2)
    with pytest.raises(ValueError, match="r=1"):
        lr_kernel(np.zeros((3, 4, 3, 3), np.float32), 1)


CASES = [  # model, expected rewrite of the output convolution, its block
    ("edsr_x2", lambda: tiny_edsr(2), TailKind.SUBPIXEL, 2),
    ("edsr_x3", lambda: tiny_edsr(3), TailKind.SUBPIXEL, 3),
    ("edsr_x4", lambda: tiny_edsr(4), TailKind.SUBPIXEL, 2),
    ("edsr_x4_pruned", lambda: tiny_pruned_edsr(4), TailKind.SUBPIXEL, 2),
    ("rrdb_x4", lambda: tiny_rrdb(4), TailKind.PADDED, 1),
    ("srcnn_y_x2", lambda: tiny_srcnn(2, 1), TailKind.PADDED, 1),
]


@pytest.mark.parametrize(("name", "make", "kind", "block"), CASES)
def test_rewritten_export_is_exact_and_touches_only_the_output_conv(tmp_path, name, make, kind, block):
    model = make()
    plain = export_onnx(model, tmp_path / "plain.onnx", narrow_tail=False)
    tail = export_onnx(model, tmp_path / "tail.onnx")
    assert recorded_rewrites(onnx.load(str(plain))) == []
    (rec,) = recorded_rewrites(onnx.load(str(tail)))  # RRDB's 8-channel growth convs are left alone
    assert (rec["kind"], rec["block"], rec["padded_channels"] % 16) == (kind.value, block, 0)
    assert rec["out_channels"] == (1 if name.startswith("srcnn_y") else 3)
    a, b = onnx_op_counts(plain), onnx_op_counts(tail)
    assert b["Conv"] == a["Conv"] and b.get("DepthToSpace", 0) == a.get("DepthToSpace", 0)
    x = np.random.default_rng(0).random((1, 3, 19, 26), dtype=np.float32)
    ref, got = ort_upscaler(plain)(x), ort_upscaler(tail)(x)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_calibration_range_of_a_padded_output_is_the_sliced_range(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    write_image(folder / "c.png", (96, 80), seed=3)
    pre = preprocess(export_onnx(tiny_srcnn(2, 3), tmp_path / "f.onnx"), tmp_path / "p.onnx")
    (tied,) = tied_tensors(onnx.load(str(pre)).graph)
    assert len(tied) == 2  # SRCNN: the Slice output and the padded convolution output
    reader = PatchCalibrationReader([folder / "c.png"], 2, CalibrationConfig(lr_patch=16, patches_per_image=4))
    ranges = calibrate(pre, reader, Calibration.PERCENTILE, tmp_path / "cache.json", percentile=99.0)
    sliced, padded = tied
    assert ranges[padded] == ranges[sliced]


def _graph(bias: bool, shuffle_is_output: bool) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "w")]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b"))
    nodes = [helper.make_node("DepthToSpace", ["x"], ["hr"], blocksize=2, mode="CRD", name="d2s"),
             helper.make_node("Conv", ["hr", "w"] + (["b"] if bias else []), ["y"], pads=[1, 1, 1, 1], name="conv")]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 10, 12])]
    if shuffle_is_output:
        outs.append(helper.make_tensor_value_info("hr", TensorProto.FLOAT, [1, 2, 10, 12]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 5, 6])], outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize(("bias", "shuffle_is_output", "kind"), [
    (True, False, TailKind.SUBPIXEL), (False, False, TailKind.SUBPIXEL), (True, True, TailKind.PADDED)])
def test_rewrite_on_hand_built_graphs(bias, shuffle_is_output, kind):
    import onnxruntime as ort

    from export.onnx_tail import rewrite_narrow_tail

    model = _graph(bias, shuffle_is_output)
    x = np.random.default_rng(2).random((1, 8, 5, 6), dtype=np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})  # noqa: E731
    ref = run(model)
    (rec,) = rewrite_narrow_tail(model)
    onnx.checker.check_model(model, full_check=True)
    assert rec.kind is kind and rec.padded_channels == 16
    for a, b in zip(ref, run(model)):
        np.testing.assert_allclose(b, a, atol=1e-5)
