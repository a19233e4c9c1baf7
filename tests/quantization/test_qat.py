import numpy as np
import pytest
import torch

from compress.core.train_config import TrainConfig
from quantization.qat import ActivationRange, PerChannelWeightFakeQuant, prepare_qat, qat_train_config, strip_qat
from tests.conftest import tiny_edsr


def test_weight_fake_quant_matches_ort_symmetric_per_channel():
    w = torch.tensor([[[[0.5]], [[-1.0]]], [[[0.02]], [[0.01]]]])
    q = PerChannelWeightFakeQuant()(w)
    # channel 0: scale 1/127; channel 1: scale 0.02/127
    np.testing.assert_allclose(q[0].flatten(), [round(0.5 * 127) / 127, -1.0], rtol=1e-6)
    np.testing.assert_allclose(q[1].flatten(), [0.02, round(0.01 / (0.02 / 127)) * 0.02 / 127], rtol=1e-5)


def test_activation_range_contains_zero_and_uint8_params():
    rng = ActivationRange(observe_only=True)
    rng.update(torch.tensor([0.5, 2.0]))
    assert (rng.lo, rng.hi) == (0.0, 2.0)
    scale, zero = rng.qparams()
    assert scale == 2.0 / 255 and zero == 0


def test_uint8_zero_point_and_ema_follow_ort_and_the_momentum():
    rng = ActivationRange(observe_only=True)
    rng.update(torch.tensor([-1.0, 3.0]))
    scale, zero = rng.qparams()
    assert scale == pytest.approx(4.0 / 255) and zero == 64  # round(1 / (4/255)) = round(63.75)
    ema = ActivationRange(momentum=0.9)
    ema.update(torch.tensor([-1.0, 1.0]))
    ema.update(torch.tensor([-3.0, 3.0]))
    assert (ema.lo, ema.hi) == pytest.approx((-1.2, 1.2))  # 0.9 * old + 0.1 * new, not the reverse


@pytest.mark.parametrize("qmax", [127, 64])
def test_weight_fake_quant_grid_is_full_or_reduced_range(qmax):
    w = torch.randn(4, 3, 3, 3)
    q = PerChannelWeightFakeQuant(qmax)(w)
    step = w.abs().amax(dim=(1, 2, 3), keepdim=True) / qmax
    levels = q / step
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert levels.abs().amax(dim=(1, 2, 3)).round().tolist() == [qmax] * 4  # each channel's peak is the grid's end


def test_prepare_train_strip(tmp_path):
    model = tiny_edsr(2)
    x = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        ref = model(x)
    state = prepare_qat(model, [x[:1].numpy()])
    assert all(r.initialised and r.lo <= 0 <= r.hi for r in state.ranges.values())
    with torch.no_grad():
        fq = model(x)
    assert 0 < (fq - ref).abs().max() < 0.05  # fake quantization changes the output a little
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = (model(x) - ref).abs().mean()
    loss.backward()
    opt.step()
    trained = {name: conv.parametrizations.weight.original.detach().clone() for name, conv in state.convs}
    strip_qat(state)
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    for name, conv in state.convs:  # the trained float weights, not their quantized copies
        assert torch.equal(conv.weight, trained[name]), name
    assert set(model.state_dict()) == set(tiny_edsr(2).state_dict())
    fresh = tiny_edsr(2)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(model.eval()(x), fresh.eval()(x))  # no fake quantization left behind
        assert (model(x) - ref).abs().max() > 0  # weights were trained


def test_output_points_follow_ort_requantization():
    from quantization.qat import output_points

    from tests.conftest import tiny_rrdb

    names = {n for n, _ in output_points(tiny_edsr(2))}
    assert {"body.0", "body.0.conv2", "conv_first", "conv_after_body", "conv_last"} <= names
    assert "body.0.conv1" not in names  # ReLU follows: ORT fuses it and quantizes after the ReLU
    rrdb = {n for n, _ in output_points(tiny_rrdb(4))}
    assert {"body.0", "body.0.rdb1", "body.0.rdb1.conv1", "body.0.rdb1.conv5"} <= rrdb


def test_ranges_frozen_by_default_and_follow_ema_when_asked():
    x = torch.rand(1, 3, 12, 12)
    for momentum, frozen in ((1.0, True), (0.5, False)):
        model = tiny_edsr(2)
        state = prepare_qat(model, [x.numpy()], momentum=momentum)
        before = {k: (r.lo, r.hi) for k, r in state.ranges.items()}
        model.train()
        model(x * 3)
        after = {k: (r.lo, r.hi) for k, r in state.ranges.items()}
        assert (before == after) is frozen
        assert any(k.endswith(":out") for k in state.ranges) and any(k.endswith(":in") for k in state.ranges)


def test_block_outputs_alias_the_next_convolution_input():
    model = tiny_edsr(2)
    state = prepare_qat(model, [torch.rand(1, 3, 12, 12).numpy()])
    assert state.aliases["body.1.conv1:in"] == "body.0:out"
    assert state.ranges["body.1.conv1:in"] is state.ranges["body.0:out"]
    assert "body.0.conv2:in" not in state.aliases  # a ReLU output, not a block output


def test_rrdb_qat_trains_through_leaky_relu_points_and_shares_upsampler_ranges():
    from tests.conftest import tiny_rrdb

    model = tiny_rrdb(4)
    x = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        ref = model(x)
    state = prepare_qat(model, [x[:1].numpy()])
    assert state.aliases["conv_hr:in"] == "conv_up2:act"  # LeakyReLU output read by the next conv: one range
    assert state.ranges["conv_hr:in"] is state.ranges["conv_up2:act"]
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):  # backward through fake-quantized, in-place LeakyReLU outputs
        opt.zero_grad()
        loss = (model(x) - ref).abs().mean()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss) and model.conv_first.parametrizations.weight.original.grad is not None
    strip_qat(state)
    assert set(model.state_dict()) == set(tiny_rrdb(4).state_dict())


def test_reduce_range_trains_on_7_bit_weights():
    model = tiny_edsr(2)
    prepare_qat(model, [torch.rand(1, 3, 12, 12).numpy()], reduce_range=True)
    w = model.body[0].conv1.weight  # the parametrized (fake-quantized) weight the forward pass uses
    raw = model.body[0].conv1.parametrizations.weight.original
    levels = w / (raw.abs().amax(dim=(1, 2, 3), keepdim=True) / 64)
    assert torch.allclose(levels, levels.round(), atol=1e-4) and float(levels.abs().max().round()) == 64


def test_qat_trains_in_fp32_unless_the_recipe_asks_for_bf16():
    assert qat_train_config(TrainConfig(steps=3)).precision == "fp32"  # the default, "auto"
    assert qat_train_config(TrainConfig(steps=3, precision="bf16")).precision == "bf16"
    assert qat_train_config(TrainConfig(steps=3, precision="fp32")).precision == "fp32"
    assert qat_train_config(TrainConfig(steps=3, lr=3e-5)).lr == 3e-5  # nothing else changes
