"""The runtime table: presence on this host, lookup by file, the scale check on the first call."""

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
    if rt.name == "openvino-bf16":
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


def test_openvino_runs_float_and_int8_graphs_and_compiles_once_per_shape(tmp_path):
    pytest.importorskip("openvino")
    from export.runtimes.openvino import OVRunner, _float_graph
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
    img = write_image(tmp_path / "cal.png", (64, 48))
    pre = preprocess(fp32, tmp_path / "pre.onnx")
    reader = PatchCalibrationReader([img], 2, CalibrationConfig(lr_patch=16, patches_per_image=2))
    cache = tmp_path / "cal.json"
    calibrate(pre, reader, Calibration.MINMAX, cache)
    int8 = quantize(pre, tmp_path / "q.onnx", cache, Calibration.MINMAX, options=Int8Options())
    assert _float_graph(fp32) and not _float_graph(int8)
    got, ref = open_artifact(int8, "openvino", threads=1).run(x), ort_upscaler(int8)(x)
    assert np.abs(got - ref).mean() < 0.01  # both integer pipelines, rounding may differ slightly
