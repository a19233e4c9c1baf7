"""Training a model from images: the ``train`` stage behind ``make train``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import torch

from compress.core.checkpoint import build_model, count_params, load_checkpoint, save_checkpoint
from compress.core.cpu import host_cpu
from compress.core.distributed import is_writer, ranks
from compress.core.evaluate import evaluate
from compress.core.infer import torch_upscaler
from compress.core.archs import ARCHITECTURES, architecture
from compress.core.data import PatchConfig, list_images, load_pairs, random_patches
from compress.core.default_data import WALLPAPER_MAX_SIDE, training_images, training_pairs, validation_paths
from compress.core.errors import InputError, first_line
from compress.core.files import (read_json_object, read_sidecar, replace_pair, sha256_file, sidecar_path,
                                 write_json_atomic)
from compress.core.recipe import shown, to_dict
from compress.core.train import fit
from compress.core.train_config import TrainConfig
from compress.pipeline.history import FINISHED_UTC_FORMAT


HYPERPARAMETERS = ("num_feat", "num_block", "num_grow_ch", "res_scale")
MAX_SIZE = {"num_feat": 1024, "num_block": 256, "num_grow_ch": 1024}  # 4x EDSR's 256 features, 8x its 32 blocks
MAX_PARAMS = 100_000_000  # together: EDSR (43 M) and ESRGAN's RRDBNet (16.7 M) fit; 1024 x 256 blocks (4.9 G) does not


@dataclasses.dataclass(frozen=True)
class TrainRecipe:
    """What to train on which images.

    Attributes:
        arch: ``edsr``, ``rrdb`` or ``srcnn``.
        scale: SR factor.
        num_feat / num_block / num_grow_ch / res_scale: architecture size (canonical BasicSR names).
        data: ``default`` (packaged photographs plus Debian's wallpapers when installed) or a folder.
        max_side: shrink training images so their longer side is at most this (0: never; the default
            data's wallpapers are shrunk to ``wallpaper_max_side`` in any case).
        wallpaper_max_side: the longest side the default data's Debian wallpapers are shrunk to (their
            JPEG noise must shrink below a pixel; 1200 by default, ``WALLPAPER_MAX_SIDE``).
        val_data: folder of validation images, which choose checkpoints (default: the packaged images in
            no benchmark and never trained on, when ``data`` is ``default``, else none).
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
    max_side: int = 0
    wallpaper_max_side: int = WALLPAPER_MAX_SIDE
    val_data: str = ""
    init_from: str = ""
    patch: PatchConfig = PatchConfig()
    train: TrainConfig = TrainConfig()

    def __post_init__(self) -> None:
        names = [a.name for a in ARCHITECTURES]
        if self.arch not in names:
            raise ValueError(f"arch must be one of {names}, got {shown(self.arch)}")
        for name in ("distill_weight", "feature_distill_weight"):
            if getattr(self.train, name):
                raise ValueError(f"train.{name} must be 0 in a training recipe (training has no teacher), "
                                 f"got {getattr(self.train, name)}")
        if not self.data:
            raise ValueError("data must be 'default' or a folder, got ''")
        if self.train.steps < 1:
            raise ValueError(f"train.steps must be >= 1 in a training recipe, got {self.train.steps}")
        if self.max_side < 0:
            raise ValueError(f"max_side must be >= 0, got {self.max_side}")
        if not 64 <= self.wallpaper_max_side <= 8192:
            raise ValueError(f"wallpaper_max_side must be 64..8192, got {self.wallpaper_max_side}")
        self._check_hyperparameters()
        with torch.device("meta"):  # the architecture's own checks of scale and widths, and its size, unallocated
            params = count_params(build_model(self.model_config()))
        if params > MAX_PARAMS:
            raise ValueError(f"num_feat {self.num_feat}, num_block {self.num_block}, num_grow_ch {self.num_grow_ch} "
                             f"give {params / 1e6:.0f} M parameters, over {MAX_PARAMS // 10**6} M")

    def _check_hyperparameters(self) -> None:
        """Sizes within :data:`MAX_SIZE`; a hyperparameter the architecture lacks left at its default."""
        for name, most in MAX_SIZE.items():
            if not 0 <= getattr(self, name) <= most:
                raise ValueError(f"{name} must be in 0..{most}, got {getattr(self, name)}")
        has = {f.name for f in dataclasses.fields(architecture(self.arch).config_type)}
        for f in dataclasses.fields(self):
            if f.name in HYPERPARAMETERS and f.name not in has and getattr(self, f.name) != f.default:
                raise ValueError(f"{f.name} is no hyperparameter of {self.arch} (it has "
                                 f"{sorted(has & set(HYPERPARAMETERS))}), got {getattr(self, f.name)!r}")

    def model_config(self) -> object:
        """The architecture's config from the recipe's hyperparameters (those it has)."""
        return architecture(self.arch).config(scale=self.scale, **{k: getattr(self, k) for k in HYPERPARAMETERS})


def validation_images(data: str, val_data: str = "") -> list[Path]:
    """``val_data``'s images, else :func:`~compress.core.default_data.validation_paths` for the
    default data, else none."""
    if val_data:
        return list_images(val_data)
    return validation_paths() if data == "default" else []


def init_matching(model: torch.nn.Module, path: str, arch: str) -> list[str]:
    """Copy every tensor of ``path`` whose name and shape match; returns the names copied.

    Raises:
        InputError: ``path`` holds another architecture than ``arch`` (a few names, such as the head,
            could match by chance and the rest would train from scratch unnoticed).
    """
    loaded = load_checkpoint(path)
    if loaded.arch != arch:
        raise InputError(f"{path}: init_from holds a {loaded.arch} checkpoint, and the recipe trains {arch}")
    src = loaded.model.state_dict()
    dst = model.state_dict()
    copied = [k for k, v in src.items() if k in dst and dst[k].shape == v.shape]
    model.load_state_dict({**dst, **{k: src[k] for k in copied}})
    return copied


@dataclasses.dataclass(frozen=True)
class Continuation:
    """Warm start from a trained checkpoint, kept only if training validates better.

    Attributes:
        source: the checkpoint every tensor is loaded from (its architecture must match the recipe's).
        val_psnr_y_db: its PSNR-Y on the recipe's validation images, measured before training.
        history: the training runs that produced ``source`` (from its sidecar), oldest first.
    """

    source: Path
    val_psnr_y_db: float
    history: tuple[dict[str, object], ...]


def warm_start(model: torch.nn.Module, source: str | Path, scale: int, val_files: list[Path]) -> None:
    """Load all of ``source`` into ``model`` (before any image is decoded, so a wrong checkpoint is
    named at once); continuing needs ``val_files`` to decide whether to keep the result."""
    state = load_checkpoint(source, scale).model.state_dict()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"{source}: does not match the recipe's architecture "
                         f"({first_line(exc, last=True)})") from exc
    if not val_files:
        raise InputError(f"{source}: continuing needs validation images to decide whether to keep the result")


def start_continuation(model: torch.nn.Module, source: str | Path, val, scale: int) -> Continuation:
    """Score ``model``, warm-started from ``source`` (:func:`warm_start`), on ``val`` (image pairs)."""
    source = Path(source)
    psnr = evaluate(torch_upscaler(model.eval()), val, scale).psnr_y_db
    previous: dict[str, object] = {}
    if sidecar_path(source).is_file():
        previous = read_sidecar(source)
    history = previous.get("history") or ([_summary(previous)] if previous else [])
    if not (isinstance(history, list) and all(isinstance(run, dict) for run in history)):
        raise InputError(f"{sidecar_path(source)}: history is not a list of training runs")
    return Continuation(source, psnr, tuple(_keep_carried(history, previous.get("training_images"))))


def _keep_carried(history: list[dict], images: object) -> list[dict]:
    """``history`` with the ``carried_as`` notes of the last run's training images (added to a sidecar by
    hand where an image reached the training machine in another form) kept in that run's entry, since the
    next run's sidecar lists only its own images."""
    carried = {str(img["file"]): img["carried_as"] for img in images if isinstance(img, dict)
               and "carried_as" in img and "file" in img} if isinstance(images, list) else {}
    if not carried or not history:
        return history
    before = history[-1].get("carried_as")
    return [*history[:-1], {**history[-1], "carried_as": {**(before if isinstance(before, dict) else {}), **carried}}]


def _summary(record: dict[str, object]) -> dict[str, object]:
    """What one training run adds to a checkpoint's history."""
    keys = ("recipe_file", "device", "gpu", "precision", "cpu", "steps_done", "train_seconds", "finished_utc",
            "val_psnr_y_db", "kept_step", "continued_from", "segments")
    out = {k: record[k] for k in keys if k in record}
    if "steps_done" not in out and isinstance(record.get("recipe"), dict):
        out["steps_done"] = record["recipe"].get("train", {}).get("steps")
    return out


def claim_resume(resume: Path, recipe: TrainRecipe, continue_from: str | Path | None) -> Path:
    """Tie ``resume`` (the interrupted-run checkpoint next to the output) to this training: its recipe and
    start weights, recorded in ``<resume>.json``. A resume file another training left is refused, not
    silently continued (its step count and weights would replace this run's start).

    Returns:
        The record's path (removed with the resume file when the training ends).
    """
    meta = resume.with_name(resume.name + ".json")
    starts = {"init_from": recipe.init_from, "continue_from": str(continue_from or "")}
    key = {"recipe": to_dict(recipe), **starts,
           **{f"{k}_sha256": sha256_file(v) for k, v in starts.items() if v and Path(v).is_file()}}
    fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    if resume.is_file():
        if not meta.is_file() or read_json_object(meta).get("fingerprint") != fingerprint:
            raise InputError(f"{resume}: left by an interrupted training with another recipe or start weights; "
                             "rerun that training to finish it, or delete the file to start afresh")
    elif is_writer():
        write_json_atomic(meta, {"fingerprint": fingerprint, **starts})
    return meta


def train_model(recipe: TrainRecipe, out: Path, device: str = "cpu", recipe_file: str = "",
                continue_from: str | Path | None = None) -> dict[str, object]:
    """Train per ``recipe`` and write ``out`` (safetensors) with its sidecar.

    With ``continue_from``, every tensor starts from that checkpoint and ``out`` is written only if
    the final validation PSNR-Y (with ``train.keep_best``: the best check's, whose weights it writes)
    beats the checkpoint's; otherwise nothing is written (``written`` is false in the returned record),
    so repeated runs can only improve a shipped model.
    """
    torch.manual_seed(recipe.train.seed)  # the initial weights too follow the recipe's (or --seed's) seed
    model = build_model(recipe.model_config())
    copied = init_matching(model, recipe.init_from, recipe.arch) if recipe.init_from and not continue_from else []
    val_files = validation_images(recipe.data, recipe.val_data)
    if continue_from:
        warm_start(model, continue_from, recipe.scale, val_files)
    files = training_images(recipe.data)
    pairs = training_pairs(recipe.data, recipe.scale, recipe.max_side, recipe.wallpaper_max_side)
    val = load_pairs(val_files, recipe.scale)
    cont = start_continuation(model, continue_from, val, recipe.scale) if continue_from else None
    batches = random_patches(pairs, recipe.scale, recipe.patch)
    resume = out.with_name(out.name + ".resume.pt")
    meta = claim_resume(resume, recipe, continue_from)
    try:
        log = fit(model, batches, recipe.train, recipe.scale, val, device=device, resume=resume,
                  desc=f"train {out.stem}")
    except BaseException:
        if is_writer() and not resume.is_file():  # nothing to resume from: the record of this start goes too
            meta.unlink(missing_ok=True)
        raise
    if not is_writer():  # under torchrun rank 0 alone validates, decides and writes
        return {"stage": "train", "written": False, "rank": ranks().rank, "steps_done": log.steps_done}
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        resume.unlink(missing_ok=True)  # it may hold the diverged weights: a rerun starts afresh
        meta.unlink(missing_ok=True)
        raise InputError(f"training diverged: NaN weights; lower train.lr in {recipe_file or 'the recipe'} "
                         "(or give a lower --lr); its resume file was removed")
    record: dict[str, object] = {
        "stage": "train",
        "recipe_file": recipe_file,
        "recipe": to_dict(recipe),
        "training_images": [{"file": str(p), "sha256": sha256_file(p)} for p in files],
        "initialised_tensors": len(copied),
        "device": device,
        **({"gpu": torch.cuda.get_device_name(device)} if device.startswith("cuda") else {}),
        "precision": log.precision,
        "memory_format": log.memory_format,
        "cpu": host_cpu().describe(),
        "segments": log.segments,  # which steps ran in which precision where (a resumed run may differ)
        "steps_done": log.steps_done,
        "train_seconds": round(log.seconds, 1),
        "finished_utc": time.strftime(FINISHED_UTC_FORMAT, time.gmtime()),  # when the training loop ended
        "loss": log.loss[-20:],
        "val_psnr_y_db": log.val_psnr_y_db,
        "validation_images": [p.name for p in val_files],
        **({"kept_step": log.kept_step} if recipe.train.keep_best else {}),
    }
    final = log.final_val_psnr_y_db()  # what the continuation guard judges: the kept check's, else the last
    if log.val_psnr_y_db:
        record["final_val_psnr_y_db"] = final
    if cont is not None:
        record["continued_from"] = {"file": str(cont.source), "sha256": sha256_file(cont.source),
                                    "val_psnr_y_db": round(cont.val_psnr_y_db, 4)}
        record["history"] = [*cont.history, _summary(record)]
        record["written"] = final > cont.val_psnr_y_db
        resume.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        if not record["written"]:
            return record
    staged = out.with_name(f".{out.name}.{os.getpid()}.new")  # weights and sidecar replace the old pair together:
    try:  # ``out`` is often the checkpoint the run continued from
        save_checkpoint(model, recipe.model_config(), staged, metadata={"stage": "train", "recipe": to_dict(recipe)})
        replace_pair(staged, out, record)
    finally:
        for leftover in (staged, sidecar_path(staged)):
            leftover.unlink(missing_ok=True)
    resume.unlink(missing_ok=True)
    meta.unlink(missing_ok=True)
    record["written"] = True
    return record
def dumps(record: dict[str, object]) -> str:
    return json.dumps(record, indent=2, default=str)
