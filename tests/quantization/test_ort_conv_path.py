import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export.onnx_export import export_onnx
from export.runtimes import ort_upscaler
from quantization.ort_conv_path import _shift_one, shift_weight_zero_points
from quantization.ptq import cpu_has_vnni, kernel_report
from tests.conftest import seven_bit_weights, tiny_edsr


def _weights(path):
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return {n.input[0]: (inits[n.input[0]], inits[n.input[2]]) for n in graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8
            and inits[n.input[0]].ndim == 4}


@pytest.mark.parametrize("arch", ["edsr", "rrdb"])
def test_shifted_twin_gives_the_same_output_bit_for_bit_on_the_same_kernels(int8_models, tmp_path, arch):
    src = int8_models[arch]
    twin = tmp_path / f"{arch}_twin.onnx"
    n = shift_weight_zero_points(src, twin)
    before, after = _weights(src), _weights(twin)
    assert n == len(after) > 0
    for name, (q, zero) in after.items():
        assert zero.shape == (q.shape[0],) and set(np.unique(zero)) <= {-1, 1} and not before[name][1].any()
        np.testing.assert_array_equal(q.astype(np.int16) - zero.reshape(-1, 1, 1, 1), before[name][0])
    assert kernel_report(twin)["integer_convs"] == kernel_report(src)["integer_convs"] > 0  # still QLinearConv
    seven = seven_bit_weights(src, tmp_path / f"{arch}_seven.onnx")  # computed alike with or without VNNI
    shift_weight_zero_points(seven, tmp_path / f"{arch}_seven_twin.onnx")
    x = np.random.default_rng(0).random((1, 3, 20, 24), dtype=np.float32)
    np.testing.assert_array_equal(ort_upscaler(seven)(x), ort_upscaler(tmp_path / f"{arch}_seven_twin.onnx")(x))
    if cpu_has_vnni():  # without VNNI the two paths saturate full-range weights differently (benchmarks.ort_conv_path)
        np.testing.assert_array_equal(ort_upscaler(src)(x), ort_upscaler(twin)(x))


def test_each_channel_moves_to_the_side_with_room_inside_its_range():
    q = np.array([[-127, 5, 127], [-64, 0, 63], [-63, 0, 64], [-20, 0, 20]], dtype=np.int8)
    shifted, step = _shift_one(q, np.zeros(4, np.int8), 0, "w")  # full range: every channel moves down
    assert step.tolist() == [-1, -1, -1, -1] and shifted[0].tolist() == [-128, 4, 126]
    seven = q[1:]  # 7-bit weights ([-64, 64], reduce_range) stay inside [-64, 64]
    shifted, step = _shift_one(seven, np.zeros(3, np.int8), 0, "w")
    assert step.tolist() == [1, -1, -1] and shifted.tolist() == [[-63, 1, 64], [-64, -1, 63], [-21, -1, 19]]
    with pytest.raises(ValueError, match=r"w: a channel spans its whole range \[-64, 64\]"):
        _shift_one(np.array([[-64, 64]], dtype=np.int8), np.zeros(1, np.int8), 0, "w")
    shifted, step = _shift_one(np.array([[3, -7]], dtype=np.int8), np.zeros((), np.int8), 0, "w")  # per tensor
    assert step.shape == () and int(step) == -1 and shifted.tolist() == [[2, -8]]


def test_refuses_weights_it_cannot_shift(int8_models, tmp_path):
    twin = tmp_path / "twin.onnx"
    shift_weight_zero_points(int8_models["edsr"], twin)
    with pytest.raises(ValueError, match="zero_point is not 0"):
        shift_weight_zero_points(twin, tmp_path / "again.onnx")
    model = onnx.load(str(int8_models["edsr"]))
    weight = next(i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4)
    q = numpy_helper.to_array(weight).copy()
    q[0].flat[0], q[0].flat[1] = -128, 127
    weight.CopyFrom(numpy_helper.from_array(q, weight.name))
    onnx.save(model, str(tmp_path / "full.onnx"))
    with pytest.raises(ValueError, match=f"{weight.name}: a channel spans its whole range"):
        shift_weight_zero_points(tmp_path / "full.onnx", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
    model = onnx.load(str(int8_models["edsr"]))
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == weight.name)
    model.graph.node.append(onnx.helper.make_node("DequantizeLinear", list(dq.input), ["second_reader"]))
    onnx.save(model, str(tmp_path / "shared.onnx"))
    with pytest.raises(ValueError, match=f"{weight.name} is read by more than one node"):
        shift_weight_zero_points(tmp_path / "shared.onnx", tmp_path / "out.onnx")
    fp32 = export_onnx(tiny_edsr(2), tmp_path / "fp32.onnx")
    with pytest.raises(ValueError, match="no S8 convolution weight"):
        shift_weight_zero_points(fp32, tmp_path / "out.onnx")
