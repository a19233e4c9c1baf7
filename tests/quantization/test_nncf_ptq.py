import numpy as np
import pytest
import torch

from export.onnx_export import export_onnx
from export.runtimes import open_artifact
from quantization.nncf_ptq import NNCFConfig, nncf_quantize
from quantization.ptq import cpu_has_vnni
from tests.conftest import tiny_edsr


def test_config_validation_and_overflow_policy():
    with pytest.raises(ValueError, match="nncf.preset"):
        NNCFConfig(preset="fast")
    with pytest.raises(ValueError, match="nncf.bias_correction"):
        NNCFConfig(bias_correction="some")
    assert NNCFConfig().overflow(has_vnni=True) == "disable"
    assert NNCFConfig().overflow(has_vnni=False) == "first_layer_only"
    assert NNCFConfig(overflow_fix="enable").overflow(has_vnni=True) == "enable"
    with pytest.raises(ValueError, match="nncf.float_convs"):
        NNCFConfig(float_convs=("middle",))


def test_float_conv_names_pick_first_and_last_in_order(tmp_path):
    import openvino as ov

    from quantization.nncf_ptq import float_conv_names

    model = ov.convert_model(str(export_onnx(tiny_edsr(2), tmp_path / "m.onnx")))
    first, last = float_conv_names(model, ("first", "last"))
    convs = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    assert (first, last) == (convs[0], convs[-1]) and float_conv_names(model, ()) == []


@pytest.mark.parametrize("bias", ["none", "full"])
def test_nncf_int8_ir_runs_close_to_fp32(tmp_path, bias):
    torch.manual_seed(0)
    fp32 = export_onnx(tiny_edsr(2), tmp_path / "fp32.onnx")
    rng = np.random.default_rng(0)
    patches = [rng.random((1, 3, 16, 16), dtype=np.float32) for _ in range(4)]
    xml, record = nncf_quantize(fp32, patches, tmp_path / "int8.xml", NNCFConfig(bias_correction=bias))
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    assert record["fake_quantize_nodes"] > 0 and record["samples"] == 4 and record["bias_correction"] == bias
    assert len(record["float_convs"]) == 2  # the input and output convolutions stay float by default
    assert record["overflow_fix"] == NNCFConfig().overflow(cpu_has_vnni())  # made for this host by default
    x = rng.random((1, 3, 20, 24), dtype=np.float32)
    ref, out = open_artifact(fp32, "ort").run(x), open_artifact(xml, "openvino").run(x)
    assert out.shape == ref.shape == (1, 3, 40, 48)
    assert 0 < np.abs(out - ref).max() < 0.1  # quantized (not identical), yet close


@pytest.mark.parametrize("vnni", [False, True])
def test_by_default_ptq_and_qat_choose_the_overflow_fix_for_this_host(tmp_path, monkeypatch, vnni):
    import quantization.nncf_ptq as ptq_mod
    import quantization.nncf_qat as qat_mod
    from quantization.nncf_qat import prepare_nncf_qat

    monkeypatch.setattr(ptq_mod, "cpu_has_vnni", lambda: vnni)
    monkeypatch.setattr(qat_mod, "cpu_has_vnni", lambda: vnni)
    want = "disable" if vnni else "first_layer_only"
    rng = np.random.default_rng(0)
    patches = [rng.random((1, 3, 16, 16), dtype=np.float32) for _ in range(2)]
    fp32 = export_onnx(tiny_edsr(2), tmp_path / "fp32.onnx")
    assert nncf_quantize(fp32, patches, tmp_path / "int8.xml", NNCFConfig(bias_correction="none"))[1]["overflow_fix"] == want
    _, record = prepare_nncf_qat(tiny_edsr(2), patches, NNCFConfig(bias_correction="none", qat=True))
    assert record["overflow_fix"] == want


def test_no_patches_refused(tmp_path):
    with pytest.raises(ValueError, match="no calibration patches"):
        nncf_quantize(tmp_path / "x.onnx", [], tmp_path / "x.xml", NNCFConfig())
