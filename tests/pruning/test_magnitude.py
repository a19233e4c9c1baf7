import pytest
import torch

from torch.nn.utils import parametrize

from pruning.magnitude import freeze_zeros, magnitude_masks, prunable_convs, prune_low_magnitude, strip_pruning
from pruning.schedule import PolynomialDecay
from tests.conftest import adam_steps, tiny_edsr


def test_layer_masks_hit_target_per_layer():
    torch.manual_seed(0)
    weights = [torch.randn(8, 8, 3, 3), torch.randn(4, 8, 3, 3)]
    masks = magnitude_masks(weights, 0.5, "layer")
    assert [float(1 - m.mean()) for m in masks] == [0.5, 0.5]
    kept = weights[0].abs()[masks[0].bool()].min()
    assert kept >= weights[0].abs()[~masks[0].bool()].max()


def test_global_masks_share_one_threshold():
    weights = [torch.full((10,), 1.0), torch.full((10,), 3.0)]
    weights[0][0] = 5.0
    masks = magnitude_masks(weights, 0.45, "global")
    assert float(torch.cat(masks).mean()) == pytest.approx(0.55)
    assert masks[0].sum() == 1 and masks[1].sum() == 10


def test_first_and_last_conv_skipped_and_mean_untouched():
    model = tiny_edsr(2)
    names = [n for n, _ in prunable_convs(model, skip_first_last=True)]
    assert "conv_first" not in names and "conv_last" not in names
    mean = model.mean.clone()
    state = prune_low_magnitude(model, PolynomialDecay(0.0, 0.5, 0, 0, frequency=1))
    assert torch.equal(model.mean, mean)
    assert float((model.conv_first.weight == 0).float().mean()) == 0.0
    assert state.overall_sparsity() == pytest.approx(0.5, abs=0.01)


def test_masks_survive_optimizer_steps_and_strip():
    model = tiny_edsr(2)
    state = prune_low_magnitude(model, PolynomialDecay(0.0, 0.6, begin_step=0, end_step=4, frequency=2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.rand(2, 3, 8, 8)
    after_step = []
    for step in range(1, 6):
        loss = model(x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()  # Adam moves pruned weights off zero (their gradients are not zero)
        state.update(step)
        after_step.append(state.overall_sparsity())
    assert [s for s, _ in state.history] == [0, 2, 4]
    # AGP at step 2 of 4: 0.6 * (1 - (1 - 2/4)^3) = 0.525; steps between events keep the last target
    assert after_step == pytest.approx([0.0, 0.525, 0.525, 0.6, 0.6], abs=0.01)
    sparsity = strip_pruning(state)
    assert all(v == pytest.approx(0.6, abs=0.01) for v in sparsity.values())
    zeros = {n: m.weight == 0 for n, m in model.named_modules() if n in sparsity}
    assert all(z.float().mean() == pytest.approx(0.6, abs=0.01) for z in zeros.values())  # in the dense weights


def test_bad_scope():
    with pytest.raises(ValueError, match="scope must be one of"):
        prune_low_magnitude(tiny_edsr(2), PolynomialDecay(0, 0.5, 0, 1), scope="row")


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_ties_at_the_threshold_never_push_sparsity_over_the_target(scope):
    weights = [torch.tensor([0.0, 0.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 0.0, 0.0])]
    masks = magnitude_masks(weights, 0.25, scope)
    zeroed = [int((m == 0).sum()) for m in masks]
    assert zeroed == ([1, 2] if scope == "layer" else [3, 0])  # int(0.25 * 12) = 3, ties by position
    assert all(m.shape == w.shape for m, w in zip(masks, weights))


def test_a_pruning_event_ranks_the_masked_weights_so_a_pruned_weight_does_not_revive():
    """Zhu & Gupta: pruned weights stay pruned. An optimizer step between two events moves them off zero;
    the next event must rank them as the zeros the masks made them, not as the step left them."""
    torch.manual_seed(0)
    model = tiny_edsr(2)
    state = prune_low_magnitude(model, PolynomialDecay(0.3, 0.6, begin_step=0, end_step=4, frequency=2))
    _, conv = state.layers[0]
    pruned = (conv.weight == 0).nonzero()[0].tolist()
    with torch.no_grad():
        conv.weight[tuple(pruned)] = 100.0  # what a large optimizer step could leave
    state.update(2)
    assert conv.weight[tuple(pruned)] == 0


class _Same(torch.nn.Module):
    def forward(self, w):  # noqa: ANN001, ANN201
        return w * 1.0


@pytest.mark.parametrize("parametrized", [False, True])
def test_frozen_zeros_hold_through_adam_steps_and_the_rest_trains(parametrized):
    torch.manual_seed(0)
    model = tiny_edsr(2)
    with torch.no_grad():
        for _, conv in prunable_convs(model):
            conv.weight.mul_((torch.rand_like(conv.weight) > 0.5).float())
    if parametrized:  # as QAT's weight fake-quantizer wraps each kernel
        for _, conv in prunable_convs(model, skip_first_last=False):
            parametrize.register_parametrization(conv, "weight", _Same())
    zeros = [(c.weight == 0).clone() for _, c in prunable_convs(model)]
    before = [c.weight.detach().clone() for _, c in prunable_convs(model)]
    held = freeze_zeros(model)
    assert held.zeros == sum(int(z.sum()) for z in zeros) > 0
    adam_steps(model, 8, 2)
    for (_, conv), z, w0 in zip(prunable_convs(model), zeros, before):
        assert bool((conv.weight[z] == 0).all())
        assert not torch.equal(conv.weight[~z], w0[~z])  # the kept weights did train
    held.remove()
    assert held.handles == []


def test_a_dense_model_gets_no_zero_hooks():
    held = freeze_zeros(tiny_edsr(2))
    assert (held.zeros, held.handles) == (0, [])
