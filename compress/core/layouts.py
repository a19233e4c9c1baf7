"""Checkpoint layouts of the public SR releases and their conversion to the canonical form.

One frozen :class:`Layout` record per layout, each with a pure ``detect(state_dict)`` predicate and a
pure ``to_canonical(state_dict)`` that returns the architecture config (hyperparameters read from
tensor shapes) and the state dict renamed to the canonical parameter names. :data:`LAYOUTS` is the one
explicit registry; order does not matter because exactly one layout may match (tested).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping

import torch

from compress.core.archs.edsr import DIV2K_MEAN, EDSRConfig
from compress.core.archs.rrdb import RRDBConfig
from compress.core.archs.srcnn import SRCNNConfig

StateDict = Mapping[str, torch.Tensor]
Config = EDSRConfig | RRDBConfig | SRCNNConfig


@dataclasses.dataclass(frozen=True)
class Layout:
    """A checkpoint layout: which architecture it holds, how to recognise it, how to convert it."""

    name: str
    arch: str
    description: str
    detect: Callable[[StateDict], bool]
    to_canonical: Callable[[StateDict, int | None], tuple[Config, dict[str, torch.Tensor]]]


def _rename(sd: StateDict, rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Apply the first matching rule to each key; two keys landing on one name is an error."""
    out: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    for key, value in sd.items():
        new = key
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, new)
            if n:
                break
        if new in out:
            raise ValueError(f"keys {source[new]!r} and {key!r} both map to {new!r}")
        out[new], source[new] = value, key
    return out


def _count(sd: StateDict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def _out(sd: StateDict, key: str) -> int:
    return int(sd[key].shape[0])


def _in(sd: StateDict, key: str) -> int:
    return int(sd[key].shape[1])


# --------------------------------------------------------------------------------------------- EDSR
def _edsr_config(sd: StateDict, mean: tuple[float, float, float], img_range: float = 255.0) -> EDSRConfig:
    """Read an EDSRConfig from a canonical (BasicSR-named) EDSR state dict."""
    num_feat = _out(sd, "conv_first.weight")
    num_block = _count(sd, r"body\.(\d+)\.conv1\.weight$")
    mids = tuple(_out(sd, f"body.{i}.conv1.weight") for i in range(num_block))
    stages = sorted(int(m.group(1)) for k in sd if (m := re.match(r"upsample\.(\d+)\.weight$", k)))
    up_feat = _in(sd, "conv_last.weight")
    if len(stages) == 2:
        scale = 4
    elif len(stages) == 1:
        r2 = _out(sd, f"upsample.{stages[0]}.weight") // up_feat
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
            raise ValueError(f"{name}.weight is not the identity (an rgb_std other than 1 is not supported)")
    bias = sd["add_mean.bias"].double().flatten()
    sub = sd.get("sub_mean.bias", -bias).double().flatten()
    if bias.numel() != 3 or sub.numel() != 3:
        raise ValueError(f"mean shifts of {bias.numel()} and {sub.numel()} values; an RGB EDSR has 3")
    if not torch.allclose(sub, -bias, atol=1e-3):
        raise ValueError("sub_mean.bias is not the negative of add_mean.bias")
    return 255.0 if float(bias.abs().max()) > 1.5 else 1.0


def _edsr_official(sd: StateDict, scale: int | None) -> tuple[Config, dict[str, torch.Tensor]]:
    n = _count(sd, r"body\.(\d+)\.body\.0\.weight$")
    rules = [
        (r"^head\.0\.", "conv_first."),
        (r"^body\.(\d+)\.body\.0\.", r"body.\1.conv1."),
        (r"^body\.(\d+)\.body\.2\.", r"body.\1.conv2."),
        (rf"^body\.{n}\.", "conv_after_body."),
        (r"^tail\.0\.(\d+)\.", r"upsample.\1."),
        (r"^tail\.1\.", "conv_last."),
    ]
    canon = {k: v for k, v in _rename(sd, rules).items() if not k.startswith(("sub_mean.", "add_mean."))}
    img_range = _edsr_range(sd)
    cfg = _edsr_config(canon, _mean_from(sd, "add_mean.bias", divisor=img_range), img_range)
    canon["mean"] = torch.tensor(cfg.rgb_mean).view(1, 3, 1, 1)
    return cfg, canon


def _edsr_basicsr(sd: StateDict, scale: int | None) -> tuple[Config, dict[str, torch.Tensor]]:
    canon = dict(sd)
    cfg = _edsr_config(canon, _mean_from(sd, "mean"))
    canon["mean"] = torch.tensor(cfg.rgb_mean).view(1, 3, 1, 1)
    return cfg, canon


# --------------------------------------------------------------------------------------------- RRDB
def _rrdb_config(sd: StateDict) -> RRDBConfig:
    """Read an RRDBConfig from a canonical (BasicSR-named) RRDBNet state dict."""
    if "conv_up2.weight" not in sd:
        raise ValueError("RRDBNet without conv_up2 (an x2-native or x1-native variant) is not supported")
    num_feat = _out(sd, "conv_first.weight")
    num_block = _count(sd, r"body\.(\d+)\.rdb1\.conv1\.weight$")
    grow = tuple(
        tuple(tuple(_out(sd, f"body.{i}.rdb{r}.conv{j}.weight") for j in range(1, 5)) for r in (1, 2, 3))
        for i in range(num_block)
    )
    num_grow_ch = grow[0][0][0] if num_block else 32
    uniform = all(g == num_grow_ch for block in grow for rdb in block for g in rdb)
    unshuffle_in = _in(sd, "conv_first.weight")
    scale = {3: 4, 12: 2, 48: 1}.get(unshuffle_in)
    if scale is None:
        raise ValueError(f"RRDBNet conv_first takes {unshuffle_in} input channels; expected 3, 12 or 48")
    up_feat = tuple(_out(sd, f"{name}.weight") for name in ("conv_up1", "conv_up2", "conv_hr"))
    return RRDBConfig(
        scale=scale,
        num_feat=num_feat,
        num_block=num_block,
        num_grow_ch=num_grow_ch,
        grow=None if uniform else grow,
        up_feat=up_feat if up_feat != (num_feat,) * 3 else None,  # type: ignore[arg-type]
    )


def _rrdb_basicsr(sd: StateDict, scale: int | None) -> tuple[Config, dict[str, torch.Tensor]]:
    canon = dict(sd)
    return _rrdb_config(canon), canon


def _rrdb_esrgan_new(sd: StateDict, scale: int | None) -> tuple[Config, dict[str, torch.Tensor]]:
    rules = [
        (r"^RRDB_trunk\.(\d+)\.RDB(\d)\.", r"body.\1.rdb\2."),
        (r"^trunk_conv\.", "conv_body."),
        (r"^upconv1\.", "conv_up1."),
        (r"^upconv2\.", "conv_up2."),
        (r"^HRconv\.", "conv_hr."),
    ]
    canon = _rename(sd, rules)
    return _rrdb_config(canon), canon


def _rrdb_esrgan_old(sd: StateDict, scale: int | None) -> tuple[Config, dict[str, torch.Tensor]]:
    n = _count(sd, r"model\.1\.sub\.(\d+)\.RDB1\.conv1\.0\.weight$")
    rules = [
        (r"^model\.0\.", "conv_first."),
        (r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.", r"body.\1.rdb\2.conv\3."),
        (rf"^model\.1\.sub\.{n}\.", "conv_body."),
        (r"^model\.3\.", "conv_up1."),
        (r"^model\.6\.", "conv_up2."),
        (r"^model\.8\.", "conv_hr."),
        (r"^model\.10\.", "conv_last."),
    ]
    canon = _rename(sd, rules)
    return _rrdb_config(canon), canon


# -------------------------------------------------------------------------------------------- SRCNN
def _srcnn(sd: StateDict, scale: int | None) -> tuple[Config, dict[str, torch.Tensor]]:
    if scale is None:
        raise ValueError("an SRCNN checkpoint does not record its scale: pass --scale (SCALE=) explicitly")
    cfg = SRCNNConfig(
        scale=scale,
        channels=_in(sd, "conv1.weight"),
        num_feat=_out(sd, "conv1.weight"),
        num_feat2=_out(sd, "conv2.weight"),
    )
    return cfg, dict(sd)


def _has(*keys: str) -> Callable[[StateDict], bool]:
    return lambda sd: all(k in sd for k in keys)


LAYOUTS: tuple[Layout, ...] = (
    Layout(
        "edsr-official", "edsr", "EDSR-PyTorch (head.0, body.N.body.0, tail.0.0, tail.1; 0..255 with mean shift)",
        _has("head.0.weight", "body.0.body.0.weight", "tail.0.0.weight", "tail.1.weight"), _edsr_official,
    ),
    Layout(
        "edsr-basicsr", "edsr", "BasicSR EDSR (conv_first, body.N.conv1, conv_after_body, upsample.0, conv_last)",
        _has("conv_first.weight", "body.0.conv1.weight", "conv_after_body.weight", "upsample.0.weight"), _edsr_basicsr,
    ),
    Layout(
        "rrdb-esrgan-old", "rrdb", "ESRGAN old arch (model.0, model.1.sub.N.RDB1.conv1.0, model.3, model.10)",
        _has("model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight", "model.10.weight"), _rrdb_esrgan_old,
    ),
    Layout(
        "rrdb-esrgan", "rrdb", "ESRGAN repo new arch / BSRGAN (RRDB_trunk, trunk_conv, upconv1, HRconv)",
        _has("conv_first.weight", "RRDB_trunk.0.RDB1.conv1.weight", "trunk_conv.weight", "HRconv.weight"),
        _rrdb_esrgan_new,
    ),
    Layout(
        "rrdb-basicsr", "rrdb", "BasicSR / Real-ESRGAN RRDBNet (body.N.rdb1.conv1, conv_body, conv_up1, conv_hr)",
        _has("conv_first.weight", "body.0.rdb1.conv1.weight", "conv_body.weight", "conv_hr.weight"), _rrdb_basicsr,
    ),
    Layout(
        "srcnn", "srcnn", "SRCNN (conv1 9x9, conv2, conv3; 1 channel = Y or 3 = RGB; scale must be given)",
        lambda sd: set(k.rsplit(".", 1)[0] for k in sd) == {"conv1", "conv2", "conv3"}
        and "conv1.weight" in sd and sd["conv1.weight"].ndim == 4 and sd["conv1.weight"].shape[-1] == 9,
        _srcnn,
    ),
)


def matching_layouts(sd: StateDict) -> list[Layout]:
    """All layouts whose predicate accepts ``sd`` (exactly one for any supported checkpoint)."""
    return [layout for layout in LAYOUTS if layout.detect(sd)]
