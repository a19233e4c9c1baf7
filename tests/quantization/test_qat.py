import numpy as np
import torch

from quantization.qat import ActivationRange, PerChannelWeightFakeQuant, prepare_qat, strip_qat
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
    strip_qat(state)
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    with torch.no_grad():
        assert (model(x) - ref).abs().max() > 0  # weights were trained
    assert set(model.state_dict()) == set(tiny_edsr(2).state_dict())
