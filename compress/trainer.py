"""Training a model from images: the ``train`` stage behind ``make train``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from compress.checkpoint import build_model, load_checkpoint, save_checkpoint
from compress.archs import EDSRConfig, RRDBConfig, SRCNNConfig
from compress.data import PatchConfig, list_images, load_pairs, random_patches
from compress.default_data import LOMIRI_MAX_SIDE, lomiri_paths, split_paths
from compress.errors import InputError
from compress.files import sha256_file, write_sidecar
from compress.recipe import to_dict
from compress.train import TrainConfig, fit


@dataclasses.dataclass(frozen=True)
class TrainRecipe:
    """What to train on which images.

    Attributes:
        arch: ``edsr``, ``rrdb`` or ``srcnn``.
        scale: SR factor.
        num_feat / num_block / num_grow_ch / res_scale: architecture size (canonical BasicSR names).
        data: ``default`` (packaged photographs plus Debian's wallpapers when installed) or a folder.
        max_side: shrink training images so their longer side is at most this (0: never).
        init_from: checkpoint whose matching tensors initialise the model (e.g. x2 body for x3/x4).
        patch: patch sampling.
        train: optimisation.
    """

    arch: str = "edsr"
    scale: int = 2
    num_feat: int = 64
    num_block: int = 16
    num_grow_ch: int = 32
    res_scale: float = 1.0
    data: str = "default"
    max_side: int = LOMIRI_MAX_SIDE
    init_from: str = ""
    patch: PatchConfig = PatchConfig()
    train: TrainConfig = TrainConfig()

    def __post_init__(self) -> None:
        if self.arch not in ("edsr", "rrdb", "srcnn"):
            raise ValueError(f"arch must be edsr, rrdb or srcnn, got {self.arch!r}")

    def model_config(self) -> EDSRConfig | RRDBConfig | SRCNNConfig:
        if self.arch == "edsr":
            return EDSRConfig(scale=self.scale, num_feat=self.num_feat, num_block=self.num_block, res_scale=self.res_scale)
        if self.arch == "rrdb":
            return RRDBConfig(scale=self.scale, num_feat=self.num_feat, num_block=self.num_block, num_grow_ch=self.num_grow_ch)
        return SRCNNConfig(scale=self.scale)


def training_images(data: str) -> list[Path]:
    """``default`` (packaged train split plus Debian's wallpapers when installed) or a folder's images."""
    if data == "default":
        return split_paths("train") + lomiri_paths()
    return list_images(data)


def validation_images(data: str) -> list[Path]:
    return split_paths("evaluation") if data == "default" else []


def init_matching(model: torch.nn.Module, path: str) -> list[str]:
    """Copy every tensor of ``path`` whose name and shape match; returns the names copied."""
    src = load_checkpoint(path).model.state_dict()
    dst = model.state_dict()
    copied = [k for k, v in src.items() if k in dst and dst[k].shape == v.shape]
    model.load_state_dict({**dst, **{k: src[k] for k in copied}})
    return copied


def train_model(recipe: TrainRecipe, out: Path, device: str = "cpu", recipe_file: str = "") -> dict[str, object]:
    """Train per ``recipe`` and write ``out`` (safetensors) with its sidecar."""
    files = training_images(recipe.data)
    pairs = load_pairs(files, recipe.scale, recipe.max_side or None)
    val = load_pairs(validation_images(recipe.data), recipe.scale)
    model = build_model(recipe.model_config())
    copied = init_matching(model, recipe.init_from) if recipe.init_from else []
    batches = random_patches(pairs, recipe.scale, recipe.patch)
    resume = out.with_name(out.name + ".resume.pt")
    log = fit(model, batches, recipe.train, recipe.scale, val, device=device, resume=resume, desc=f"train {out.stem}")
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise InputError(f"training diverged: NaN weights; lower train.lr in {recipe_file or 'the recipe'}")
    record = {
        "stage": "train",
        "recipe_file": recipe_file,
        "recipe": to_dict(recipe),
        "training_images": [{"file": str(p), "sha256": sha256_file(p)} for p in files],
        "initialised_tensors": len(copied),
        "device": device,
        "train_seconds": round(log.seconds, 1),
        "loss": log.loss[-20:],
        "val_psnr_y_db": log.val_psnr_y_db,
    }
    save_checkpoint(model, recipe.model_config(), out, metadata={"stage": "train", "recipe": to_dict(recipe)})
    write_sidecar(out, record)
    resume.unlink(missing_ok=True)
    return record


def dumps(record: dict[str, object]) -> str:
    return json.dumps(record, indent=2, default=str)
