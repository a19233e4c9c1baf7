"""SRCNN (Dong et al., "Image Super-Resolution Using Deep Convolutional Networks", TPAMI 2016).

The 9-5-5 network runs on a bicubic-upsampled input. ``channels=1`` is the common Y-channel variant
(the network sees BT.601 luma; Cb/Cr are bicubic), ``channels=3`` runs on RGB. Parameter names follow
the most used PyTorch implementation (``conv1``, ``conv2``, ``conv3``).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from compress.core.archs.exact_input import no_autocast, read_exactly
from compress.core.archs.spec import Architecture, Structure
from compress.core.archs.layout import Layout, StateDict, in_channels, out_channels
from compress.core.color import rgb_to_ycbcr, ycbcr_to_rgb
from compress.core.resize import bicubic_up


@dataclasses.dataclass(frozen=True)
class SRCNNConfig:
    """Hyperparameters of SRCNN.

    Attributes:
        scale: upscaling factor of the bicubic pre-upsampling (2, 3 or 4).
        channels: 1 (Y only) or 3 (RGB).
        num_feat: width of conv1 (64 in the paper).
        num_feat2: width of conv2 (32 in the paper).
    """

    scale: int = 2
    channels: int = 1
    num_feat: int = 64
    num_feat2: int = 32

    def __post_init__(self) -> None:
        if self.scale not in (2, 3, 4):
            raise ValueError(f"SRCNNConfig.scale must be 2, 3 or 4, got {self.scale!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"SRCNNConfig.channels must be 1 or 3, got {self.channels!r}")
        if self.num_feat < 1 or self.num_feat2 < 1:
            raise ValueError(f"SRCNNConfig: num_feat={self.num_feat}, num_feat2={self.num_feat2} invalid")


class SRCNN(nn.Module):
    """SRCNN mapping LR RGB in [0, 1] to HR RGB in [0, 1] (the bicubic upsampling is part of the graph)."""

    def __init__(self, cfg: SRCNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.scale = cfg.scale
        self.conv1 = nn.Conv2d(cfg.channels, cfg.num_feat, 9, padding=4)
        self.conv2 = nn.Conv2d(cfg.num_feat, cfg.num_feat2, 5, padding=2)
        self.conv3 = nn.Conv2d(cfg.num_feat2, cfg.channels, 5, padding=2)
        self.relu = nn.ReLU(inplace=True)

    def _net(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.relu(self.conv2(self.relu(read_exactly(self.conv1, x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with no_autocast(x):  # the interpolation and colour conversion read the image: not in bf16 (exact_input)
            up = bicubic_up(x, self.cfg.scale)  # MATLAB / PIL bicubic (a = -0.5), as SRCNN was trained
            ycc = rgb_to_ycbcr(up) if self.cfg.channels == 1 else up
        if self.cfg.channels == 3:
            return self._net(up)
        y = self._net(ycc[:, :1])
        with no_autocast(y):  # the untouched chroma goes back exactly
            return ycbcr_to_rgb(torch.cat([y.to(ycc.dtype), ycc[:, 1:]], 1))


def _structure(model: SRCNN) -> Structure:
    hidden = (model.conv1, model.conv2)
    return Structure(output_conv=model.conv3, upsample_convs=(), inner_convs=hidden, relu_fed_convs=hidden,
                     residual_blocks=(), feature_taps=hidden)


# ------------------------------------------------------------------ checkpoint layouts of its releases
def _srcnn(sd: StateDict, scale: int | None) -> tuple[SRCNNConfig, dict[str, torch.Tensor]]:
    if scale is None:
        raise ValueError("an SRCNN checkpoint does not record its scale: pass --scale (SCALE=) explicitly")
    cfg = SRCNNConfig(
        scale=scale,
        channels=in_channels(sd, "conv1.weight"),
        num_feat=out_channels(sd, "conv1.weight"),
        num_feat2=out_channels(sd, "conv2.weight"),
    )
    return cfg, dict(sd)


LAYOUTS: tuple[Layout, ...] = (
    Layout(
        "srcnn", "srcnn", "SRCNN (conv1 9x9, conv2, conv3; 1 channel = Y or 3 = RGB; scale must be given)",
        lambda sd: set(k.rsplit(".", 1)[0] for k in sd) == {"conv1", "conv2", "conv3"}
        and "conv1.weight" in sd and sd["conv1.weight"].ndim == 4 and sd["conv1.weight"].shape[-1] == 9,
        _srcnn,
    ),
)


ARCH = Architecture("srcnn", SRCNNConfig, SRCNN, _structure, canonical_layout="srcnn", layouts=LAYOUTS)
