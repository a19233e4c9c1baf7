"""Training settings: the frozen :class:`TrainConfig`, the precision it resolves to and its learning-rate schedule.

Pure data and maths, read by :mod:`compress.core.train` (the loop) and by every recipe that fine-tunes
(pruning, QAT, default-model training).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from compress.core.cpu import host_cpu

PRECISIONS = ("auto", "bf16", "fp32")
OPTIMIZERS = ("adam", "sgd")
LOSS_NAMES = ("l1", "mse")
MAX_STEPS = 10**9  # beyond any budget (a GPU recipe asks for 10**6 and stops on its wall time)
MAX_LR = 1.0  # an SR network trains at 1e-5..1e-3; far above, the optimizer overflows (1e300)


def resolve_precision(setting: str, device: str, cpu_bf16: bool | None = None) -> str:
    """The precision ``fit`` trains in: ``bf16`` or ``fp32``.

    Args:
        setting: ``auto``, ``bf16`` or ``fp32``.
        device: ``cpu`` or ``cuda``.
        cpu_bf16: whether the CPU runs bf16 natively (default: read from this host's flags).
    """
    if setting not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {setting!r}")
    if setting != "auto":
        return setting
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    native = host_cpu().native_bf16 if cpu_bf16 is None else cpu_bf16
    return "bf16" if native else "fp32"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    Attributes:
        steps: optimizer steps.
        lr: peak learning rate.
        optimizer: ``adam`` (betas 0.9 / 0.99, as BasicSR; EDSR's code uses 0.999) or ``sgd``
            (momentum 0.9). Adam moves every weight
            by about ``lr`` per step whatever its gradient; SGD moves each weight in proportion to its
            gradient, so a loss that is already near its minimum (distillation of a fake-quantized model
            from its own FP32 start) moves the weights only as far as the remaining error asks.
        loss: pixel loss to the HR patch and to the teacher: ``l1`` (EDSR's; its optimum is the
            median, so an L1-trained model can sit a fraction of a grey level off the mean) or ``mse``
            (what PSNR measures; for PSNR-oriented fine-tuning of an L1-trained model).
        lr_schedule: ``cosine`` (to ``lr * min_lr_ratio``), ``step`` (halve at 50% and 75%) or
            ``constant``.
        warmup_steps: linear warm-up steps.
        min_lr_ratio: final learning rate as a fraction of ``lr`` (cosine).
        val_every: validate every this many steps (0: only at the end).
        ckpt_every: write a resumable checkpoint every this many steps (0: never).
        distill_weight: weight of the distance (``loss``) to the teacher's output (0: no distillation).
        feature_distill_weight: weight of the intermediate-feature term added to the loss (relative L1
            at the trunk's block outputs, :class:`compress.core.distill.FeatureDistiller`; needs a teacher).
        grad_clip: max gradient norm (0: off).
        seed: torch seed.
        precision: ``auto`` (bf16 autocast where the device runs bf16 natively, else FP32), ``bf16``
            or ``fp32``.
        max_minutes: wall-time budget (0: none): training stops when it is spent, and the cosine /
            step schedule runs over whichever of steps and time is further along.
        ema_decay: keep an exponential moving average of the trained weights with this decay per step
            (:class:`compress.core.ema.WeightAverage`; 0: off); validation scores the average and the
            model ends holding it. Not with step hooks (pruning masks would not hold in the average).
        keep_best: end with the weights of the validation check (every ``val_every`` steps and the
            last step) that scored best, not the last step's (:class:`compress.core.best_weights.BestWeights`;
            the log records its step). Needs ``val_every``; not with step hooks (an early check of a
            pruning schedule is less sparse than its end).
    """

    steps: int = 1000
    lr: float = 2e-4
    lr_schedule: str = "cosine"
    optimizer: str = "adam"
    loss: str = "l1"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01
    val_every: int = 0
    ckpt_every: int = 0
    distill_weight: float = 0.0
    feature_distill_weight: float = 0.0
    grad_clip: float = 0.0
    seed: int = 0
    precision: str = "auto"
    max_minutes: float = 0.0
    ema_decay: float = 0.0
    keep_best: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.steps <= MAX_STEPS:
            raise ValueError(f"TrainConfig.steps must be in 0..{MAX_STEPS}, got {self.steps}")
        if not 0 < self.lr <= MAX_LR:
            raise ValueError(f"TrainConfig.lr must be in (0, {MAX_LR}], got {self.lr}")
        if self.lr_schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"TrainConfig.lr_schedule must be cosine, step or constant, got {self.lr_schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.loss not in LOSS_NAMES:
            raise ValueError(f"TrainConfig.loss must be one of {LOSS_NAMES}, got {self.loss!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not (math.isfinite(self.max_minutes) and self.max_minutes >= 0):
            raise ValueError(f"TrainConfig.max_minutes must be finite and >= 0, got {self.max_minutes}")
        if not 0 <= self.distill_weight <= 1:
            raise ValueError(f"TrainConfig.distill_weight must be in [0, 1], got {self.distill_weight}")
        if not (math.isfinite(self.feature_distill_weight) and self.feature_distill_weight >= 0):
            raise ValueError(
                f"TrainConfig.feature_distill_weight must be finite and >= 0, got {self.feature_distill_weight}")
        if not (math.isfinite(self.ema_decay) and 0 <= self.ema_decay < 1):
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):  # a negative norm would flip the gradient
            raise ValueError(f"TrainConfig.grad_clip must be finite and >= 0, got {self.grad_clip}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("warmup_steps", "val_every", "ckpt_every", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.keep_best and not self.val_every:
            raise ValueError("TrainConfig.keep_best needs val_every > 0 (the checks it chooses among), got val_every 0")

    @property
    def uses_teacher(self) -> bool:
        """Whether the loss reads a teacher (output or feature distillation)."""
        return self.distill_weight > 0 or self.feature_distill_weight > 0


def lr_at(cfg: TrainConfig, step: int, time_fraction: float = 0.0) -> float:
    """Learning rate at ``step`` (0-based), ``time_fraction`` of the wall-time budget spent."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant" or cfg.steps == 0:
        return cfg.lr
    t = max((step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1), time_fraction)
    if cfg.lr_schedule == "step":
        return cfg.lr * (0.5 ** (int(t >= 0.5) + int(t >= 0.75)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))
