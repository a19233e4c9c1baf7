import numpy as np
import pytest
import torch

from compress.core.train import TrainConfig, fit
from export.runtimes import open_artifact
from quantization.nncf_ptq import NNCFConfig
from quantization.nncf_qat import can_build_kernels, float_node_names, prepare_nncf_qat, qat_ir
from tests.conftest import tiny_edsr, tiny_rrdb


def _patches(n: int = 4, side: int = 16) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((1, 3, side, side), dtype=np.float32) for _ in range(n)]


def _ranges(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("input_low")}


def test_float_node_names_follow_nncf_naming():
    assert float_node_names(tiny_edsr(2), ("first", "last")) == ["conv_first/conv2d/0", "conv_last/conv2d/0"]
    assert float_node_names(tiny_rrdb(4), ("last",)) == ["conv_last/conv2d/0"]
    assert float_node_names(tiny_edsr(2), ()) == []


@pytest.mark.skipif(not can_build_kernels(), reason="NNCF's CPU kernels need a C++ compiler (make toolchain)")
def test_nncf_qat_learns_ranges_and_weights_and_exports_int8_ir(tmp_path):
    teacher = tiny_edsr(2)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    model, record = prepare_nncf_qat(teacher, _patches(), NNCFConfig(bias_correction="none"))
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())  # the source stays untouched
    assert record["float_convs"] == ["conv_first/conv2d/0", "conv_last/conv2d/0"] and record["trainable_range_values"] > 0
    start = _ranges(model)
    assert start  # activation quantizers with a trainable lower bound
    rng = np.random.default_rng(1)

    def batches():
        while True:
            lr = rng.random((2, 3, 12, 12), dtype=np.float32)
            with torch.no_grad():
                hr = teacher(torch.from_numpy(lr)).numpy()
            yield lr, hr

    log = fit(model, batches(), TrainConfig(steps=6, lr=1e-2, warmup_steps=0, precision="fp32"), 2)
    assert log.steps_done == 6
    moved = [k for k, v in _ranges(model).items() if not torch.equal(v, start[k])]
    assert moved  # the ranges are trained, not frozen at their calibration
    xml = qat_ir(model, tmp_path / "qat.xml")
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    from openvino import Core

    ops = {op.get_type_name() for op in Core().read_model(str(xml)).get_ops()}
    assert "FakeQuantize" in ops
    x = rng.random((1, 3, 20, 28), dtype=np.float32)  # another size than the conversion's example
    out = open_artifact(xml, "openvino").run(x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert out.shape == (1, 3, 40, 56)
    assert np.abs(out - ref).max() < 0.02  # OpenVINO runs what the PyTorch fake-quant model trained


def test_no_patches_refused():
    with pytest.raises(ValueError, match="no calibration patches"):
        prepare_nncf_qat(tiny_edsr(2), [], NNCFConfig())
