"""RRDBNet, the ESRGAN generator (Wang et al., "ESRGAN", ECCVW 2018; Real-ESRGAN, ICCVW 2021).

Canonical names follow BasicSR / Real-ESRGAN (``conv_first``, ``body.N.rdbK.convJ``, ``conv_body``,
``conv_up1``, ``conv_up2``, ``conv_hr``, ``conv_last``). The network upsamples x4 natively; x2 and x1
run through a pixel-unshuffle of the input, as Real-ESRGAN does. Inputs and outputs are RGB in [0, 1].
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from compress.core.archs.exact_input import read_exactly
from compress.core.archs.spec import Architecture, Structure
from compress.core.archs.layout import (
    Layout, StateDict, count_indices, has_keys, in_channels, out_channels, rename_keys,
)
from torch.nn import functional as F

GROWTH_CONVS = 4  # conv1..conv4 of a dense block grow the concatenation; conv5 returns to num_feat


@dataclasses.dataclass(frozen=True)
class RRDBConfig:
    """Hyperparameters of an RRDBNet, including per-layer growth widths after channel pruning.

    Attributes:
        scale: 4 (native), 2 or 1 (pixel-unshuffle of the input).
        num_feat: width of the trunk.
        num_block: number of RRDB blocks.
        num_grow_ch: growth channels of each dense convolution.
        grow: per block, per dense block (3), the 4 growth widths; None means ``num_grow_ch`` everywhere.
        up_feat: widths of the conv_up1, conv_up2 and conv_hr outputs (None: ``num_feat`` each).
    """

    scale: int = 4
    num_feat: int = 64
    num_block: int = 23
    num_grow_ch: int = 32
    grow: tuple[tuple[tuple[int, ...], ...], ...] | None = None
    up_feat: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.up_feat is not None and len(self.up_feat) != 3:
            raise ValueError(f"RRDBConfig.up_feat needs 3 widths (conv_up1, conv_up2, conv_hr), got {self.up_feat!r}")
        if self.scale not in (1, 2, 4):
            raise ValueError(f"RRDBConfig.scale must be 1, 2 or 4, got {self.scale!r}")
        if self.num_feat < 1 or self.num_grow_ch < 1 or self.num_block < 0:
            raise ValueError(f"RRDBConfig: num_feat={self.num_feat}, num_block={self.num_block}, "
                             f"num_grow_ch={self.num_grow_ch} invalid")
        widths = [w for block in self.grow or () for dense in block for w in dense] + list(self.up_feat or ())
        if any(w < 1 for w in widths):
            raise ValueError(f"RRDBConfig: every pruned width must be >= 1, got {min(widths)}")
        if self.grow is not None and len(self.grow) != self.num_block:
            raise ValueError(f"RRDBConfig.grow has {len(self.grow)} entries for {self.num_block} blocks")

    def block_grow(self, i: int) -> tuple[tuple[int, ...], ...]:
        if self.grow is not None:
            return self.grow[i]
        return ((self.num_grow_ch,) * GROWTH_CONVS,) * 3

    @property
    def up_widths(self) -> tuple[int, int, int]:
        return self.up_feat if self.up_feat is not None else (self.num_feat,) * 3

    @property
    def unshuffle(self) -> int:
        return {4: 1, 2: 2, 1: 4}[self.scale]


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class ResidualDenseBlock(nn.Module):
    """Five densely connected convolutions with a 0.2-scaled residual."""

    def __init__(self, num_feat: int, grow: tuple[int, ...]) -> None:
        super().__init__()
        cin = num_feat
        for j, g in enumerate(grow, start=1):
            setattr(self, f"conv{j}", _conv(cin, g))
            cin += g
        self.conv5 = _conv(cin, num_feat)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        for j in range(1, len(grow) + 2):  # ESRGAN's smaller initialisation (Wang et al. 2018, sec. 3.3):
            conv = getattr(self, f"conv{j}")  # Kaiming normal scaled by 0.1, zero bias, as BasicSR's RRDBNet
            nn.init.kaiming_normal_(conv.weight)
            with torch.no_grad():
                conv.weight.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            # conv1 reads x itself, not a one-tensor concatenation (a copy): QAT then sees one tensor,
            # quantized once, as ORT does (the exported graph has no Concat there either)
            feats.append(self.lrelu(conv(torch.cat(feats, 1) if len(feats) > 1 else x)))
        return x + self.conv5(torch.cat(feats, 1)) * 0.2


class Scale(nn.Module):
    """Multiplication by a constant, as a module so that QAT can requantize the product.

    ORT folds a constant ``Mul`` after a convolution into its weights (the dense blocks' 0.2), but an
    RRDB's 0.2 follows a residual sum, so its product runs as ``QLinearMul`` and is requantized.
    No parameters: the state dict and the exported graph are those of a plain ``x * factor``.
    """

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks and a 0.2-scaled residual."""

    def __init__(self, num_feat: int, grow: tuple[tuple[int, ...], ...]) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, grow[0])
        self.rdb2 = ResidualDenseBlock(num_feat, grow[1])
        self.rdb3 = ResidualDenseBlock(num_feat, grow[2])
        self.branch_scale = Scale(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch_scale(self.rdb3(self.rdb2(self.rdb1(x))))


class RRDBNet(nn.Module):
    """RRDBNet generator on RGB in [0, 1]."""

    def __init__(self, cfg: RRDBConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.scale = cfg.scale
        nf, (u1, u2, uh) = cfg.num_feat, cfg.up_widths
        self.conv_first = _conv(3 * cfg.unshuffle**2, nf)
        self.body = nn.Sequential(*[RRDB(nf, cfg.block_grow(i)) for i in range(cfg.num_block)])
        self.conv_body = _conv(nf, nf)
        self.conv_up1 = _conv(nf, u1)
        self.conv_up2 = _conv(u1, u2)
        self.conv_hr = _conv(u2, uh)
        self.conv_last = _conv(uh, 3)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        u = self.cfg.unshuffle
        if u > 1:  # reflect-pad to a multiple of the unshuffle factor, as Real-ESRGAN's inference does
            pad = (0, (u - w % u) % u, 0, (u - h % u) % u)  # reflection needs more pixels than it adds
            x = F.pad(x, pad, mode="reflect" if min(h, w) >= u else "replicate")
            x = F.pixel_unshuffle(x, u)
        feat = read_exactly(self.conv_first, x)  # never autocast's bf16 (compress.core.archs.exact_input)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        out = self.conv_last(self.lrelu(self.conv_hr(feat)))
        return out[..., : h * self.scale, : w * self.scale] if u > 1 else out


def _structure(model: RRDBNet) -> Structure:
    rdbs = [rdb for block in model.body for rdb in (block.rdb1, block.rdb2, block.rdb3)]
    inner = tuple(getattr(rdb, f"conv{j}") for rdb in rdbs for j in range(1, 5))
    return Structure(output_conv=model.conv_last, upsample_convs=(), inner_convs=inner, relu_fed_convs=(),
                     residual_blocks=tuple(rdbs) + tuple(model.body), feature_taps=tuple(model.body),
                     upsample_feature_convs=(model.conv_up1, model.conv_up2, model.conv_hr),
                     scaled_sums=tuple(block.branch_scale for block in model.body))


# ------------------------------------------------------------------ checkpoint layouts of its releases
def _rrdb_config(sd: StateDict) -> RRDBConfig:
    """Read an RRDBConfig from a canonical (BasicSR-named) RRDBNet state dict."""
    if "conv_up2.weight" not in sd:
        raise ValueError("RRDBNet without conv_up2 (an x2-native or x1-native variant) is not supported")
    num_feat = out_channels(sd, "conv_first.weight")
    num_block = count_indices(sd, r"body\.(\d+)\.rdb1\.conv1\.weight$")
    grow = tuple(
        tuple(tuple(out_channels(sd, f"body.{i}.rdb{r}.conv{j}.weight") for j in range(1, 5)) for r in (1, 2, 3))
        for i in range(num_block)
    )
    num_grow_ch = grow[0][0][0] if num_block else 32
    uniform = all(g == num_grow_ch for block in grow for rdb in block for g in rdb)
    unshuffle_in = in_channels(sd, "conv_first.weight")
    scale = {3: 4, 12: 2, 48: 1}.get(unshuffle_in)
    if scale is None:
        raise ValueError(f"RRDBNet conv_first takes {unshuffle_in} input channels; expected 3, 12 or 48")
    up_feat = tuple(out_channels(sd, f"{name}.weight") for name in ("conv_up1", "conv_up2", "conv_hr"))
    return RRDBConfig(
        scale=scale,
        num_feat=num_feat,
        num_block=num_block,
        num_grow_ch=num_grow_ch,
        grow=None if uniform else grow,
        up_feat=up_feat if up_feat != (num_feat,) * 3 else None,  # type: ignore[arg-type]
    )


def _rrdb_basicsr(sd: StateDict, scale: int | None) -> tuple[RRDBConfig, dict[str, torch.Tensor]]:
    canon = dict(sd)
    return _rrdb_config(canon), canon


def _rrdb_esrgan_new(sd: StateDict, scale: int | None) -> tuple[RRDBConfig, dict[str, torch.Tensor]]:
    rules = [
        (r"^RRDB_trunk\.(\d+)\.RDB(\d)\.", r"body.\1.rdb\2."),
        (r"^trunk_conv\.", "conv_body."),
        (r"^upconv1\.", "conv_up1."),
        (r"^upconv2\.", "conv_up2."),
        (r"^HRconv\.", "conv_hr."),
    ]
    canon = rename_keys(sd, rules)
    return _rrdb_config(canon), canon


def _rrdb_esrgan_old(sd: StateDict, scale: int | None) -> tuple[RRDBConfig, dict[str, torch.Tensor]]:
    n = count_indices(sd, r"model\.1\.sub\.(\d+)\.RDB1\.conv1\.0\.weight$")
    rules = [
        (r"^model\.0\.", "conv_first."),
        (r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.", r"body.\1.rdb\2.conv\3."),
        (rf"^model\.1\.sub\.{n}\.", "conv_body."),
        (r"^model\.3\.", "conv_up1."),
        (r"^model\.6\.", "conv_up2."),
        (r"^model\.8\.", "conv_hr."),
        (r"^model\.10\.", "conv_last."),
    ]
    canon = rename_keys(sd, rules)
    return _rrdb_config(canon), canon


LAYOUTS: tuple[Layout, ...] = (
    Layout(
        "rrdb-esrgan-old", "rrdb", "ESRGAN old arch (model.0, model.1.sub.N.RDB1.conv1.0, model.3, model.10)",
        has_keys("model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight", "model.10.weight"), _rrdb_esrgan_old,
    ),
    Layout(
        "rrdb-esrgan", "rrdb", "ESRGAN repo new arch / BSRGAN (RRDB_trunk, trunk_conv, upconv1, HRconv)",
        has_keys("conv_first.weight", "RRDB_trunk.0.RDB1.conv1.weight", "trunk_conv.weight", "HRconv.weight"),
        _rrdb_esrgan_new,
    ),
    Layout(
        "rrdb-basicsr", "rrdb", "BasicSR / Real-ESRGAN RRDBNet (body.N.rdb1.conv1, conv_body, conv_up1, conv_hr)",
        has_keys("conv_first.weight", "body.0.rdb1.conv1.weight", "conv_body.weight", "conv_hr.weight"), _rrdb_basicsr,
    ),
)


ARCH = Architecture("rrdb", RRDBConfig, RRDBNet, _structure, canonical_layout="rrdb-basicsr", layouts=LAYOUTS)
