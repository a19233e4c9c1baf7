"""EDSR (Lim et al., "Enhanced Deep Residual Networks for Single Image Super-Resolution", CVPRW 2017).

Canonical parameter names follow BasicSR (``conv_first``, ``body.N.conv1``, ``conv_after_body``,
``upsample.K``, ``conv_last``). Channel widths of every convolution are read from a config so that a
channel-pruned model rebuilds from its own tensor shapes.
"""

from __future__ import annotations

import dataclasses
import math
import re

import torch
from torch import nn

from compress.core.archs.exact_input import read_exactly
from compress.core.archs.spec import Architecture, Structure
from compress.core.archs.layout import (
    Layout, StateDict, count_indices, has_keys, in_channels, out_channels, rename_keys,
)

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


@dataclasses.dataclass(frozen=True)
class EDSRConfig:
    """Hyperparameters of an EDSR, including per-layer widths after channel pruning.

    Attributes:
        scale: upscaling factor (2, 3 or 4).
        num_feat: width of the residual stream.
        num_block: number of residual blocks.
        res_scale: residual scaling (1.0 for the baseline, 0.1 for the 32x256 model).
        img_range: the range the trained network saw (255 for the official releases).
        rgb_mean: per-channel mean subtracted before the head, in [0, 1] units.
        block_mid: width of the inner convolution of each block (None: ``num_feat``).
        up_feat: width after each PixelShuffle in the upsampler (None: ``num_feat``).
    """

    scale: int = 2
    num_feat: int = 64
    num_block: int = 16
    res_scale: float = 1.0
    img_range: float = 255.0
    rgb_mean: tuple[float, float, float] = DIV2K_MEAN
    block_mid: tuple[int, ...] | None = None
    up_feat: int | None = None

    def __post_init__(self) -> None:
        if self.scale not in (2, 3, 4):
            raise ValueError(f"EDSRConfig.scale must be 2, 3 or 4, got {self.scale!r}")
        if self.num_feat < 1 or self.num_block < 0:
            raise ValueError(f"EDSRConfig: num_feat={self.num_feat}, num_block={self.num_block} invalid")
        if not 0 < self.res_scale <= 1:  # it damps the residual branch (Szegedy et al. 2017; EDSR)
            raise ValueError(f"EDSRConfig.res_scale must be in (0, 1], got {self.res_scale}")
        if not (math.isfinite(self.img_range) and self.img_range > 0):
            raise ValueError(f"EDSRConfig.img_range must be finite and > 0, got {self.img_range}")
        if any(w < 1 for w in (*(self.block_mid or ()), self.up_width)):
            raise ValueError(f"EDSRConfig: every pruned width must be >= 1 (block_mid {self.block_mid}, "
                             f"up_feat {self.up_feat})")
        if self.block_mid is not None and len(self.block_mid) != self.num_block:
            raise ValueError(f"EDSRConfig.block_mid has {len(self.block_mid)} entries for {self.num_block} blocks")

    @property
    def mids(self) -> tuple[int, ...]:
        return self.block_mid if self.block_mid is not None else (self.num_feat,) * self.num_block

    @property
    def up_width(self) -> int:
        return self.up_feat if self.up_feat is not None else self.num_feat


def _conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class ResBlock(nn.Module):
    """conv-ReLU-conv with a scaled identity skip."""

    def __init__(self, num_feat: int, mid: int, res_scale: float) -> None:
        super().__init__()
        self.conv1 = _conv(num_feat, mid)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(mid, num_feat)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


def upsample_stages(scale: int) -> list[int]:
    """PixelShuffle factors used for ``scale``: x4 is two x2 stages, x2 and x3 one stage."""
    if scale & (scale - 1) == 0:
        return [2] * int(math.log2(scale))
    if scale == 3:
        return [3]
    raise ValueError(f"unsupported scale {scale}")


class EDSR(nn.Module):
    """EDSR on RGB in [0, 1]; the mean shift and 0..255 range of the official model are internal."""

    def __init__(self, cfg: EDSRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.scale = cfg.scale
        self.img_range = cfg.img_range
        self.register_buffer("mean", torch.tensor(cfg.rgb_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.conv_first = _conv(3, cfg.num_feat)
        self.body = nn.Sequential(*[ResBlock(cfg.num_feat, m, cfg.res_scale) for m in cfg.mids])
        self.conv_after_body = _conv(cfg.num_feat, cfg.num_feat)
        layers: list[nn.Module] = []
        cin = cfg.num_feat
        for r in upsample_stages(cfg.scale):
            layers += [_conv(cin, cfg.up_width * r * r), nn.PixelShuffle(r)]
            cin = cfg.up_width
        self.upsample = nn.Sequential(*layers)
        self.conv_last = _conv(cin, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = read_exactly(self.conv_first, (x - self.mean) * self.img_range)  # not in bf16 (exact_input)
        x = x + self.conv_after_body(self.body(x))
        x = self.conv_last(self.upsample(x))
        return x / self.img_range + self.mean


def _structure(model: EDSR) -> Structure:
    mods = list(model.upsample)
    ups = tuple((conv, shuffle.upscale_factor) for conv, shuffle in zip(mods[::2], mods[1::2]))
    inner = tuple(block.conv1 for block in model.body)
    return Structure(output_conv=model.conv_last, upsample_convs=ups, inner_convs=inner, relu_fed_convs=inner,
                     residual_blocks=tuple(model.body), feature_taps=tuple(model.body))


# ------------------------------------------------------------------ checkpoint layouts of its releases
def _edsr_config(sd: StateDict, mean: tuple[float, float, float], img_range: float = 255.0) -> EDSRConfig:
    """Read an EDSRConfig from a canonical (BasicSR-named) EDSR state dict."""
    num_feat = out_channels(sd, "conv_first.weight")
    num_block = count_indices(sd, r"body\.(\d+)\.conv1\.weight$")
    mids = tuple(out_channels(sd, f"body.{i}.conv1.weight") for i in range(num_block))
    stages = sorted(int(m.group(1)) for k in sd if (m := re.match(r"upsample\.(\d+)\.weight$", k)))
    up_feat = in_channels(sd, "conv_last.weight")
    if len(stages) == 2:
        scale = 4
    elif len(stages) == 1:
        r2 = out_channels(sd, f"upsample.{stages[0]}.weight") // up_feat
        scale = {4: 2, 9: 3}.get(r2, 0)
    else:
        scale = 0
    if scale == 0:
        raise ValueError(f"EDSR upsampler has {len(stages)} stages with shapes that match no scale of 2, 3 or 4")
    return EDSRConfig(
        scale=scale,
        num_feat=num_feat,
        num_block=num_block,
        # the official full model (32x256) trains with 0.1; the pipeline's own files record theirs
        res_scale=0.1 if num_feat >= 256 else 1.0,
        img_range=img_range,
        rgb_mean=mean,
        block_mid=mids if any(m != num_feat for m in mids) else None,
        up_feat=up_feat if up_feat != num_feat else None,
    )


def _mean_from(sd: StateDict, key: str | None, divisor: float = 1.0) -> tuple[float, float, float]:
    """Per-channel mean in [0, 1] units from a tensor (float32 noise rounded off), or the DIV2K mean."""
    if key is None or key not in sd:
        return DIV2K_MEAN
    vec = sd[key].double().flatten() / divisor
    return (round(float(vec[0]), 6), round(float(vec[1]), 6), round(float(vec[2]), 6))


def _edsr_range(sd: StateDict) -> float:
    """EDSR-PyTorch's ``--rgb_range`` (255 by default, 1 for some retrained models) from its mean shifts.

    ``add_mean`` is a 1x1 convolution with weight ``I / std`` and bias ``rgb_range * mean / std``; the
    canonical EDSR models std 1 only, so any other weight, or a ``sub_mean`` that is not its inverse, is
    refused rather than loaded wrong.
    """
    if "add_mean.bias" not in sd:
        return 255.0
    eye = torch.eye(3, dtype=torch.float64).view(3, 3, 1, 1)
    for name in ("sub_mean", "add_mean"):
        weight = sd.get(f"{name}.weight")
        if weight is not None and (weight.shape != eye.shape or not torch.allclose(weight.double(), eye, atol=1e-4)):
            raise ValueError(f"{name}.weight is not the identity: an rgb_std other than 1, or a mean shift trained "
                             "along with the model (EDSR-PyTorch before its November 2018 MeanShift fix), which this "
                             "loader cannot represent")
    bias = sd["add_mean.bias"].double().flatten()
    sub = sd.get("sub_mean.bias", -bias).double().flatten()
    if bias.numel() != 3 or sub.numel() != 3:
        raise ValueError(f"mean shifts of {bias.numel()} and {sub.numel()} values; an RGB EDSR has 3")
    if not torch.allclose(sub, -bias, atol=1e-3):
        raise ValueError("sub_mean.bias is not the negative of add_mean.bias (a mean shift trained along with the "
                         "model, as EDSR-PyTorch's before November 2018, cannot be represented)")
    return 255.0 if float(bias.abs().max()) > 1.5 else 1.0


def _edsr_official(sd: StateDict, scale: int | None) -> tuple[EDSRConfig, dict[str, torch.Tensor]]:
    n = count_indices(sd, r"body\.(\d+)\.body\.0\.weight$")
    rules = [
        (r"^head\.0\.", "conv_first."),
        (r"^body\.(\d+)\.body\.0\.", r"body.\1.conv1."),
        (r"^body\.(\d+)\.body\.2\.", r"body.\1.conv2."),
        (rf"^body\.{n}\.", "conv_after_body."),
        (r"^tail\.0\.(\d+)\.", r"upsample.\1."),
        (r"^tail\.1\.", "conv_last."),
    ]
    canon = {k: v for k, v in rename_keys(sd, rules).items() if not k.startswith(("sub_mean.", "add_mean."))}
    img_range = _edsr_range(sd)
    cfg = _edsr_config(canon, _mean_from(sd, "add_mean.bias", divisor=img_range), img_range)
    canon["mean"] = torch.tensor(cfg.rgb_mean).view(1, 3, 1, 1)
    return cfg, canon


def _edsr_basicsr(sd: StateDict, scale: int | None) -> tuple[EDSRConfig, dict[str, torch.Tensor]]:
    canon = dict(sd)
    cfg = _edsr_config(canon, _mean_from(sd, "mean"))
    canon["mean"] = torch.tensor(cfg.rgb_mean).view(1, 3, 1, 1)
    return cfg, canon


LAYOUTS: tuple[Layout, ...] = (
    Layout(
        "edsr-official", "edsr", "EDSR-PyTorch (head.0, body.N.body.0, tail.0.0, tail.1; 0..255 with mean shift)",
        has_keys("head.0.weight", "body.0.body.0.weight", "tail.0.0.weight", "tail.1.weight"), _edsr_official,
    ),
    Layout(
        "edsr-basicsr", "edsr", "BasicSR EDSR (conv_first, body.N.conv1, conv_after_body, upsample.0, conv_last)",
        has_keys("conv_first.weight", "body.0.conv1.weight", "conv_after_body.weight", "upsample.0.weight"), _edsr_basicsr,
    ),
)


ARCH = Architecture("edsr", EDSRConfig, EDSR, _structure, canonical_layout="edsr-basicsr", layouts=LAYOUTS)
