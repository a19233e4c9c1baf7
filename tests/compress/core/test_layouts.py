import pytest
import torch

from compress.core.layouts import LAYOUTS, matching_layouts
from tests.conftest import LAYOUT_CASES, as_layout


@pytest.mark.parametrize(("layout", "make"), LAYOUT_CASES)
def test_each_layout_matches_exactly_one(layout, make):
    sd = as_layout(make(), layout)
    assert [lay.name for lay in matching_layouts(sd)] == [layout]


@pytest.mark.parametrize(("layout", "make"), LAYOUT_CASES)
def test_conversion_recovers_config(layout, make):
    model = make()
    lay = next(lay for lay in LAYOUTS if lay.name == layout)
    cfg, canon = lay.to_canonical(as_layout(model, layout), model.cfg.scale)
    assert cfg == model.cfg
    assert set(canon) == set(model.state_dict())


def test_layout_names_are_unique_and_cover_three_archs():
    names = [lay.name for lay in LAYOUTS]
    assert len(names) == len(set(names))
    assert {lay.arch for lay in LAYOUTS} == {"edsr", "rrdb", "srcnn"}


def test_each_architecture_declares_its_own_layouts_and_its_canonical_one_among_them():
    from compress.core.archs import ARCHITECTURES

    for arch in ARCHITECTURES:
        assert arch.layouts and all(lay.arch == arch.name for lay in arch.layouts)
        assert arch.canonical_layout in [lay.name for lay in arch.layouts]
    assert LAYOUTS == tuple(lay for arch in ARCHITECTURES for lay in arch.layouts)  # the one list, nothing besides


def test_edsr_full_model_gets_residual_scaling():
    from compress.core.archs import EDSR, EDSRConfig

    big = EDSR(EDSRConfig(scale=2, num_feat=256, num_block=1, res_scale=0.1))
    cfg, _ = LAYOUTS[0].to_canonical(as_layout(big, "edsr-official"), None)
    assert cfg.res_scale == 0.1 and cfg.num_feat == 256


def test_pruned_widths_are_read_from_shapes():
    from compress.core.archs import EDSR, EDSRConfig, RRDBConfig, RRDBNet

    edsr = EDSR(EDSRConfig(scale=3, num_feat=24, num_block=2, block_mid=(8, 16), up_feat=16))
    cfg, _ = LAYOUTS[1].to_canonical(as_layout(edsr, "edsr-basicsr"), None)
    assert cfg == edsr.cfg
    grow = (((8, 8, 16, 8), (8, 8, 8, 8), (16, 8, 8, 8)),)
    rrdb = RRDBNet(RRDBConfig(scale=4, num_feat=16, num_block=1, num_grow_ch=8, grow=grow, up_feat=(24, 16, 8)))
    cfg, _ = LAYOUTS[4].to_canonical(as_layout(rrdb, "rrdb-basicsr"), None)
    assert cfg == rrdb.cfg
    assert torch.equal(torch.tensor(cfg.block_grow(0)), torch.tensor(grow[0]))
