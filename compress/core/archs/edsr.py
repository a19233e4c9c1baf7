"""EDSR (Lim et al., "Enhanced Deep Residual Networks for Single Image Super-Resolution", CVPRW 2017).

Canonical parameter names follow BasicSR (``conv_first``, ``body.N.conv1``, ``conv_after_body``,
``upsample.K``, ``conv_last``). Channel widths of every convolution are read from a config so that a
channel-pruned model rebuilds from its own tensor shapes.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from compress.core.archs.spec import Architecture, Structure

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
        for name in ("res_scale", "img_range"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"EDSRConfig.{name} must be finite and > 0, got {getattr(self, name)}")
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
        x = (x - self.mean) * self.img_range
        x = self.conv_first(x)
        x = x + self.conv_after_body(self.body(x))
        x = self.conv_last(self.upsample(x))
        return x / self.img_range + self.mean


def _structure(model: EDSR) -> Structure:
    mods = list(model.upsample)
    ups = tuple((conv, shuffle.upscale_factor) for conv, shuffle in zip(mods[::2], mods[1::2]))
    inner = tuple(block.conv1 for block in model.body)
    return Structure(output_conv=model.conv_last, upsample_convs=ups, inner_convs=inner, relu_fed_convs=inner,
                     residual_blocks=tuple(model.body), feature_taps=tuple(model.body))


ARCH = Architecture("edsr", EDSRConfig, EDSR, _structure, canonical_layout="edsr-basicsr")
