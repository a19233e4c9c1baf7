"""The runtime table: presence on this host, lookup by file, the output checks on every call, hostile artifacts."""

import importlib

import numpy as np
import pytest
import torch

from compress.core.archs import EDSRConfig
from compress.core.checkpoint import save_checkpoint
from compress.core.errors import InputError
from export.onnx_export import export_onnx
from export.runtimes import RUNTIMES, available, for_file, open_artifact, open_upscaler, ort_upscaler, runtime
from tests.conftest import tiny_edsr


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def _device_ok(rt) -> bool:  # noqa: ANN001
    if rt.name.endswith("-bf16"):
        from compress.core.cpu import host_cpu

        return host_cpu().native_bf16
    if rt.device == "cpu":
        return True
    if rt.library == "torch":
        return torch.cuda.is_available()
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def test_available_lists_exactly_the_runtimes_whose_libraries_import_here():
    expected = [rt.name for rt in RUNTIMES if _importable(rt.library) and _device_ok(rt)]
    assert [rt.name for rt in available()] == expected
    assert "ort" in expected and "pytorch" in expected


def test_names_unique_and_one_primary_runtime_per_suffix():
    names = [rt.name for rt in RUNTIMES]
    assert len(names) == len(set(names))
    suffix_owner: dict[str, str] = {}
    for rt in RUNTIMES:
        for s in rt.suffixes if rt.primary else ():
            assert s not in suffix_owner, f"{s}: primary for {suffix_owner.get(s)} and {rt.name}"
            suffix_owner[s] = rt.name
    assert suffix_owner == {".pth": "pytorch", ".pt": "pytorch", ".safetensors": "pytorch", ".onnx": "ort",
                            ".tflite": "tflite"}


def test_lookup_errors_name_the_file():
    assert for_file("a/b.ONNX").name == "ort"
    with pytest.raises(InputError, match=r"x\.bin: unsupported model file type '\.bin'"):
        for_file("x.bin")
    with pytest.raises(InputError, match="unknown runtime 'tvm'"):
        runtime("tvm")


def test_onnx_with_the_wrong_scale_is_refused_on_the_first_call(tmp_path):
    path = export_onnx(tiny_edsr(2), tmp_path / "m.onnx")
    x = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    assert open_upscaler(path, scale=2)(x).shape == (1, 3, 16, 16)
    with pytest.raises(InputError, match=r"m\.onnx: this model upscales x2, not x4"):
        open_upscaler(path, scale=4)(x)


def test_checkpoint_opens_on_pytorch_and_a_runtime_refuses_a_foreign_suffix(tmp_path):
    ckpt = save_checkpoint(tiny_edsr(2), EDSRConfig(scale=2, num_feat=16, num_block=2), tmp_path / "m.safetensors")
    x = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    assert open_artifact(ckpt).run(x).shape == (1, 3, 16, 16)
    with pytest.raises(InputError, match="runtime ort opens .onnx files"):
        open_artifact(ckpt, "ort")


def test_pytorch_bf16_runs_the_checkpoint_in_bf16_and_is_scored_on_its_own(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    save_checkpoint(tiny_edsr(2), EDSRConfig(scale=2, num_feat=16, num_block=2), path)
    x = np.random.default_rng(0).random((1, 3, 12, 10), dtype=np.float32)
    fp32 = runtime("pytorch").open(path, 1, 2).run(x)
    bf16 = runtime("pytorch-bf16").open(path, 1, 2).run(x)  # opened directly: autocast runs on any CPU, slowly
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape == (1, 3, 24, 20)
    assert 0 < np.abs(bf16 - fp32).max() < 0.05  # bf16's 8-bit mantissa: close, and not the FP32 numbers
    assert runtime("pytorch-bf16").own_numerics and runtime("pytorch-cuda-fp16").own_numerics
    assert not runtime("pytorch").own_numerics


def test_openvino_runs_float_and_int8_graphs_and_compiles_once_per_shape(tmp_path):
    pytest.importorskip("openvino")
    from export.runtimes.base import is_float_graph
    from export.runtimes.openvino import OVRunner
    from quantization.calibration import CalibrationConfig, PatchCalibrationReader
    from quantization.ptq import Calibration, Int8Options, calibrate, preprocess, quantize
    from tests.conftest import write_image

    fp32 = export_onnx(tiny_edsr(2), tmp_path / "m.onnx")
    x = np.random.default_rng(0).random((1, 3, 12, 10), dtype=np.float32)
    ov = open_artifact(fp32, "openvino", threads=1, scale=2).run
    np.testing.assert_allclose(ov(x), ort_upscaler(fp32)(x), atol=1e-4)
    runner = OVRunner(fp32, 1, "f32")
    for _ in range(3):
        runner(x)
    runner(x[:, :, :8])
    assert len(runner.compiled) == 2  # one compiled model per input shape, reused
    from export.runtimes.openvino import MAX_SHAPES

    for side in range(4, 6 + MAX_SHAPES):  # a service sees many upload sizes: memory stays bounded
        runner(x[:, :, :side, :side])
    assert len(runner.compiled) == MAX_SHAPES and len(runner.local.requests) == MAX_SHAPES
    img = write_image(tmp_path / "cal.png", (64, 48))
    pre = preprocess(fp32, tmp_path / "pre.onnx")
    reader = PatchCalibrationReader([img], 2, CalibrationConfig(lr_patch=16, patches_per_image=2))
    cache = tmp_path / "cal.json"
    calibrate(pre, reader, Calibration.MINMAX, cache)
    int8 = quantize(pre, tmp_path / "q.onnx", cache, Calibration.MINMAX, options=Int8Options())
    assert is_float_graph(fp32) and not is_float_graph(int8)
    got, ref = open_artifact(int8, "openvino", threads=1).run(x), ort_upscaler(int8)(x)
    assert np.abs(got - ref).mean() < 0.01  # both integer pipelines, rounding may differ slightly


def _graph(tmp_path, name: str, nodes, inputs, output, initializers=()):  # noqa: ANN001
    """A hand-made ONNX model (opset 18), the kind of file a user might name as an artifact."""
    import onnx
    from onnx import helper

    model = helper.make_model(helper.make_graph(nodes, name, inputs, [output], list(initializers)),
                              opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def _image(name: str = "x", kind=None, shape=(1, 3, None, None)):  # noqa: ANN001
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, kind or TensorProto.FLOAT, list(shape))


def _resize(tmp_path, name: str, factors, out_kind=None):  # noqa: ANN001
    """``Resize`` by per-axis ``factors`` (NCHW), optionally cast: an upscaler of any shape rule."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="nearest")]
    nodes.append(helper.make_node("Cast", ["r"], ["y"], to=out_kind) if out_kind else
                 helper.make_node("Identity", ["r"], ["y"]))
    scales = numpy_helper.from_array(np.array(factors, dtype=np.float32), "scales")
    return _graph(tmp_path, name, nodes, [_image()], _image("y", out_kind or TensorProto.FLOAT), [scales])


@pytest.mark.parametrize("name, factors, out_kind, expect", [
    ("aniso", (1, 1, 2, 3), None, "not a super-resolution model"),
    ("down", (1, 1, 0.5, 0.5), None, "not a super-resolution model"),
    ("four_channels", (1, 4 / 3, 2, 2), None, "not a super-resolution model"),
    ("bytes", (1, 1, 2, 2), 2, "not a super-resolution model"),  # TensorProto.UINT8
])
def test_without_a_scale_the_probe_refuses_what_is_no_sr_model(tmp_path, name, factors, out_kind, expect):
    """These used to be written as images named x0, x1.5 or x3, or with a 4th channel as alpha."""
    path = _resize(tmp_path, name, factors, out_kind)
    with pytest.raises(InputError, match=expect):
        open_artifact(path)


def test_every_call_is_checked_not_only_the_first(tmp_path):
    """A graph with a fixed output passes on an input of its size and must fail on any other."""
    from onnx import TensorProto, helper, numpy_helper

    size = numpy_helper.from_array(np.array([16, 16], dtype=np.int64), "size")
    axes = helper.make_node("Resize", ["x", "", "", "size"], ["y"], mode="nearest", axes=[2, 3])
    path = _graph(tmp_path, "fixed", [axes], [_image()], _image("y", TensorProto.FLOAT), [size])
    opened = open_artifact(path)
    assert opened.scale == 2  # 8x8 in, 16x16 out
    assert opened.run(np.zeros((1, 3, 8, 8), np.float32)).shape == (1, 3, 16, 16)
    with pytest.raises(InputError, match="upscales x1, not x2"):
        opened.run(np.zeros((1, 3, 16, 16), np.float32))


def test_onnx_runtime_refuses_graphs_that_do_not_take_one_rgb_image(tmp_path):
    from onnx import TensorProto, helper

    two = _graph(tmp_path, "two", [helper.make_node("Add", ["x", "z"], ["y"])], [_image("x"), _image("z")],
                 _image("y"))
    gray = _graph(tmp_path, "gray", [helper.make_node("Identity", ["x"], ["y"])], [_image(shape=(1, 1, None, None))],
                  _image("y"))
    u8 = _graph(tmp_path, "u8", [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
                [_image(kind=TensorProto.UINT8)], _image("y"))
    for path, expect in ((two, "2 inputs"), (gray, "not a float32 NCHW RGB image"), (u8, "not a float32 NCHW")):
        with pytest.raises(InputError, match=expect):
            open_artifact(path)


def test_an_infinite_output_is_refused_not_clipped_into_a_psnr(tmp_path):
    from compress.core.evaluate import evaluate
    from compress.core.data import ImagePair

    from onnx import helper, numpy_helper

    zero = numpy_helper.from_array(np.zeros(1, dtype=np.float32), "zero")
    path = _graph(tmp_path, "inf", [helper.make_node("Resize", ["x", "", "s"], ["r"], mode="nearest"),
                                    helper.make_node("Div", ["r", "zero"], ["y"])], [_image()], _image("y"),
                  [zero, numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "s")])
    lr = np.full((8, 8, 3), 0.5, np.float32)
    with pytest.raises(InputError, match="NaN or Inf; no PSNR"):
        evaluate(open_artifact(path, scale=2).run, [ImagePair("img", np.zeros((16, 16, 3), np.float32), lr)], 2)


@pytest.mark.skipif(not _importable("openvino"), reason="openvino not installed")
def test_openvino_refuses_files_that_are_not_ir_and_weights_that_are_no_file(tmp_path, capfd):
    import os

    fp32 = export_onnx(tiny_edsr(2), tmp_path / "m.onnx")
    import openvino as ov

    ov.save_model(ov.convert_model(str(fp32)), str(tmp_path / "m.xml"))
    assert open_artifact(tmp_path / "m.xml").scale == 2
    text = tmp_path / "text.xml"
    text.write_text("this is no model")
    with pytest.raises(InputError, match="not OpenVINO IR"):
        open_artifact(text)
    (tmp_path / "broken.xml").write_text("<net garbage")  # passes the first look; only the IR frontend reads it
    capfd.readouterr()
    with pytest.raises(InputError, match=r"broken\.xml: OpenVINO cannot read it"):
        open_artifact(tmp_path / "broken.xml")
    assert capfd.readouterr().err == ""  # no other frontend tried it and logged its own parse error
    (tmp_path / "fifo.xml").write_bytes((tmp_path / "m.xml").read_bytes())
    os.mkfifo(tmp_path / "fifo.bin")  # reading it would block for ever
    with pytest.raises(InputError, match="weights are not a regular file"):
        open_artifact(tmp_path / "fifo.xml")


@pytest.mark.tflite
@pytest.mark.skipif(not _importable("tensorflow"), reason="tensorflow not installed")
def test_a_damaged_tflite_file_that_crashes_the_interpreter_is_refused_from_a_child_process(tmp_path, monkeypatch):
    """``data/damaged_segv.tflite``: a 1 KB TFLite model with eight bytes changed at random (a hostile-input
    probe of session 22); TFLite's interpreter dies with SIGSEGV on it, which would end the whole CLI or service."""
    from tests.conftest import REPO

    damaged = REPO / "tests/export/data/damaged_segv.tflite"
    with pytest.raises(InputError, match=r"crashed on it \(SIG"):
        open_artifact(damaged, untrusted=True)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "export.py").write_text("")  # a user's file must not shadow the project's package in the child
    with pytest.raises(InputError, match=r"crashed on it \(SIG"):
        open_artifact(damaged, untrusted=True)


def test_full_range_int8_weights_on_a_cpu_without_vnni_are_a_risk_warned_about(int8_models, tmp_path, monkeypatch):
    import warnings

    import export.runtimes.ort as ort_rt
    from compress.core.cpu import CpuInfo
    from export.runtimes.base import SaturationRisk
    from export.runtimes.ort import saturation_risk
    from quantization.ptq import Calibration, Int8Options, quantize

    avx2, vnni = CpuInfo("AVX2 CPU", frozenset({"avx2"})), CpuInfo("VNNI CPU", frozenset({"avx2", "avx512_vnni"}))
    q = int8_models["edsr"]  # full-range weights: what weight_range "auto" picks on a VNNI host
    assert saturation_risk(q, avx2).startswith(f"{q}: its INT8 weights use the full 8-bit range and this CPU "
                                               "(AVX2 CPU) has no VNNI")
    reduced = quantize(tmp_path / "edsr_pre.onnx", tmp_path / "reduced.onnx", tmp_path / "edsr.json", Calibration.MINMAX,
                       options=Int8Options(reduce_range=True))
    assert saturation_risk(q, vnni) == saturation_risk(reduced, avx2) == saturation_risk(tmp_path / "edsr.onnx", avx2) == ""
    monkeypatch.setattr(ort_rt, "host_cpu", lambda: avx2)
    with pytest.warns(SaturationRisk, match=r"full 8-bit range and this CPU \(AVX2 CPU\) has no VNNI"):
        open_artifact(q, untrusted=True)  # a file the user deploys
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these may warn
        open_artifact(q)  # the pipeline's own files: the bench scores them here instead
        open_artifact(reduced, untrusted=True)
    monkeypatch.setattr(ort_rt, "host_cpu", lambda: vnni)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_artifact(q, untrusted=True)


def test_ort_cuda_needs_a_gpu_not_only_the_provider(monkeypatch):
    """onnxruntime-gpu lists its CUDA provider on hosts without a GPU; the bench must not try it there."""
    import onnxruntime
    import torch

    from export.runtimes.ort import ORT_CUDA

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not ORT_CUDA.present()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ORT_CUDA.present()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert not ORT_CUDA.present()
