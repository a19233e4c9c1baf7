import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export.onnx_export import export_onnx
from export.runtimes import ort_upscaler
from quantization.calibration import CalibrationConfig, PatchCalibrationReader
from quantization.ort_conv_path import shift_weight_zero_points
from quantization.ptq import Calibration, calibrate, preprocess, quantize
from compress.core.data import list_images
from tests.conftest import tiny_edsr, tiny_rrdb, write_image


@pytest.fixture
def int8_models(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    write_image(folder / "c.png", (96, 80), seed=3)
    out = {}
    for name, model in (("edsr", tiny_edsr(2)), ("rrdb", tiny_rrdb(4))):
        pre = preprocess(export_onnx(model, tmp_path / f"{name}.onnx"), tmp_path / f"{name}_pre.onnx")
        reader = PatchCalibrationReader(list_images(folder), model.scale, CalibrationConfig(lr_patch=16, patches_per_image=2))
        calibrate(pre, reader, Calibration.MINMAX, tmp_path / f"{name}.json")
        out[name] = quantize(pre, tmp_path / f"{name}_int8.onnx", tmp_path / f"{name}.json", Calibration.MINMAX)
    return out


def _weights(path):
    graph = onnx.load(str(path)).graph
    return {i.name: numpy_helper.to_array(i) for i in graph.initializer}


@pytest.mark.parametrize("arch", ["edsr", "rrdb"])
def test_shifted_twin_gives_the_same_output_bit_for_bit(int8_models, tmp_path, arch):
    src = int8_models[arch]
    twin = tmp_path / f"{arch}_twin.onnx"
    n = shift_weight_zero_points(src, twin)
    before, after = _weights(src), _weights(twin)
    shifted = [k for k in after if after[k].dtype == np.int8 and after[k].ndim == 4]
    assert n == len(shifted) > 0
    for name in shifted:
        np.testing.assert_array_equal(after[name].astype(np.int16), before[name].astype(np.int16) - 1)
    zero_points = [k for k in after if k.endswith("zero_point") and after[k].dtype == np.int8 and before[k].size > 1]
    assert zero_points and all((after[k] == -1).all() for k in zero_points)
    x = np.random.default_rng(0).random((1, 3, 20, 24), dtype=np.float32)
    np.testing.assert_array_equal(ort_upscaler(src)(x), ort_upscaler(twin)(x))


def test_refuses_weights_it_cannot_shift(int8_models, tmp_path):
    twin = tmp_path / "twin.onnx"
    shift_weight_zero_points(int8_models["edsr"], twin)
    with pytest.raises(ValueError, match="zero_point is not 0"):
        shift_weight_zero_points(twin, tmp_path / "again.onnx")
    model = onnx.load(str(int8_models["edsr"]))
    weight = next(i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4)
    q = numpy_helper.to_array(weight).copy()
    q.flat[0] = -128
    weight.CopyFrom(numpy_helper.from_array(q, weight.name))
    onnx.save(model, str(tmp_path / "m128.onnx"))
    with pytest.raises(ValueError, match=f"{weight.name} holds -128"):
        shift_weight_zero_points(tmp_path / "m128.onnx", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
    fp32 = export_onnx(tiny_edsr(2), tmp_path / "fp32.onnx")
    with pytest.raises(ValueError, match="no S8 convolution weight"):
        shift_weight_zero_points(fp32, tmp_path / "out.onnx")


def test_the_ab_benchmark_times_both_paths_in_their_own_processes(int8_models):
    from benchmarks.ort_conv_path import compare

    r = compare(int8_models["edsr"], (16, 16), 2, threads=1, runs=1, rounds=1)
    assert r["max_abs_diff"] == 0.0 and r["twin"].endswith("_int8_qgemm.onnx")
    assert set(r["p50_ms"]) == {"symmetric conv", "im2col + QGEMM"} and all(len(v) == 1 for v in r["p50_ms"].values())
    assert r["qgemm_speedup"] > 0
