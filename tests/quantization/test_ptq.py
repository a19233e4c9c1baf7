import numpy as np
import onnx
import pytest
import torch

from compress.core.default_data import split_paths
from compress.core.errors import InputError
from export.runtimes import ort_upscaler
from export.onnx_export import export_onnx, parity
from quantization.calibration import CalibrationConfig, PatchCalibrationReader, chunks, iter_patches
from quantization.ptq import Calibration, Int8Options, calibrate, kernel_report, preprocess, quantize
from quantization.qat import PerChannelWeightFakeQuant
from quantization.sensitivity import choose_float_nodes, conv_nodes, rank_sensitivity
from tests.conftest import tiny_edsr, tiny_rrdb, tiny_srcnn, write_image


@pytest.fixture
def calib_dir(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(2):
        write_image(folder / f"c{i}.png", (160, 128), seed=10 + i)
    return folder


def _reader(folder, scale=2, n=3):
    from compress.core.data import list_images

    return PatchCalibrationReader(list_images(folder), scale, CalibrationConfig(lr_patch=16, patches_per_image=n))


def test_reader_streams_and_rewinds(calib_dir):
    reader = _reader(calib_dir)
    first = [reader.get_next()["lr"] for _ in range(6)]
    assert reader.get_next() is None and reader.count == 6
    assert all(b.shape == (1, 3, 16, 16) and b.dtype == np.float32 for b in first)
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["lr"], first[0])


def test_reader_is_lazy():
    paths = split_paths("calibration")
    it = iter_patches(paths, 2, CalibrationConfig(lr_patch=16, patches_per_image=1))
    assert next(it).shape == (1, 3, 16, 16)  # one image decoded so far; a generator, not a list


@pytest.mark.parametrize("size, sizes", [(4, [4, 2]), (3, [3, 3]), (6, [6]), (100, [6])])
def test_chunks_give_every_batch_once_in_order_and_none_empty(calib_dir, size, sizes):
    whole = [b["lr"] for b in iter(_reader(calib_dir).get_next, None)]
    parts = [[b["lr"] for b in iter(chunk.get_next, None)] for chunk in chunks(_reader(calib_dir), size)]
    assert [len(p) for p in parts] == sizes
    for got, want in zip([b for p in parts for b in p], whole, strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="size must be >= 1"):
        next(chunks(_reader(calib_dir), 0))


def test_calibration_in_chunks_keeps_minmax_ranges_exactly_and_percentile_close(tmp_path, calib_dir, monkeypatch):
    import quantization.ptq as ptq

    pre = preprocess(export_onnx(tiny_edsr(2), tmp_path / "f.onnx"), tmp_path / "p.onnx")
    one = {m: calibrate(pre, _reader(calib_dir), m, tmp_path / f"one_{m.value}.json", percentile=99.0)
           for m in (Calibration.MINMAX, Calibration.PERCENTILE)}  # 6 patches: one chunk of the default 16
    calls = []
    monkeypatch.setattr(ptq, "chunks", lambda reader, size: (calls.append(size) or c for c in chunks(reader, size)))
    for method, ranges in one.items():  # 6 patches in 3 collect_data calls
        chunked = calibrate(pre, _reader(calib_dir), method, tmp_path / f"chunk_{method.value}.json", percentile=99.0,
                            chunk=2)
        assert chunked.keys() == ranges.keys()
        if method is Calibration.MINMAX:
            assert chunked == ranges
        else:  # merged histograms: the same clipping, bins of another width
            width = sum(hi - lo for lo, hi in ranges.values())
            assert sum(hi - lo for lo, hi in chunked.values()) == pytest.approx(width, rel=0.05)
    assert calls == [2, 2, 2, 2, 2, 2]  # 3 chunks for each method


def test_no_usable_calibration_images(tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    write_image(folder / "tiny.png", (20, 20))
    reader = PatchCalibrationReader([folder / "tiny.png"], 2, CalibrationConfig(lr_patch=16))
    with pytest.raises(InputError, match="no usable images.*tiny.png"):
        reader.get_next()


@pytest.mark.parametrize(("name", "make"), [("edsr_x3", lambda: tiny_edsr(3)), ("rrdb_x4", lambda: tiny_rrdb(4)),
                                            ("srcnn_x2", lambda: tiny_srcnn(2, 1))])
def test_int8_model_keeps_shape_runs_integer_convs_and_stays_close(tmp_path, calib_dir, name, make):
    model = make()
    scale = model.scale
    fp32 = export_onnx(model, tmp_path / "fp32.onnx")
    pre = preprocess(fp32, tmp_path / "pre.onnx")
    cache = tmp_path / "cache.json"
    calibrate(pre, _reader(calib_dir, scale), Calibration.MINMAX, cache)
    q = quantize(pre, tmp_path / "int8.onnx", cache, Calibration.MINMAX)
    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    report = kernel_report(q)
    assert report["integer_convs"] == len(conv_nodes(pre)) and report["float_convs"] == 0
    x = next(iter_patches([next(calib_dir.iterdir())], scale, CalibrationConfig(lr_patch=24)))
    ref, got = ort_upscaler(fp32)(x), ort_upscaler(q)(x)
    assert got.shape == ref.shape
    assert parity(ref, got).psnr_db > 30


def test_int8_graph_scales_are_ort_symmetric_weights_and_asymmetric_uint8_activations(tmp_path, calib_dir):
    from onnx import numpy_helper

    pre = preprocess(export_onnx(tiny_edsr(2), tmp_path / "f.onnx"), tmp_path / "p.onnx")
    ranges = calibrate(pre, _reader(calib_dir), Calibration.MINMAX, tmp_path / "c.json")
    graph = onnx.load(str(quantize(pre, tmp_path / "q.onnx", tmp_path / "c.json", Calibration.MINMAX))).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    fp32 = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(pre)).graph.initializer}
    weights = [n for n in graph.node if n.op_type == "DequantizeLinear" and init.get(n.input[0], np.empty(0)).dtype == np.int8]
    assert len(weights) == len(conv_nodes(pre))
    for node in weights:  # per output channel: scale = max|w_c| / 127, zero point 0, |w - q * scale| <= scale / 2
        w = fp32[node.input[0].removesuffix("_quantized")]
        q, scale = init[node.input[0]].astype(np.float64), init[node.input[1]]
        peak = np.abs(w).reshape(len(w), -1).max(axis=1)
        np.testing.assert_allclose(scale, np.where(peak > 0, peak / 127, 1.0), rtol=1e-6)  # ORT: 1.0 for a zero channel
        assert not init[node.input[2]].any()
        assert np.all(np.abs(w - q * scale[:, None, None, None]) <= scale[:, None, None, None] / 2 + 1e-7)
        qat = PerChannelWeightFakeQuant()(torch.from_numpy(w)).numpy()  # QAT trains on ORT's very grid
        np.testing.assert_allclose(qat, q * scale[:, None, None, None], atol=1e-7)
    activations = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in ranges]
    assert {n.input[0] for n in activations} >= {"lr"} and any(ranges[n.input[0]][0] < 0 for n in activations)
    for node in activations:  # uint8: scale = (hi - lo) / 255 over a range holding 0, zero point round(-lo / scale)
        lo, hi = min(ranges[node.input[0]][0], 0.0), max(ranges[node.input[0]][1], 0.0)
        scale, zero = float(init[node.input[1]]), int(init[node.input[2]])
        assert scale == pytest.approx((hi - lo) / 255, rel=1e-6) and zero == round(-lo / scale), node.input[0]


@pytest.mark.parametrize("method, scale", [(Calibration.PERCENTILE, 4), (Calibration.MINMAX, 4), (Calibration.PERCENTILE, 2)])
def test_the_image_input_is_quantized_on_its_known_range_whatever_the_calibration(tmp_path, calib_dir, method, scale):
    """x4 RRDB's first convolution reads the graph input; x2's reads it pixel-unshuffled (Reshape / Transpose)."""
    from onnx import numpy_helper
    from onnxruntime.quantization.calibrate import load_tensors_data

    pre = preprocess(export_onnx(tiny_rrdb(scale), tmp_path / "f.onnx"), tmp_path / "p.onnx")
    first = next(n for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv").input[0]
    assert (first == "lr") == (scale == 4)
    ranges = calibrate(pre, _reader(calib_dir, scale=scale), method, tmp_path / "c.json", percentile=99.0)
    cached = load_tensors_data(tmp_path / "c.json")[first].range_value
    assert ranges[first] == (0.0, 1.0) and tuple(map(float, cached)) == (0.0, 1.0)
    graph = onnx.load(str(quantize(pre, tmp_path / "q.onnx", tmp_path / "c.json", method))).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    q = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == first)
    scale_, zero = float(init[q.input[1]]), int(init[q.input[2]])
    assert (scale_, zero) == (pytest.approx(1 / 255, rel=1e-7), 0)
    pixels = np.arange(256, dtype=np.float32) / 255  # every 8-bit value survives the round trip
    np.testing.assert_array_equal(np.clip(np.round(pixels / np.float32(scale_)), 0, 255), np.arange(256))


def test_methods_give_different_ranges(tmp_path, calib_dir):
    pre = preprocess(export_onnx(tiny_edsr(2), tmp_path / "f.onnx"), tmp_path / "p.onnx")
    widths = {}
    for method in Calibration:
        ranges = calibrate(pre, _reader(calib_dir), method, tmp_path / f"{method.value}.json", percentile=99.0)
        widths[method] = sum(hi - lo for lo, hi in ranges.values())
    assert widths[Calibration.PERCENTILE] < widths[Calibration.MINMAX]
    assert widths[Calibration.ENTROPY] < 0.99 * widths[Calibration.MINMAX]  # entropy clips the tails too
    full = calibrate(pre, _reader(calib_dir), Calibration.PERCENTILE, tmp_path / "p100.json", percentile=100.0)
    assert sum(hi - lo for lo, hi in full.values()) == pytest.approx(widths[Calibration.MINMAX], rel=0.02)


def test_sensitivity_ranking_is_deterministic_and_mixed_precision_excludes(tmp_path, calib_dir):
    from compress.core.data import list_images, load_pairs
    from compress.core.evaluate import evaluate

    model = tiny_edsr(2)
    pre = preprocess(export_onnx(model, tmp_path / "f.onnx"), tmp_path / "p.onnx")
    cache = tmp_path / "c.json"
    calibrate(pre, _reader(calib_dir), Calibration.MINMAX, cache)
    pairs = load_pairs(list_images(calib_dir), 2)
    score = lambda path: evaluate(ort_upscaler(path), pairs, 2).psnr_y_db  # noqa: E731
    base1, rank1 = rank_sensitivity(pre, cache, Calibration.MINMAX, score)
    base2, rank2 = rank_sensitivity(pre, cache, Calibration.MINMAX, score)
    assert rank1 == rank2 and base1 == base2
    assert sorted(r.node for r in rank1) == sorted(conv_nodes(pre))
    assert [r.gain_db for r in rank1] == sorted((r.gain_db for r in rank1), reverse=True)  # most sensitive first
    chosen, trace = choose_float_nodes(pre, cache, Calibration.MINMAX, score, rank1, target_db=1e9, max_nodes=2)
    assert chosen == [r.node for r in rank1 if r.gain_db > 0][:2] and trace[0][0] == 0
    q = quantize(pre, tmp_path / "m.onnx", cache, Calibration.MINMAX, chosen)
    report = kernel_report(q)
    assert all(f"Conv:{n}" in report["float_nodes"] for n in chosen) and report["float_convs"] >= len(chosen)


def test_vnni_detection_and_weight_range():
    from quantization.ptq import cpu_has_vnni, reduce_weight_range

    assert not cpu_has_vnni("flags : fpu sse4_1 avx2 fma")
    assert cpu_has_vnni("flags : fpu sse4_1 avx2 avx512f avx512_vnni")
    assert cpu_has_vnni("Features : fp asimd asimddp")  # aarch64: no VPMADDUBSW path
    assert not cpu_has_vnni("flags : fpu sse sse2 lm")  # an SSE2-only vCPU (qemu64) is x86 without VNNI
    assert not cpu_has_vnni("model name : X\nflags : avx2\n\nmodel name : X\nflags : avx2 avx512_vnni")  # entry 1
    from compress.core.cpu import host_cpu

    assert cpu_has_vnni() is host_cpu().vnni  # one detector: the runtimes' saturation warning uses the same
    assert reduce_weight_range("reduced") and not reduce_weight_range("full")
    with pytest.raises(ValueError, match="weight_range must be"):
        reduce_weight_range("7bit")


def test_reduced_range_weights_stay_within_64(tmp_path, calib_dir):
    from onnx import numpy_helper

    pre = preprocess(export_onnx(tiny_edsr(2), tmp_path / "f.onnx"), tmp_path / "p.onnx")
    cache = tmp_path / "c.json"
    calibrate(pre, _reader(calib_dir), Calibration.MINMAX, cache)
    q = quantize(pre, tmp_path / "q.onnx", cache, Calibration.MINMAX, options=Int8Options(reduce_range=True))
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(q)).graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights and max(int(abs(w.astype(int)).max()) for w in weights) <= 64


def test_float_op_types_leave_the_output_add_float_and_convs_integer(tmp_path, calib_dir):
    pre = preprocess(export_onnx(tiny_edsr(2), tmp_path / "f.onnx"), tmp_path / "p.onnx")
    cache = tmp_path / "c.json"
    calibrate(pre, _reader(calib_dir), Calibration.MINMAX, cache)
    q = quantize(pre, tmp_path / "q.onnx", cache, Calibration.MINMAX, options=Int8Options(float_op_types=("Add",)))
    report = kernel_report(q)
    assert report["float_convs"] == 0 and report["integer_convs"] == len(conv_nodes(pre))
    assert any(n.startswith("Add:") for n in report["float_nodes"])
    assert not any(n.startswith("Add:") for n in kernel_report(quantize(pre, tmp_path / "a.onnx", cache,
                                                                           Calibration.MINMAX))["float_nodes"])
    with pytest.raises(ValueError, match="float_op_types must be a subset"):
        Int8Options(float_op_types=("Conv",))


def test_excluded_middle_convolution_really_runs_in_float(tmp_path, calib_dir):
    # ORT would quantize an excluded node's float weights itself and fuse it between its DQ input and
    # Q output; quantize() makes it read the unquantized tensor instead.
    pre = preprocess(export_onnx(tiny_edsr(2), tmp_path / "f.onnx"), tmp_path / "p.onnx")
    cache = tmp_path / "c.json"
    calibrate(pre, _reader(calib_dir), Calibration.MINMAX, cache)
    middle = conv_nodes(pre)[2]
    report = kernel_report(quantize(pre, tmp_path / "q.onnx", cache, Calibration.MINMAX, [middle]))
    assert f"Conv:{middle}" in report["float_nodes"]
    # its producer (a Conv+ReLU) now hands a float tensor to it and cannot fuse either; no other node changes
    assert report["float_convs"] == 2 and report["integer_convs"] == len(conv_nodes(pre)) - 2


def test_mixed_precision_stops_at_the_psnr_budget(tmp_path, calib_dir):
    from quantization.sensitivity import Sensitivity

    pre = preprocess(export_onnx(tiny_edsr(2), tmp_path / "f.onnx"), tmp_path / "p.onnx")
    cache = tmp_path / "c.json"
    calibrate(pre, _reader(calib_dir), Calibration.MINMAX, cache)
    score = lambda path: 30.0 + 0.5 * kernel_report(path)["float_convs"]  # noqa: E731 - each float conv buys 0.5 dB
    nodes = conv_nodes(pre)
    ranking = [Sensitivity(n, 0.5) for n in nodes]
    chosen, trace = choose_float_nodes(pre, cache, Calibration.MINMAX, score, ranking, target_db=31.0, max_nodes=5)
    assert chosen == nodes[:2] and trace == [(0, 30.0), (1, 30.5), (2, 31.0)]  # stops once the budget is met
    chosen, _ = choose_float_nodes(pre, cache, Calibration.MINMAX, score, ranking, target_db=99.0, max_nodes=1)
    assert chosen == nodes[:1]  # or at the node limit
    ranking[1] = Sensitivity(nodes[1], 0.0)
    chosen, _ = choose_float_nodes(pre, cache, Calibration.MINMAX, score, ranking, target_db=99.0, max_nodes=5)
    assert chosen == nodes[:1]  # or at the first node that gains nothing
