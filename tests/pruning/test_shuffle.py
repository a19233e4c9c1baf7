import pytest
import torch

from compress.core.archs import structure_of
from compress.core.checkpoint import count_macs
from pruning.channel import prune_channels
from pruning.schedule import PolynomialDecay
from pruning.shuffle import group_norms, kept_groups, prune_shuffle_groups
from tests.conftest import tiny_edsr, tiny_rrdb
from tests.pruning.conftest import assert_pruned_model_round_trips


def test_kept_groups_rounds_and_bounds():
    assert kept_groups(64, 0.5, 8) == 32
    assert kept_groups(64, 0.3, 8) == 48  # 44.8 -> 48
    assert kept_groups(64, 0.0, 8) == 64
    assert kept_groups(16, 0.95, 8) == 8  # never below round_to
    with pytest.raises(ValueError, match="ratio must be in"):
        kept_groups(64, 1.0, 8)


def test_group_norms_cover_filters_biases_and_reader_slice():
    up, reader = torch.nn.Conv2d(2, 8, 1), torch.nn.Conv2d(2, 3, 1)
    with torch.no_grad():
        for p in (*up.parameters(), *reader.parameters()):
            p.zero_()
        up.weight[4:8] = 1.0  # group 1: 4 filters x 2 inputs
        up.bias[0] = 3.0  # group 0's bias
        reader.weight[:, 1] = 2.0  # group 1's input slice: 3 outputs
    norms = group_norms(up, reader, 2)
    torch.testing.assert_close(norms, torch.tensor([3.0, (8 * 1.0 + 3 * 4.0) ** 0.5]))


@torch.no_grad()
def test_a_silent_group_is_the_one_removed_and_the_output_does_not_change():
    model = tiny_edsr(4).eval()
    stages = structure_of(model).shuffle_stages()
    up, r, reader = stages[0]
    groups, dead = up.out_channels // (r * r), 3
    up.weight[dead * r * r:(dead + 1) * r * r] = 0.0
    up.bias[dead * r * r:(dead + 1) * r * r] = 0.0
    survivors = torch.cat([reader.weight[:, :dead], reader.weight[:, dead + 1:]], dim=1).clone()
    x = torch.rand(1, 3, 10, 12)
    ref = model(x)
    assert prune_shuffle_groups(stages[:1], groups - 1) == [groups]
    assert up.out_channels == (groups - 1) * r * r and reader.in_channels == groups - 1
    torch.testing.assert_close(reader.weight, survivors)
    torch.testing.assert_close(model(x), ref)


def test_a_mismatched_stage_is_refused():
    with pytest.raises(ValueError, match="PixelShuffle"):
        prune_shuffle_groups([(torch.nn.Conv2d(4, 12, 3), 2, torch.nn.Conv2d(4, 3, 3))], 2)


def test_upsample_ratio_cuts_x4_macs_and_the_model_rebuilds_and_exports(tmp_path):
    sched = PolynomialDecay(0.0, 0.25, begin_step=0, end_step=20, frequency=10)
    plain, shuffled = tiny_edsr(4), tiny_edsr(4)
    shuffled.load_state_dict(plain.state_dict())
    for model, ratio in ((plain, 0.0), (shuffled, 0.5)):
        pruning = prune_channels(model, sched, round_to=4, upsample_ratio=ratio)
        for _ in sched.pruning_steps():
            pruning.step()
    assert count_macs(shuffled) < 0.8 * count_macs(plain)
    up_widths = [c.out_channels // (r * r) for c, r, _ in structure_of(shuffled).shuffle_stages()]
    full = plain.upsample[0].out_channels // 4
    assert up_widths == [full // 2, full // 2]
    assert assert_pruned_model_round_trips(shuffled, tmp_path, torch.rand(1, 3, 12, 10)).up_feat == full // 2


def test_upsample_ratio_is_validated_and_needs_no_shuffle_groups_without_a_shuffle():
    sched = PolynomialDecay(0.0, 0.25, begin_step=0, end_step=10, frequency=10)
    with pytest.raises(ValueError, match="upsample_ratio"):
        prune_channels(tiny_edsr(2), sched, round_to=4, upsample_ratio=1.0)
    # RRDB interpolates: no shuffle groups, its upsampler convolutions are ordinary groups (test_channel.py)
    assert prune_channels(tiny_rrdb(4), sched, round_to=4, upsample_ratio=0.5).upsample_keeps == ()
