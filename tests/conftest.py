"""Shared fixtures: tiny canonical models and their state dicts renamed into each public layout."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compress.core.archs import EDSR, RRDBNet, SRCNN, EDSRConfig, RRDBConfig, SRCNNConfig

REPO = Path(__file__).resolve().parents[1]


def launch_env(**extra: str) -> dict[str, str]:
    """This environment for a child process that imports the repo, without an outer torchrun's rank
    variables (a test run under torchrun must not make its children join that job)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


EVALDATA = REPO.parent / "shared" / "evaldata"


def adam_steps(model, lr_side: int, scale: int, steps: int = 3, lr: float = 1e-2) -> None:  # noqa: ANN001
    """A few Adam steps of L1 to random targets at a large rate: moves every weight nothing holds."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        out = model(torch.rand(2, 3, lr_side, lr_side))
        loss = (out - torch.rand(2, 3, lr_side * scale, lr_side * scale)).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def tiny_edsr(scale: int = 2, seed: int = 0) -> EDSR:
    torch.manual_seed(seed)
    return EDSR(EDSRConfig(scale=scale, num_feat=16, num_block=2)).eval()


def tiny_pruned_edsr(scale: int = 4, seed: int = 0) -> EDSR:
    """A tiny EDSR with the widths channel pruning leaves: narrower trunk, block interiors and upsampler."""
    torch.manual_seed(seed)
    return EDSR(EDSRConfig(scale=scale, num_feat=12, num_block=2, block_mid=(8, 4), up_feat=8)).eval()


def tiny_rrdb(scale: int = 4, seed: int = 0) -> RRDBNet:
    torch.manual_seed(seed)
    return RRDBNet(RRDBConfig(scale=scale, num_feat=16, num_block=2, num_grow_ch=8)).eval()


def tiny_srcnn(scale: int = 3, channels: int = 1, seed: int = 0) -> SRCNN:
    torch.manual_seed(seed)
    return SRCNN(SRCNNConfig(scale=scale, channels=channels, num_feat=16, num_feat2=8)).eval()


def _rename(sd: dict[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        new = k
        for pat, rep in rules:
            new, n = re.subn(pat, rep, new)
            if n:
                break
        out[new] = v.clone()
    return out


def as_layout(model: torch.nn.Module, layout: str) -> dict[str, torch.Tensor]:
    """The model's weights written the way a public release of ``layout`` stores them."""
    sd = dict(model.state_dict())
    if layout == "edsr-basicsr":
        return {k: v.clone() for k, v in sd.items() if k != "mean"}
    if layout == "edsr-official":
        n = model.cfg.num_block
        mean = sd.pop("mean").flatten()
        out = _rename(sd, [
            (r"^conv_first\.", "head.0."), (r"^body\.(\d+)\.conv1\.", r"body.\1.body.0."),
            (r"^body\.(\d+)\.conv2\.", r"body.\1.body.2."), (r"^conv_after_body\.", f"body.{n}."),
            (r"^upsample\.(\d+)\.", r"tail.0.\1."), (r"^conv_last\.", "tail.1."),
        ])
        eye = torch.eye(3).view(3, 3, 1, 1)
        out.update({"sub_mean.weight": eye, "sub_mean.bias": -255.0 * mean,
                    "add_mean.weight": eye.clone(), "add_mean.bias": 255.0 * mean})
        return out
    if layout == "rrdb-basicsr":
        return {k: v.clone() for k, v in sd.items()}
    if layout == "rrdb-esrgan":
        return _rename(sd, [
            (r"^body\.(\d+)\.rdb(\d)\.", r"RRDB_trunk.\1.RDB\2."), (r"^conv_body\.", "trunk_conv."),
            (r"^conv_up1\.", "upconv1."), (r"^conv_up2\.", "upconv2."), (r"^conv_hr\.", "HRconv."),
        ])
    if layout == "rrdb-esrgan-old":
        n = model.cfg.num_block
        return _rename(sd, [
            (r"^conv_first\.", "model.0."), (r"^body\.(\d+)\.rdb(\d)\.conv(\d)\.", r"model.1.sub.\1.RDB\2.conv\3.0."),
            (r"^conv_body\.", f"model.1.sub.{n}."), (r"^conv_up1\.", "model.3."), (r"^conv_up2\.", "model.6."),
            (r"^conv_hr\.", "model.8."), (r"^conv_last\.", "model.10."),
        ])
    if layout == "srcnn":
        return {k: v.clone() for k, v in sd.items()}
    raise KeyError(layout)


LAYOUT_CASES = [
    ("edsr-official", lambda: tiny_edsr(2)),
    ("edsr-official", lambda: tiny_edsr(3)),
    ("edsr-official", lambda: tiny_edsr(4)),
    ("edsr-basicsr", lambda: tiny_edsr(2)),
    ("edsr-basicsr", lambda: tiny_edsr(4)),
    ("rrdb-basicsr", lambda: tiny_rrdb(4)),
    ("rrdb-basicsr", lambda: tiny_rrdb(2)),
    ("rrdb-basicsr", lambda: tiny_rrdb(1)),
    ("rrdb-esrgan", lambda: tiny_rrdb(4)),
    ("rrdb-esrgan-old", lambda: tiny_rrdb(4)),
    ("srcnn", lambda: tiny_srcnn(3, 1)),
    ("srcnn", lambda: tiny_srcnn(2, 3)),
]


def write_image(path: Path, size: tuple[int, int] = (64, 48), mode: str = "RGB", seed: int = 0) -> Path:
    """A smooth random image (so bicubic and SR are meaningful) saved as PNG."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.random((h // 8 + 2, w // 8 + 2, 3))
    img = Image.fromarray((base * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    return path


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        write_image(folder / f"img{i}.png", (96 + 8 * i, 80), seed=i)
    return folder


@pytest.fixture
def int8_models(tmp_path: Path) -> dict[str, Path]:
    """A tiny EDSR x2 and RRDB x4, each exported, MinMax-calibrated and quantized by ORT (INT8 QDQ)."""
    from compress.core.data import list_images
    from export.onnx_export import export_onnx
    from quantization.calibration import CalibrationConfig, PatchCalibrationReader
    from quantization.ptq import Calibration, calibrate, preprocess, quantize

    folder = tmp_path / "calib"
    folder.mkdir()
    write_image(folder / "c.png", (96, 80), seed=3)
    out = {}
    for name, model in (("edsr", tiny_edsr(2)), ("rrdb", tiny_rrdb(4))):
        pre = preprocess(export_onnx(model, tmp_path / f"{name}.onnx"), tmp_path / f"{name}_pre.onnx")
        reader = PatchCalibrationReader(list_images(folder), model.scale, CalibrationConfig(lr_patch=16, patches_per_image=2))
        calibrate(pre, reader, Calibration.MINMAX, tmp_path / f"{name}.json")
        out[name] = quantize(pre, tmp_path / f"{name}_int8.onnx", tmp_path / f"{name}.json", Calibration.MINMAX)
    return out


def seven_bit_weights(src: Path, dst: Path) -> Path:
    """``src`` with every S8 convolution weight halved into [-63, 63] (another model, its scales kept): 7-bit
    weights, which ONNX Runtime's INT8 convolution paths compute alike with or without VNNI, each channel
    with room to move one step either way."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.INT8 and len(init.dims) == 4:
            q = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(np.clip(np.trunc(q / 2), -63, 63).astype(np.int8), init.name))
    onnx.save(model, str(dst))
    return dst
