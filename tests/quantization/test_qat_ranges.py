"""QAT's ranges mapped to and from the ONNX graph ORT quantizes (quantization/qat_ranges.py)."""

import numpy as np
import pytest
import torch
from onnxruntime.quantization.calibrate import load_tensors_data

from quantization.qat import prepare_qat, strip_qat
from tests.conftest import tiny_edsr, tiny_rrdb


class _OneBatchReader:
    """ORT calibration reader over a fixed list of batches."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self.batches = batches
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {"lr": batch}

    def rewind(self) -> None:
        self._it = iter(self.batches)


def test_write_qat_ranges_puts_trained_ranges_in_ort_cache(tmp_path):
    import onnx
    from onnxruntime.quantization.calibrate import load_tensors_data

    from export.onnx_export import export_onnx
    from export.onnx_tail import tied_tensors
    from quantization.ptq import Calibration, calibrate, preprocess
    from quantization.qat_ranges import _tensor_keys, write_qat_ranges

    model = tiny_edsr(2)
    x = torch.rand(1, 3, 12, 12)
    state = prepare_qat(model, [x.numpy()])
    state.ranges["body.0.conv1:in"].hi = 7.5  # a range no calibration of this model would give
    strip_qat(state)
    pre = preprocess(export_onnx(model, tmp_path / "m.onnx"), tmp_path / "pre.onnx")
    cache = tmp_path / "cache.json"
    calibrate(pre, _OneBatchReader([x.numpy()]), Calibration.MINMAX, cache)
    written = write_qat_ranges(state, pre, cache)

    convs = {n.input[1]: n for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"}
    data = load_tensors_data(cache)
    hi = lambda tensor: float(np.asarray(data[tensor].range_value[1]))  # noqa: E731
    assert hi(convs["body.0.conv1.weight"].input[0]) == 7.5
    head_in = convs["conv_first.weight"].input[0]  # the mean-shifted image: its exact interval, not QAT's
    assert hi(head_in) == pytest.approx(255 * (1 - float(model.mean.min())), rel=1e-5)
    last = state.ranges["conv_last:out"]
    assert hi(convs["conv_last.weight"].output[0]) == np.float32(last.hi)
    (tied,) = tied_tensors(onnx.load(str(pre)).graph)  # padded output, its Slice, the tail PixelShuffle
    assert len(tied) == 3 and {hi(t) for t in tied} == {np.float32(last.hi)}
    assert written == len((set(_tensor_keys(state, pre).values()) | set(tied)) - {head_in})


def test_load_qat_ranges_from_a_percentile_cache(tmp_path):
    from export.onnx_export import export_onnx
    from quantization.ptq import Calibration, calibrate, preprocess
    from quantization.qat_ranges import _tensor_keys, load_qat_ranges

    model = tiny_edsr(2)
    x = torch.rand(4, 3, 16, 16) * 2
    pre = preprocess(export_onnx(model, tmp_path / "m.onnx"), tmp_path / "pre.onnx")
    cache = tmp_path / "cache.json"
    calibrate(pre, _OneBatchReader([b[None].numpy() for b in x]), Calibration.PERCENTILE, cache, 90.0)
    state = prepare_qat(model, [b[None].numpy() for b in x])
    minmax = {k: (r.lo, r.hi) for k, r in state.ranges.items()}
    assert load_qat_ranges(state, pre, cache) == len(_tensor_keys(state, pre))
    narrower = [k for k, r in state.ranges.items() if r.hi - r.lo < minmax[k][1] - minmax[k][0] - 1e-6]
    assert "conv_first:in" in narrower  # a 90th percentile clips the input range
    assert all(r.lo <= 0 <= r.hi for r in state.ranges.values())


def test_rrdb_ranges_map_through_ort_fused_residual_scale(tmp_path):
    """ORT's pre-processing folds RRDB's 0.2 residual scale into conv5 (renaming its weight)."""
    import onnx

    from export.onnx_export import export_onnx
    from quantization.ptq import Calibration, calibrate, preprocess
    from quantization.qat_ranges import _tensor_keys, load_qat_ranges, write_qat_ranges
    from tests.conftest import tiny_rrdb

    model = tiny_rrdb(4)
    x = torch.rand(2, 3, 12, 12)
    batches = [b[None].numpy() for b in x]
    pre = preprocess(export_onnx(model, tmp_path / "m.onnx"), tmp_path / "pre.onnx")
    weights = {n.input[1] for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"}
    assert "ConvMulFusion_W_body.0.rdb1.conv5.weight" in weights
    cache = tmp_path / "cache.json"
    calibrate(pre, _OneBatchReader(batches), Calibration.PERCENTILE, cache, 99.0)
    state = prepare_qat(model, batches)
    raw_hi = state.ranges["body.0.rdb1.conv5:out"].hi  # MinMax of the unscaled output
    factors: dict[str, float] = {}
    keys = _tensor_keys(state, pre, factors)
    assert set(keys) == set(state.ranges)  # every point QAT simulates has its ONNX tensor
    assert factors["body.0.rdb1.conv5:out"] == pytest.approx(0.2, rel=1e-5)  # read from the fused weights
    data = load_tensors_data(cache)
    fused_hi = float(np.asarray(data[keys["body.0.rdb1.conv5:out"]].range_value[1]))
    assert load_qat_ranges(state, pre, cache) == len(keys)
    conv5 = state.ranges["body.0.rdb1.conv5:out"]
    assert conv5.hi == pytest.approx(fused_hi / 0.2, rel=1e-5) and conv5.hi <= raw_hi * (1 + 1e-5)  # percentile clips
    # the third dense block's sum feeds RRDB's 0.2 scale, no convolution: mapped to its Add, and the
    # scaled sum (ORT's QLinearMul) to that Mul
    producer = {o: n for n in onnx.load(str(pre)).graph.node for o in n.output}
    assert keys["body.0.rdb3:out"] != keys["body.0.rdb3.conv5:out"]
    assert producer[keys["body.0.rdb3:out"]].op_type == "Add"
    mul = producer[keys["body.0.branch_scale:out"]]
    assert mul.op_type == "Mul" and keys["body.0.rdb3:out"] in mul.input
    strip_qat(state)
    assert write_qat_ranges(state, pre, cache) >= len(set(keys.values()))
    data = load_tensors_data(cache)  # written back on the fused (scaled) tensor's scale
    assert float(np.asarray(data[keys["body.0.rdb1.conv5:out"]].range_value[1])) == pytest.approx(fused_hi, rel=1e-5)


def test_rrdb_simulation_follows_what_ort_runs(tmp_path):
    """Golden check of QAT's fidelity: the fake-quantized RRDB against ORT's QDQ graph, same ranges.

    ORT requantizes every LeakyReLU output, quantizes a dense block's input once, and folds the 0.2
    residual scale into conv5; a simulation that missed those disagreed with ORT's output by 0.75 of
    the quantization error itself (mean absolute, these inputs); now by 0.38. Every tensor ORT
    quantizes is simulated, each RRDB's 0.2-scaled sum (``QLinearMul``) included (lossless here: its
    calibrated range is 0.2 times the sum's, so the grids coincide). What is left are one-step
    rounding flips (ORT's INT32 bias, float accumulation order) that compound through the blocks:
    0.01% of the inputs of the first block's convolutions differ, 6% of the output convolution's.
    """
    import onnxruntime as ort

    from export.onnx_export import export_onnx
    from quantization.ptq import Calibration, Int8Options, calibrate, preprocess, quantize
    from quantization.qat_ranges import load_qat_ranges
    from tests.conftest import tiny_rrdb

    model = tiny_rrdb(4)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 256, (1, 3, 16, 16), generator=gen).float() / 255).numpy() for _ in range(4)]
    batches[0][0, 0, 0, :2] = (1.0, 0.0)  # 8-bit images spanning [0, 1]: the input's own grid is lossless
    pre = preprocess(export_onnx(model, tmp_path / "m.onnx"), tmp_path / "pre.onnx")
    cache = tmp_path / "cache.json"
    calibrate(pre, _OneBatchReader(batches), Calibration.PERCENTILE, cache, 99.9)
    qdq = quantize(pre, tmp_path / "q.onnx", cache, Calibration.PERCENTILE, options=Int8Options(float_op_types=("Add",)))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # QDQ semantics, in float
    session = ort.InferenceSession(str(qdq), options, providers=["CPUExecutionProvider"])
    int8 = np.concatenate([session.run(None, {session.get_inputs()[0].name: x})[0] for x in batches])
    with torch.no_grad():
        ref = np.concatenate([model(torch.from_numpy(x)).numpy() for x in batches])
    state = prepare_qat(model, batches)
    load_qat_ranges(state, pre, cache)
    with torch.no_grad():
        sim = np.concatenate([model(torch.from_numpy(x)).numpy() for x in batches])
    quant_error, mismatch = np.abs(int8 - ref).mean(), np.abs(int8 - sim).mean()
    assert quant_error > 0 and mismatch < 0.5 * quant_error
    assert sum(k.endswith(":act") for k in state.ranges) == 2 * 3 * 4 + 3  # every LeakyReLU after a conv


def test_every_range_of_a_channel_pruned_model_maps_to_its_onnx_tensor(tmp_path):
    import onnx

    from export.onnx_export import export_onnx
    from quantization.ptq import preprocess
    from quantization.qat_ranges import _tensor_keys
    from tests.conftest import tiny_pruned_edsr

    model = tiny_pruned_edsr(4)
    state = prepare_qat(model, [torch.rand(1, 3, 12, 12).numpy()])
    strip_qat(state)
    pre = preprocess(export_onnx(model, tmp_path / "m.onnx"), tmp_path / "pre.onnx")
    keys = _tensor_keys(state, pre)
    assert set(keys) == set(state.ranges)  # no range of the narrowed widths is left unmapped
    tensors = {t for n in onnx.load(str(pre)).graph.node for t in (*n.input, *n.output)}
    assert set(keys.values()) <= tensors


@pytest.mark.parametrize("arch", ["edsr", "rrdb"])
def test_qat_trains_the_image_tensors_on_the_exact_ranges_the_int8_graph_gets(tmp_path, arch):
    """EDSR's head reads the mean-shifted image, (x - mean) * 255; RRDB x2's first convolution reads it
    pixel-unshuffled, in [0, 1], where an 8-bit pixel passes the fake quantizer unchanged."""
    from export.onnx_export import export_onnx
    from quantization.ptq import preprocess
    from quantization.qat import fake_quant_activation
    from quantization.qat_ranges import pin_image_ranges

    model = tiny_edsr(2) if arch == "edsr" else tiny_rrdb(2)
    pre = preprocess(export_onnx(model, tmp_path / "f.onnx"), tmp_path / "p.onnx")
    pixels = torch.randint(0, 256, (1, 3, 16, 16)) / 255.0
    state = prepare_qat(model, [(pixels * 0.9).numpy()])  # MinMax alone would cut the range at 0.9
    assert pin_image_ranges(state, pre) == ["conv_first:in"]
    rng = state.ranges["conv_first:in"]
    if arch == "edsr":
        mean = model.mean.flatten()
        assert (rng.lo, rng.hi) == pytest.approx((-255 * float(mean.max()), 255 * (1 - float(mean.min()))), rel=1e-5)
    else:
        assert (rng.lo, rng.hi) == (0.0, 1.0)
        assert (fake_quant_activation(pixels, rng) - pixels).abs().max() < 1e-6  # the same pixel, to float rounding
