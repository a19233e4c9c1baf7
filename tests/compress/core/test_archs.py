"""Each architecture describes itself: registry lookups and the structural facts other packages read."""

import pytest
import torch
from torch import nn

from compress.core.archs import (ARCHITECTURES, EDSRConfig, RRDBConfig, RRDBNet, architecture, of_config, of_model,
                                 structure_of)
from tests.conftest import tiny_edsr, tiny_rrdb, tiny_srcnn


def test_registry_names_are_unique_and_round_trip():
    names = [a.name for a in ARCHITECTURES]
    assert names == ["edsr", "rrdb", "srcnn"]
    for arch in ARCHITECTURES:
        assert architecture(arch.name) is arch
    with pytest.raises(ValueError, match="unknown architecture 'unet'"):
        architecture("unet")


@pytest.mark.parametrize("scale, factors", [(2, [2]), (3, [3]), (4, [2, 2])])
def test_edsr_upsampler_convs_and_their_shuffle_factors(scale, factors):
    model = tiny_edsr(scale)
    facts = structure_of(model)
    assert [r for _, r in facts.upsample_convs] == factors
    assert all(conv.out_channels == model.cfg.up_width * r * r for conv, r in facts.upsample_convs)
    assert facts.output_conv is model.conv_last and facts.output_conv.out_channels == 3
    assert facts.relu_fed_convs == tuple(b.conv1 for b in model.body)
    assert facts.residual_blocks == tuple(model.body)
    assert facts.protected_convs() == [c for c, _ in facts.upsample_convs] + [model.conv_last]


def test_rrdb_facts():
    model = tiny_rrdb(4)
    facts = structure_of(model)
    assert facts.upsample_convs == () and facts.relu_fed_convs == ()
    assert len(facts.inner_convs) == model.cfg.num_block * 3 * 4
    assert len(facts.residual_blocks) == model.cfg.num_block * 4  # 3 dense blocks + the RRDB itself
    assert facts.output_conv is model.conv_last


def test_srcnn_facts():
    model = tiny_srcnn(3)
    facts = structure_of(model)
    assert facts.output_conv is model.conv3 and facts.residual_blocks == ()
    assert facts.relu_fed_convs == (model.conv1, model.conv2)


def test_lookups_by_config_and_model():
    model = tiny_edsr(2)
    assert of_model(model).name == "edsr" and of_config(model.cfg).name == "edsr"
    with pytest.raises(TypeError):
        of_model(nn.Conv2d(3, 3, 3))


def test_config_from_recipe_hyperparameters_ignores_foreign_names():
    cfg = architecture("edsr").config(scale=3, num_feat=32, num_block=4, num_grow_ch=99)
    assert cfg == EDSRConfig(scale=3, num_feat=32, num_block=4)
    assert type(architecture("rrdb").build(architecture("rrdb").config(scale=4, num_feat=8, num_block=1,
                                                                         num_grow_ch=4))).__name__ == "RRDBNet"


def test_unshuffled_rrdb_takes_inputs_smaller_than_its_factor():
    model = tiny_rrdb(2)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 1, 5)).shape == (1, 3, 2, 10)


def test_rrdb_dense_blocks_start_from_esrgans_small_initialisation():
    """Kaiming normal x 0.1 and zero bias in every dense-block convolution (Wang et al. 2018, BasicSR)."""
    torch.manual_seed(0)
    model = RRDBNet(RRDBConfig(scale=4, num_feat=32, num_block=2, num_grow_ch=16))
    conv = model.body[1].rdb3.conv5  # 32 + 4 x 16 = 96 input channels
    fan_in = conv.weight[0].numel()
    assert float(conv.weight.std()) == pytest.approx(0.1 * (2 / fan_in) ** 0.5, rel=0.1)
    assert not conv.bias.any()
    assert float(model.conv_first.weight.std()) > 2 * 0.1 * (2 / model.conv_first.weight[0].numel()) ** 0.5


@pytest.mark.parametrize(("make", "first"), [(lambda: tiny_rrdb(4), "conv_first"), (lambda: tiny_edsr(2), "conv_first"),
                                             (lambda: tiny_srcnn(3, channels=3), "conv1"),
                                             (lambda: tiny_srcnn(3, channels=1), "conv1")],
                         ids=["rrdb", "edsr", "srcnn-rgb", "srcnn-y"])
def test_the_first_convolution_reads_the_image_in_fp32_under_bf16_autocast(make, first):
    """8-bit levels over 0.5 round up in bf16, EDSR's mean-shifted levels to biased half levels, SRCNN's
    bicubic image likewise: the layer that reads the image sees exactly what it sees without autocast."""
    model = make().eval()
    x = torch.arange(256, dtype=torch.float32).div(255).reshape(1, 1, 16, 16).expand(1, 3, 16, 16).contiguous()
    seen = []
    getattr(model, first).register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    with torch.no_grad():
        exact = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x)
    (x_exact, out_exact), (x_mixed, out_mixed) = seen
    assert x_mixed.dtype == out_mixed.dtype == torch.float32
    assert torch.equal(x_mixed, x_exact) and torch.equal(out_mixed, out_exact)
    assert not torch.equal(mixed.float(), exact)  # autocast was on: the rest of the network ran in bf16
    assert (mixed.float() - exact).abs().max() < 0.05
