"""The training / fine-tuning loop shared by default-model training, pruning and QAT.

L1 loss (Lim et al., EDSR), Adam, cosine or step learning-rate decay, periodic validation PSNR-Y,
resumable checkpoints, CPU or CUDA. Stages plug in through ``hooks`` (called after every optimizer
step, e.g. to re-apply pruning masks) and an optional teacher for distillation.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from compress.data import ImagePair
from compress.evaluate import evaluate
from compress.files import atomic_path
from compress.infer import torch_upscaler

StepHook = Callable[[int], None]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    Attributes:
        steps: optimizer steps.
        lr: peak learning rate of Adam.
        lr_schedule: ``cosine`` (to ``lr * min_lr_ratio``) or ``step`` (halve at 50% and 75%).
        warmup_steps: linear warm-up steps.
        min_lr_ratio: final learning rate as a fraction of ``lr`` (cosine).
        val_every: validate every this many steps (0: only at the end).
        ckpt_every: write a resumable checkpoint every this many steps (0: never).
        distill_weight: weight of the L1 distance to the teacher's output (0: no distillation).
        grad_clip: max gradient norm (0: off).
        seed: torch seed.
    """

    steps: int = 1000
    lr: float = 2e-4
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01
    val_every: int = 0
    ckpt_every: int = 0
    distill_weight: float = 0.0
    grad_clip: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"TrainConfig.steps must be >= 0, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.lr_schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"TrainConfig.lr_schedule must be cosine, step or constant, got {self.lr_schedule!r}")
        if not 0 <= self.distill_weight <= 1:
            raise ValueError(f"TrainConfig.distill_weight must be in [0, 1], got {self.distill_weight}")


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate at ``step`` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant" or cfg.steps == 0:
        return cfg.lr
    if cfg.lr_schedule == "step":
        return cfg.lr * (0.5 ** (int(step >= cfg.steps * 0.5) + int(step >= cfg.steps * 0.75)))
    t = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


@dataclasses.dataclass
class TrainLog:
    """Losses and validation scores, one entry per logged step."""

    loss: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    val_psnr_y_db: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0


def _save_resume(path: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, tmp)


def fit(
    model: nn.Module,
    batches: Iterator[tuple[np.ndarray, np.ndarray]],
    cfg: TrainConfig,
    scale: int,
    val_pairs: Sequence[ImagePair] = (),
    hooks: Sequence[StepHook] = (),
    teacher: nn.Module | None = None,
    device: str = "cpu",
    resume: Path | None = None,
    params: Sequence[torch.nn.Parameter] | None = None,
    desc: str = "train",
) -> TrainLog:
    """Train ``model`` in place on ``batches`` of (lr, hr) NCHW arrays.

    Args:
        model: canonical model (RGB in [0, 1] to RGB in [0, 1]).
        batches: endless iterator of patch batches.
        cfg: optimisation settings.
        scale: SR factor, for validation.
        val_pairs: validation images; PSNR-Y is logged every ``cfg.val_every`` steps and at the end.
        hooks: called with the step number after each optimizer step.
        teacher: frozen model for output distillation (``cfg.distill_weight``).
        device: ``cpu`` or ``cuda``.
        resume: checkpoint file written every ``cfg.ckpt_every`` steps and read at start if present.
        params: parameters to optimise (default: all that require grad).
        desc: progress-bar label.
    """
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    trainable = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=cfg.lr, betas=(0.9, 0.99))
    start = 0
    if resume is not None and resume.is_file():
        state = torch.load(resume, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
    log = TrainLog()
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), desc=desc, initial=start, total=cfg.steps, mininterval=5, disable=None)
    running = 0.0
    for step in bar:
        lr_np, hr_np = next(batches)
        lr_t, hr_t = torch.from_numpy(lr_np).to(device), torch.from_numpy(hr_np).to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        out = model(lr_t)
        loss = nn.functional.l1_loss(out, hr_t)
        if teacher is not None and cfg.distill_weight > 0:
            with torch.no_grad():
                target = teacher(lr_t)
            loss = (1 - cfg.distill_weight) * loss + cfg.distill_weight * nn.functional.l1_loss(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        opt.step()
        for hook in hooks:
            hook(step + 1)
        running = 0.98 * running + 0.02 * loss.item() if step > start else loss.item()
        if (step + 1) % 50 == 0 or step + 1 == cfg.steps:
            log.loss.append((step + 1, running))
            bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr_at(cfg, step):.2e}")
        last = step + 1 == cfg.steps
        if val_pairs and ((cfg.val_every and (step + 1) % cfg.val_every == 0) or last):
            model.eval()
            psnr = evaluate(torch_upscaler(model, device), val_pairs, scale).psnr_y_db
            model.to(device).train()
            log.val_psnr_y_db.append((step + 1, psnr))
            tqdm.write(f"[{desc}] step {step + 1}: val PSNR-Y {psnr:.3f} dB")
        if resume is not None and cfg.ckpt_every and ((step + 1) % cfg.ckpt_every == 0 or last):
            _save_resume(resume, model, opt, step + 1)
    log.seconds = time.perf_counter() - t0
    model.eval()
    return log
