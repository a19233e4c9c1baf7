import pytest
import torch

from compress.core.archs import EDSR, EDSRConfig
from pruning.channel import Criterion, emptied_layers, prune_channels, widest_prunable
from pruning.schedule import PolynomialDecay
from tests.conftest import tiny_edsr, tiny_rrdb, tiny_srcnn
from tests.pruning.conftest import assert_pruned_model_round_trips

CASES = [
    ("edsr_x2", lambda: tiny_edsr(2)),
    ("edsr_x3", lambda: tiny_edsr(3)),
    ("edsr_x4", lambda: tiny_edsr(4)),
    ("rrdb_x4", lambda: tiny_rrdb(4)),
    ("rrdb_x2", lambda: tiny_rrdb(2)),
    ("srcnn_x3", lambda: tiny_srcnn(3, 1)),
]


def _prune(model, ratio=0.5):
    sched = PolynomialDecay(0.0, ratio, begin_step=0, end_step=20, frequency=10)
    pruning = prune_channels(model, sched, round_to=4)
    for _ in sched.pruning_steps():
        pruning.step()
    return pruning


@pytest.mark.parametrize(("name", "make"), CASES)
def test_channel_pruning_shrinks_keeps_shape_round_trips_and_exports(tmp_path, name, make):
    model = make()
    params_before = sum(p.numel() for p in model.parameters())
    x = torch.rand(1, 3, 14, 18)
    shape = model(x).shape
    _prune(model)
    assert sum(p.numel() for p in model.parameters()) < 0.6 * params_before
    assert model(x).shape == shape
    assert_pruned_model_round_trips(model, tmp_path, x)


def test_edsr_residual_stream_is_pruned_together_and_upsampler_kept():
    model = tiny_edsr(4)
    _prune(model)
    stream = {model.conv_first.out_channels, model.conv_after_body.out_channels,
              *(b.conv2.out_channels for b in model.body)}
    assert stream == {8}
    assert [m.out_channels for m in model.upsample if isinstance(m, torch.nn.Conv2d)] == [64, 64]
    assert model.upsample[0].in_channels == 8 and model.conv_last.out_channels == 3


def test_rrdb_concatenations_stay_consistent():
    model = tiny_rrdb(4)
    _prune(model)
    rdb = model.body[0].rdb1
    grown = [rdb.conv1.out_channels, rdb.conv2.out_channels, rdb.conv3.out_channels, rdb.conv4.out_channels]
    nf = model.conv_first.out_channels
    assert rdb.conv5.in_channels == nf + sum(grown) and rdb.conv5.out_channels == nf


def test_round_to_keeps_multiples_of_eight():
    from compress.core.archs import EDSR, EDSRConfig

    model = EDSR(EDSRConfig(scale=2, num_feat=32, num_block=2))
    _prune_8 = PolynomialDecay(0.0, 0.3, begin_step=0, end_step=1, frequency=1)
    pruning = prune_channels(model, _prune_8, round_to=8)
    for _ in _prune_8.pruning_steps():
        pruning.step()
    assert all(w % 8 == 0 for n, w in pruning.widths().items() if n != "conv_last")
    assert pruning.widths()["conv_first"] < 32


def test_inner_ratio_prunes_block_interiors_harder():
    from compress.core.archs import EDSR, EDSRConfig

    model = EDSR(EDSRConfig(scale=2, num_feat=32, num_block=2))
    sched = PolynomialDecay(0.0, 0.25, begin_step=0, end_step=2, frequency=1)
    pruning = prune_channels(model, sched, round_to=8, inner_ratio=0.5)
    for _ in sched.pruning_steps():
        pruning.step()
    assert model.conv_first.out_channels == 24 and [b.conv1.out_channels for b in model.body] == [16, 16]
    with pytest.raises(ValueError, match="inner_ratio must be in"):
        prune_channels(tiny_edsr(2), sched, inner_ratio=1.5)


def test_a_whole_trunk_still_lends_its_ramp_to_the_interiors(tmp_path):
    # RRDB's trunk channels each carry the long skip (one removed costs dB before fine-tuning) while its
    # growth channels are cheap: final_sparsity 0 keeps the trunk and prunes only the dense interiors
    model = tiny_rrdb(4)
    sched = PolynomialDecay(0.0, 0.0, begin_step=0, end_step=30, frequency=10)
    pruning = prune_channels(model, sched, round_to=1, inner_ratio=0.5)
    grown = []
    for _ in sched.pruning_steps():
        pruning.step()
        grown.append(model.body[0].rdb1.conv1.out_channels)
    assert model.conv_first.out_channels == 16 and model.conv_up1.out_channels == 16
    # 8 growth channels, the cubic ramp scaled to 0.5: 0, 0.352, 0.481, 0.5 of them removed (torch-pruning
    # rounds the count removed up)
    assert grown == [8, 5, 4, 4]
    assert_pruned_model_round_trips(model, tmp_path, torch.rand(1, 3, 12, 12))
    edsr = tiny_edsr(2)  # the same for EDSR: trunk whole, residual-block interiors on the ramp
    pruning = prune_channels(edsr, sched, round_to=1, inner_ratio=0.5)
    for _ in sched.pruning_steps():
        pruning.step()
    assert edsr.conv_first.out_channels == 16 and [b.conv1.out_channels for b in edsr.body] == [8] * len(edsr.body)


def test_upsample_ratio_prunes_an_interpolating_upsampler_at_its_own_ratio(tmp_path):
    model = tiny_rrdb(4)
    sched = PolynomialDecay(0.0, 0.0, begin_step=0, end_step=0, frequency=1)
    prune_channels(model, sched, round_to=1, inner_ratio=0.25, upsample_ratio=0.5).step()
    assert model.conv_first.out_channels == 16 and model.body[0].rdb1.conv1.out_channels == 6
    assert [model.conv_up1.out_channels, model.conv_up2.out_channels, model.conv_hr.out_channels] == [8, 8, 8]
    assert model.conv_last.out_channels == 3
    assert_pruned_model_round_trips(model, tmp_path, torch.rand(1, 3, 12, 12))


@pytest.mark.parametrize("criterion", list(Criterion))
def test_every_criterion_reaches_the_same_widths_and_taylor_follows_gradients(criterion):
    model = tiny_edsr(2)
    ref = tiny_edsr(2)
    sched = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=0, frequency=1)
    pruning = prune_channels(model, sched, round_to=1, criterion=criterion)
    if criterion.needs_gradients:
        x = torch.rand(2, 3, 12, 12)
        torch.nn.functional.l1_loss(model(x), torch.rand(2, 3, 24, 24)).backward()
    pruning.step()
    ref_pruning = prune_channels(ref, sched, round_to=1)
    ref_pruning.step()
    assert pruning.widths() == ref_pruning.widths()  # criteria choose which channels, not how many
    assert model(torch.rand(1, 3, 10, 10)).shape == (1, 3, 20, 20)


def test_taylor_keeps_the_channels_the_loss_depends_on():
    from torch import nn

    conv = nn.Conv2d(4, 4, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.diag(torch.tensor([4.0, 3.0, 0.5, 0.2]))[:, :, None, None])
    imp_mag = Criterion.MAGNITUDE.importance()
    imp_tay = Criterion.TAYLOR.importance()
    import torch_pruning as tp

    model = nn.Sequential(conv, nn.Conv2d(4, 1, 1, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.0, 0.0, 1.0, 1.0])[None, :, None, None])  # only channels 2, 3 matter
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.rand(1, 4, 4, 4))
    group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0, 1, 2, 3])
    model(torch.rand(8, 4, 4, 4)).pow(2).sum().backward()
    assert imp_mag(group).argsort()[:2].tolist() == [3, 2]  # magnitude would drop the two that matter
    assert sorted(imp_tay(group).argsort()[:2].tolist()) == [0, 1]  # Taylor drops the two that do not


def test_fpgm_drops_the_redundant_filters_and_lamp_ranks_a_layer_as_magnitude_does():
    import torch_pruning as tp
    from torch import nn

    conv = nn.Conv2d(4, 4, 1, bias=False)
    model = nn.Sequential(conv, nn.Conv2d(4, 1, 1, bias=False))
    with torch.no_grad():  # filters 1 and 2 are near copies; filter 3 is small but unlike the others
        conv.weight.copy_(torch.tensor([[10.0, 0, 0, 0], [1.0, 0, 0, 0], [1.1, 0, 0, 0], [0, 0.5, 0, 0]])[:, :, None, None])
        model[1].weight.fill_(1.0)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.rand(1, 4, 4, 4))
    group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0, 1, 2, 3])
    magnitude = Criterion.MAGNITUDE.importance()(group)
    assert sorted(magnitude.argsort()[:2].tolist()) == [1, 3]  # the two smallest
    assert sorted(Criterion.FPGM.importance()(group).argsort()[:2].tolist()) == [1, 2]  # nearest the median
    assert Criterion.LAMP.importance()(group).argsort().tolist() == magnitude.argsort().tolist()


def test_global_pruning_spreads_the_same_budget_unevenly_across_groups():
    widths = {}
    for global_pruning in (False, True):
        model = tiny_edsr(2)
        sched = PolynomialDecay(0.0, 0.25, begin_step=0, end_step=0, frequency=1)
        prune_channels(model, sched, round_to=1, global_pruning=global_pruning).step()
        widths[global_pruning] = [model.conv_first.out_channels] + [b.conv1.out_channels for b in model.body]
    assert widths[False] == [12, 12, 12]  # each group loses its quarter
    assert widths[True] != widths[False] and sum(widths[True]) == sum(widths[False])  # ranked across groups


def test_agp_events_prune_gradually_on_the_rounding_grid():
    """64 channels in steps of 8, three cubic-ramp events to 25% (interiors 37.5%): each event moves
    toward the final widths without reaching them at the first, and the final widths are torch-pruning's."""
    from compress.core.archs import EDSR, EDSRConfig

    torch.manual_seed(0)
    model = EDSR(EDSRConfig(scale=2, num_feat=64, num_block=2)).eval()
    sched = PolynomialDecay(0.0, 0.25, begin_step=0, end_step=150, frequency=50)
    pruning = prune_channels(model, sched, round_to=8, inner_ratio=0.375)
    trunk, inner = [], []
    for _ in sched.pruning_steps():
        pruning.step()
        trunk.append(pruning.widths()["conv_first"])
        inner.append(pruning.widths()["body.0.conv1"])
    assert trunk == [64, 56, 48, 48] and inner == [64, 48, 40, 40]


def test_global_pruning_keeps_torch_prunings_widths():
    import torch_pruning as tp

    from compress.core.archs import EDSR, EDSRConfig
    from pruning import channel

    def final_widths(pruner_class):
        torch.manual_seed(1)
        model = EDSR(EDSRConfig(scale=2, num_feat=64, num_block=2)).eval()
        sched = PolynomialDecay(0.0, 0.6, begin_step=0, end_step=150, frequency=50)
        original, channel.RampPruner = channel.RampPruner, pruner_class
        try:
            pruning = prune_channels(model, sched, round_to=8, global_pruning=True)
        finally:
            channel.RampPruner = original
        for _ in sched.pruning_steps():
            pruning.step()
        return pruning.widths()

    assert final_widths(channel.RampPruner) == final_widths(tp.pruner.MagnitudePruner)


def test_widest_prunable_counts_shuffle_groups_only_when_the_upsampler_is_pruned():
    model = EDSR(EDSRConfig(scale=2, num_feat=8, num_block=1, up_feat=16))  # upsampler wider than the trunk
    assert widest_prunable(model) == 8
    assert widest_prunable(model, upsample_ratio=0.5) == 16
    with pytest.raises(ValueError, match="conv_first, 8 channels at ratio 0.5 keep 4"):  # the trunk would stay whole
        prune_channels(model, PolynomialDecay(0.0, 0.5, 0, 1, 1), round_to=8, upsample_ratio=0.5)
    pruning = prune_channels(model, PolynomialDecay(0.0, 0.0, 0, 1, 1), round_to=8, upsample_ratio=0.5)
    for _ in range(pruning.events):
        pruning.step()
    assert model.upsample[0].out_channels == 32  # 8 of 16 groups of 4 removed: round_to 8 < 16 did prune


@pytest.mark.parametrize("global_pruning", [False, True])
def test_global_pruning_ranks_the_block_interiors_together(global_pruning):
    """Under global scope the interiors share one ranking (one tuple key, one torch-pruning scope), so the
    same budget splits unevenly between the blocks; per layer, each block gives exactly its share (one
    key per layer made a scope of each, and global scope pruned the interiors per layer too)."""
    from compress.core.archs import EDSR, EDSRConfig

    torch.manual_seed(0)
    model = EDSR(EDSRConfig(scale=2, num_feat=32, num_block=2)).eval()
    sched = PolynomialDecay(0.0, 0.25, begin_step=0, end_step=0, frequency=1)
    prune_channels(model, sched, round_to=1, inner_ratio=0.5, global_pruning=global_pruning).step()
    inner = [b.conv1.out_channels for b in model.body]
    assert sum(inner) == 32
    assert (inner != [16, 16]) if global_pruning else inner == [16, 16]


def test_a_round_to_that_empties_a_layer_is_refused_before_torch_pruning_silently_keeps_it():
    """RRDB growth convolutions of 8 at ratio 0.5 keep 4, which round_to 8 floors to 0: torch-pruning would
    leave them whole (the recipe's cut not made); emptied_layers names them and prune_channels refuses."""
    model = tiny_rrdb(4)  # 16 trunk, 8 growth channels
    found = emptied_layers(model, 0.25, 8, inner_ratio=0.5)
    assert len(found) == 24 and found["body.0.rdb1.conv1"] == (8, 0.5, 4)  # 2 blocks x 3 RDBs x 4 growth convs
    assert all(".rdb" in name and not name.endswith("conv5") for name in found)
    sched = PolynomialDecay(0.0, 0.25, begin_step=0, end_step=0, frequency=1)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"round_to 8 rounds 24 layer\(s\) down to no channel.*body\.0\.rdb1\.conv1.*"
                                         r"use round_to <= 4"):
        prune_channels(model, sched, round_to=8, inner_ratio=0.5)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # refused before the model is touched
    prune_channels(model, sched, round_to=8, inner_ratio=0.5, global_pruning=True)  # one ranking: no layer emptied


def test_a_round_to_that_keeps_each_layer_prunes_every_group():
    model = tiny_rrdb(4)
    assert emptied_layers(model, 0.25, 4, inner_ratio=0.5) == {}
    sched = PolynomialDecay(0.0, 0.25, begin_step=0, end_step=0, frequency=1)
    pruning = prune_channels(model, sched, round_to=4, inner_ratio=0.5)
    for _ in sched.pruning_steps():
        pruning.step()
    rdb = model.body[0].rdb1
    assert {rdb.conv1.out_channels, rdb.conv4.out_channels, model.body[1].rdb3.conv2.out_channels} == {4}
    assert model.conv_first.out_channels == 12  # the trunk: 16 at 0.25 keeps 12


def test_a_round_to_not_below_the_widest_layer_is_refused():
    model = tiny_rrdb(4)
    assert widest_prunable(model) == 16
    with pytest.raises(ValueError, match=r"round_to 16 is not below the model's widest prunable layer \(16 channels\)"):
        prune_channels(model, PolynomialDecay(0.0, 0.25, 0, 0, 1), round_to=16)
