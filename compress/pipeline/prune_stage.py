"""The ``prune`` stage: baseline of a run -> pruned checkpoint, its ONNX export and a sidecar."""

from __future__ import annotations

import copy
import dataclasses
import gzip
from pathlib import Path

import torch
from torch import nn

from compress.core.checkpoint import LoadedModel, count_params, rebuild, save_checkpoint
from compress.core.data import random_patches
from compress.core.default_data import training_pairs
from compress.core.files import read_sidecar, removed_on_failure, sidecar_path, sidecar_quality, write_sidecar
from compress.core.infer import torch_upscaler
from compress.core.recipe import to_dict
from compress.core.checkpoint import count_macs
from compress.core.evaluate import eval_sets, psnr_delta_db, quality
from compress.pipeline.contract import baseline, path_of
from compress.core.train import fit, training_loss
from compress.core.train_config import TrainConfig, resolve_precision
from export.onnx_export import export_checked
from pruning.channel import Criterion, prune_channels
from pruning.magnitude import conv_weight_sparsity, prune_low_magnitude, strip_pruning
from pruning.recipe import PruneRecipe


def storage_bytes(model: nn.Module) -> dict[str, int]:
    """Sizes of the weights: dense FP32, and sparse as a bitmap of non-zeros plus FP32 values."""
    dense = sparse = 0
    for tensor in model.state_dict().values():
        n = tensor.numel()
        nnz = int((tensor != 0).sum())
        dense += 4 * n
        sparse += min(4 * n, (n + 7) // 8 + 4 * nnz)
    return {"dense_fp32_bytes": dense, "sparse_bitmap_bytes": sparse}


def gzip_bytes(path: Path) -> int:
    return len(gzip.compress(path.read_bytes(), compresslevel=9))


def loss_gradients(model: nn.Module, batch: tuple, teacher: nn.Module | None, cfg: TrainConfig) -> None:
    """Back-propagate one batch's fine-tuning loss (:func:`compress.core.train.training_loss`, in FP32:
    the HR term and, with a teacher, its distillation term) into ``.grad``, for gradient-based channel
    ranking. The distillation term alone would be exactly 0 while the student still equals its
    teacher, leaving Taylor scores 0 / 0."""
    device = next(model.parameters()).device
    lr, hr = (torch.from_numpy(a).to(device) for a in batch)
    model.train()
    model.zero_grad(set_to_none=True)
    training_loss(model, teacher, cfg, lr, hr, bf16=False).backward()
    model.eval()


def _fine_tune_channels(model, recipe, batches, scale, teacher) -> tuple[list[tuple[int, dict[str, int]]], float]:  # noqa: ANN001
    """Channel pruning events at the schedule's steps with fine-tuning segments between them."""
    criterion = Criterion(recipe.criterion)
    pruning = prune_channels(model, recipe.schedule, recipe.round_to, global_pruning=recipe.scope == "global",
                             inner_ratio=recipe.inner_final_sparsity, criterion=criterion,
                             upsample_ratio=recipe.upsample_final_sparsity)
    steps = recipe.schedule.pruning_steps()
    bounds = [*steps, recipe.train.steps]
    events, seconds = [], 0.0
    dense_channels = sum(pruning.widths().values())
    if steps and steps[0] > 0:  # begin_step > 0: the dense model fine-tunes first, as unstructured pruning does
        dense = dataclasses.replace(recipe.train, steps=steps[0], lr_schedule="constant", warmup_steps=0)
        seconds += fit(model, batches, dense, scale, teacher=teacher, desc="prune dense").seconds
    for i, start in enumerate(steps):
        if criterion.needs_gradients:
            loss_gradients(model, next(batches), teacher, recipe.train)
        pruning.step()
        model.zero_grad(set_to_none=True)
        kept = sum(pruning.widths().values())
        events.append({"step": start, "scheduled_trunk_ratio": round(recipe.schedule(start), 4),
                       "conv_channels_kept": kept, "conv_channels_removed": round(1 - kept / dense_channels, 4)})
        length = bounds[i + 1] - start
        if length <= 0:
            continue
        last = i == len(steps) - 1
        seg = dataclasses.replace(
            recipe.train, steps=length, lr_schedule=recipe.train.lr_schedule if last else "constant", warmup_steps=0
        )
        seconds += fit(model, batches, seg, scale, teacher=teacher, desc=f"prune seg {i + 1}/{len(steps)}").seconds
    return events, seconds


def run_prune(run: Path, recipe: PruneRecipe, name: str, extra_eval: list[str] | None = None) -> dict[str, object]:
    """Prune the run's baseline per ``recipe`` into ``<run>/10-prune/<name>/``."""
    src, loaded = baseline(run)
    base_side = read_sidecar(src)
    scale = loaded.scale
    model = loaded.model
    sets = eval_sets(scale, extra_eval)
    before = sidecar_quality(base_side, sidecar_path(src))
    missing = {k: v for k, v in sets.items() if k not in before}
    if missing:  # sets the baseline was not measured on when `make model` ran
        before.update(quality(torch_upscaler(model), missing, scale))
    storage_before = {**storage_bytes(model), "gzip_file_bytes": gzip_bytes(src)}
    teacher = copy.deepcopy(model).eval() if recipe.train.uses_teacher else None
    if teacher is not None:
        for p in teacher.parameters():
            p.requires_grad_(False)
    pairs = training_pairs(recipe.data, scale)
    batches = random_patches(pairs, scale, recipe.patch)
    if recipe.method == "unstructured":
        state = prune_low_magnitude(model, recipe.schedule, recipe.scope, recipe.skip_first_last)
        log = fit(model, batches, recipe.train, scale, hooks=[state.update], teacher=teacher, desc=f"prune {name}")
        detail = {"events": state.history, "overall_sparsity": round(state.overall_sparsity(), 4)}
        detail["layer_sparsity"] = {k: round(v, 4) for k, v in strip_pruning(state).items()}
        seconds = log.seconds
    else:
        events, seconds = _fine_tune_channels(model, recipe, batches, scale, teacher)
        detail = {"events": events}
    pruned = rebuild(model, scale)
    if recipe.method == "channel":
        detail["widths"] = {n: m.out_channels for n, m in pruned.model.named_modules() if isinstance(m, nn.Conv2d)}
    after = quality(torch_upscaler(pruned.model), sets, scale)  # before writing: no checkpoint waits on it
    ckpt = save_checkpoint(pruned.model, pruned.config, path_of(run, "pruned", name), metadata={"stage": "prune"})
    onnx_path = path_of(run, "pruned_onnx", name)
    with removed_on_failure(ckpt, onnx_path):
        _, par = export_checked(pruned.model, onnx_path, torch.rand(1, 3, 48, 40))
        record = _record(recipe, pruned, scale, ckpt, base_side, storage_before, seconds, after, before, detail)
        write_sidecar(ckpt, record, source=src)
        write_sidecar(onnx_path, {"stage": "prune-export", "format": "onnx-fp32", "parity_vs_pytorch": par.to_dict(),
                                  "params": record["params"], "macs_256x256": record["macs_256x256"]}, source=ckpt)
    return {"artifact": str(ckpt), "psnr_y_delta_db": record["psnr_y_delta_db"], "macs_256x256": record["macs_256x256"],
            "macs_256x256_before": record["macs_256x256_before"]}


def _record(recipe: PruneRecipe, pruned: LoadedModel, scale: int, ckpt: Path, base_side: dict, storage_before: dict,
            seconds: float, after: dict, before: dict, detail: dict) -> dict[str, object]:
    """The pruned checkpoint's sidecar record."""
    return {
        "stage": "prune",
        "method": recipe.method,
        "recipe": to_dict(recipe),
        "schedule": recipe.schedule.get_config(),
        "arch": pruned.arch,
        "scale": scale,
        "config": pruned.describe()["config"],
        "params": count_params(pruned.model),
        "params_before": base_side.get("params"),
        "macs_256x256": count_macs(pruned.model),
        "macs_256x256_before": base_side.get("macs_256x256"),
        "storage": {**storage_bytes(pruned.model), "gzip_file_bytes": gzip_bytes(ckpt)},
        "conv_weight_sparsity": round(conv_weight_sparsity(pruned.model), 4),
        "storage_before": storage_before,
        "speedup_note": "unstructured zeros do not run faster in dense runtimes (ONNX Runtime, TFLite); only storage shrinks"
        if recipe.method == "unstructured" else "channels are removed: dense runtimes do less work",
        "fine_tune_seconds": round(seconds, 1),
        "fine_tune_precision": resolve_precision(recipe.train.precision, "cpu"),  # what fit chose on this host
        "quality": after,
        "quality_before": before,
        "psnr_y_delta_db": psnr_delta_db(after, before),
        **detail,
    }
