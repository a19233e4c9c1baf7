import numpy as np
import pytest
import torch

from compress.core.train import fit
from compress.core.train_config import TrainConfig
from export.runtimes import open_artifact
from quantization.nncf_ptq import NNCFConfig
from quantization.nncf_qat import float_node_names, prepare_nncf_qat, qat_ir
from tests.conftest import adam_steps, tiny_edsr, tiny_rrdb


def _patches(n: int = 4, side: int = 16) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((1, 3, side, side), dtype=np.float32) for _ in range(n)]


def _ranges(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("input_low")}


@pytest.mark.parametrize("make", [tiny_edsr, tiny_rrdb])
def test_float_node_names_are_nodes_of_nncfs_graph(make):
    from nncf.torch.function_hook import wrap_model
    from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import build_nncf_graph

    model = make()
    graph = build_nncf_graph(wrap_model(model), torch.zeros(1, 3, 8, 8))
    convs = [n.node_name for n in graph.topological_sort() if n.node_name.endswith("/conv2d/0")]
    first, last = float_node_names(model, ("first", "last"))
    assert (first, last) == (convs[0], convs[-1])  # execution order agrees with module order here
    nested = [n for n in convs if n.count("/") > 2]
    assert nested and nested[0].startswith(("body/0/", "body/0/rdb1/"))  # nested modules: "/"-joined path
    assert float_node_names(model, ()) == []


def test_nncf_qat_learns_ranges_and_weights_and_exports_int8_ir(tmp_path):
    teacher = tiny_edsr(2)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    model, record = prepare_nncf_qat(teacher, _patches(), NNCFConfig(bias_correction="none", qat=True))
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


def test_no_patches_refused_and_full_bias_correction_refused_for_qat():
    with pytest.raises(ValueError, match="no calibration patches"):
        prepare_nncf_qat(tiny_edsr(2), [], NNCFConfig())
    with pytest.raises(ValueError, match="nncf.bias_correction full is not supported with nncf.qat"):
        NNCFConfig(bias_correction="full", qat=True)


@pytest.mark.parametrize("make", [tiny_edsr, tiny_rrdb])
def test_qat_ir_runs_at_odd_sizes(tmp_path, make):
    model, _ = prepare_nncf_qat(make(), _patches(2), NNCFConfig(bias_correction="none"))
    xml = qat_ir(model, tmp_path / "q.xml")
    scale = model.scale
    for h, w in ((9, 13), (17, 6)):
        x = np.random.default_rng(h).random((1, 3, h, w), dtype=np.float32)
        assert open_artifact(xml, "openvino").run(x).shape == (1, 3, h * scale, w * scale)


def test_nncf_qat_of_a_pruned_model_holds_its_zero_weights():
    """Sparsity-preserving QAT on NNCF's model: its kernels keep their ``weight`` names, so
    :func:`pruning.magnitude.freeze_zeros` holds the pruned zeros through Adam steps at a large rate."""
    from pruning.magnitude import freeze_zeros

    torch.manual_seed(0)
    model = tiny_edsr(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 4:
                p.mul_((torch.rand_like(p) > 0.5).float())
    quantized, _ = prepare_nncf_qat(model, _patches(), NNCFConfig(), True)
    kernels = {n: p for n, p in quantized.named_parameters() if n.endswith("weight") and p.ndim == 4}
    zeros = {n: (p == 0).clone() for n, p in kernels.items()}
    held = freeze_zeros(quantized)
    assert held.zeros == sum(int(z.sum()) for z in zeros.values()) > 0
    adam_steps(quantized, 16, 2)
    for name, p in kernels.items():
        assert bool((p[zeros[name]] == 0).all()), name
        assert not bool((p[~zeros[name]] == 0).all()), name
