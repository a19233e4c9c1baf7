"""The training / fine-tuning loop shared by default-model training, pruning and QAT.

L1 loss (Lim et al., EDSR) or MSE, Adam or SGD, an optional weight average (:mod:`compress.core.ema`), cosine or step learning-rate decay, periodic validation PSNR-Y,
resumable checkpoints, CPU or CUDA. Where the processor has native bf16 matrix instructions (AMX-BF16
or AVX512-BF16, :mod:`compress.core.cpu`) the forward pass runs under ``torch.autocast`` in bfloat16;
either precision trains with channels_last tensors where oneDNN's convolutions are fastest in that layout
(CUDA, and CPUs with AVX-512: FP32 steps 1.21x faster than NCHW on an AVX512-VNNI Xeon without bf16) and
in NCHW on AVX2-only CPUs (:attr:`CpuInfo.channels_last`, ``python -m benchmarks.train_step``); loss,
gradients' master copies (the FP32 parameters) and Adam's state stay FP32, as in mixed-precision
training (Micikevicius et al., 2018; bf16 needs no loss scaling). Stages plug in through ``hooks``
(called after every optimizer step, e.g. to re-apply pruning masks) and an optional teacher for
distillation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from compress.core.best_weights import BestWeights
from compress.core.cpu import host_cpu
from compress.core.data import ImagePair
from compress.core.distill import FeatureDistiller
from compress.core.distributed import Ranks, ensure_process_group, rank_device
from compress.core.ema import WeightAverage
from compress.core.errors import InputError, first_line
from compress.core.evaluate import evaluate
from compress.core.files import atomic_path
from compress.core.infer import torch_upscaler
from compress.core.prefetch import Prefetcher
from compress.core.progress import PlainProgress
from compress.core.train_config import TrainConfig, lr_at, resolve_precision

StepHook = Callable[[int], None]
LOSSES = {"l1": nn.functional.l1_loss, "mse": nn.functional.mse_loss}


@dataclasses.dataclass
class TrainLog:
    """Losses and validation scores, one entry per logged step.

    ``steps_done`` and ``seconds`` count from the start of the training: after a resume they include
    the steps and training seconds of the interrupted runs up to their last resume checkpoint, and
    ``segments`` says which steps ran in which precision on which CPU or GPU (a run resumed on another host
    may train on in another precision, and its seconds are of another speed).
    """

    loss: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    val_psnr_y_db: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    precision: str = "fp32"
    memory_format: str = "channels_last"
    steps_done: int = 0
    kept_step: int = 0
    kept_val_psnr_y_db: float | None = None
    segments: list[dict[str, object]] = dataclasses.field(default_factory=list)  # steps, precision, hardware

    def final_val_psnr_y_db(self) -> float:
        """Validation PSNR-Y of the weights the model ends with: the kept check's (``keep_best``), else the
        last check's; -inf when nothing was validated."""
        if self.kept_val_psnr_y_db is not None:
            return self.kept_val_psnr_y_db
        return self.val_psnr_y_db[-1][1] if self.val_psnr_y_db else float("-inf")


def _load_resume(path: Path | None, model: nn.Module, opt: torch.optim.Optimizer, device: str,
                 batches: Iterator[tuple[np.ndarray, np.ndarray]]) -> tuple[int, float, dict]:
    """Restore model and optimizer from a resume checkpoint if there is one, and skip the batches the
    interrupted run already used, so the resumed run sees the stream it would have seen.

    Returns:
        The step to start at, the training seconds already spent (0 for checkpoints written before
        the seconds were recorded), so that a wall-time budget and its learning-rate schedule go on
        where the interrupted run left them instead of starting again, and the states the checkpoint
        holds beside them (``ema``: the weight average, ``best``: :meth:`BestWeights.state_dict`).
    """
    if path is None or not path.is_file():
        return 0, 0.0, {}
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
    except (RuntimeError, ValueError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as e:
        raise InputError(f"{path}: not a resume checkpoint of this model and optimizer ({first_line(e)}); "
                         "delete it to start afresh") from None
    for _ in range(step):
        next(batches)
    return step, float(state.get("seconds", 0.0)), {k: state[k] for k in ("ema", "best", "segments") if k in state}


def _save_resume(path: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int, seconds: float,
                 ema: WeightAverage | None, best: BestWeights | None, segments: list[dict[str, object]]) -> None:
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "seconds": seconds,
             "segments": segments}
    if ema is not None:
        state["ema"] = ema.state_dict()
    if best is not None:
        state["best"] = best.state_dict()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def training_loss(model: nn.Module, teacher: nn.Module | None, cfg: TrainConfig, lr_t: torch.Tensor,
                  hr_t: torch.Tensor, bf16: bool, features: FeatureDistiller | None = None) -> torch.Tensor:
    """``cfg.loss`` to the HR patch (and to the teacher's output, plus the feature term), forward under bf16 autocast
    when asked; FP32 loss."""
    taps = features.capturing() if features is not None else contextlib.nullcontext()
    with torch.autocast(lr_t.device.type, dtype=torch.bfloat16, enabled=bf16), taps:
        out = model(lr_t)
        target = None
        if teacher is not None and cfg.uses_teacher:
            with torch.no_grad():
                target = teacher(lr_t)
    out = out.float()
    pixel = LOSSES[cfg.loss]
    loss = pixel(out, hr_t)
    if target is not None and cfg.distill_weight > 0:
        loss = (1 - cfg.distill_weight) * loss + cfg.distill_weight * pixel(out, target.float())
    if features is not None:
        loss = loss + cfg.feature_distill_weight * features.loss()
    return loss


def _validate(model: nn.Module, val_pairs: Sequence[ImagePair], scale: int, device: str) -> float:
    """PSNR-Y of the FP32 model on ``val_pairs`` (validation never runs in bf16, nor on CUDA in TF32, so a
    continuation's final score compares with its start's CPU score)."""
    model.eval()
    cudnn = torch.backends.cudnn
    with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                     allow_tf32=False):
        psnr = evaluate(torch_upscaler(model, device), val_pairs, scale).psnr_y_db
    model.train()
    return psnr


def _optimizer_step(net: nn.Module, opt: torch.optim.Optimizer, trainable: list, teacher: nn.Module | None,
                    cfg: TrainConfig, lr_t: torch.Tensor, hr_t: torch.Tensor, bf16: bool, lr_now: float,
                    features: FeatureDistiller | None = None) -> float:
    """One optimizer step at ``lr_now``; returns the loss."""
    for group in opt.param_groups:
        group["lr"] = lr_now
    loss = training_loss(net, teacher, cfg, lr_t, hr_t, bf16, features)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
    opt.step()
    return loss.item()


def _out_of_time(budget_s: float, t0: float, ranks: Ranks) -> bool:
    """Whether the wall-time budget is spent; under torchrun rank 0's clock decides for every rank."""
    if not budget_s:
        return False
    over = time.perf_counter() - t0 >= budget_s
    if ranks.distributed:
        on_gpu = torch.distributed.get_backend() == "nccl"
        flag = torch.tensor([float(over)], device=f"cuda:{ranks.local_rank}" if on_gpu else "cpu")
        torch.distributed.broadcast(flag, src=0)
        over = bool(flag.item())
    return over


def _parallel(model: nn.Module, ranks: Ranks, device: str) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel under torchrun (it broadcasts rank 0's weights)."""
    if not ranks.distributed:
        return model
    ids = [torch.device(device).index] if device.startswith("cuda") else None
    # constant buffers only (mean shifts; no batch norm in these SR models): nothing to broadcast per step
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


@contextlib.contextmanager
def _prefetched(batches: Iterator[tuple[np.ndarray, np.ndarray]], device: str) -> Iterator[Iterator]:
    """On CUDA, ``batches`` drawn ahead on a thread while the GPU runs (same stream, same order; when
    training ends exactly three batches drawn ahead are dropped, so a caller that trains again on the
    same iterator continues three batches further on, in every run alike); on the CPU, where sampling
    and the step would share the same cores, ``batches`` as it is."""
    if not device.startswith("cuda"):
        yield batches
        return
    with Prefetcher(batches, depth=2) as ahead:
        yield ahead


@contextlib.contextmanager
def _cudnn_autotune(device: str) -> Iterator[None]:
    """On CUDA, let cuDNN time its convolution kernels once per shape (training batches keep one shape);
    the process's own setting comes back afterwards, also after an error."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = before or device.startswith("cuda")
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _place(model: nn.Module, teacher: nn.Module | None, device: str, channels_last: bool) -> torch.memory_format:
    """Move the student (training mode) and the teacher (eval) to ``device`` in the training layout."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=fmt).train()
    if teacher is not None:
        teacher.to(device, memory_format=fmt).eval()
    return fmt


def _feature_distiller(model: nn.Module, teacher: nn.Module | None, cfg: TrainConfig,
                       batches: Iterator[tuple[np.ndarray, np.ndarray]], device: str,
                       fmt: torch.memory_format) -> FeatureDistiller | None:
    """The feature distiller ``cfg`` asks for, its adapters fitted on one batch (None without one)."""
    if not cfg.feature_distill_weight:
        return None
    if teacher is None:
        raise ValueError("TrainConfig.feature_distill_weight needs a teacher")
    features = FeatureDistiller(model, teacher)
    features.fit_adapters(_on_device(next(batches), device, fmt)[0])
    return features


def _on_device(batch: tuple[np.ndarray, np.ndarray], device: str,
               fmt: torch.memory_format) -> tuple[torch.Tensor, torch.Tensor]:
    """An (lr, hr) batch as tensors on ``device``, the LR input in the training layout."""
    lr_np, hr_np = batch
    return torch.from_numpy(lr_np).to(device).contiguous(memory_format=fmt), torch.from_numpy(hr_np).to(device)


def _release(model: nn.Module, teacher: nn.Module | None, features: FeatureDistiller | None,
             ema: WeightAverage | None) -> None:
    """After training: the model holds its weight average (if kept), feature hooks removed, models in
    eval mode and back in NCHW."""
    if ema is not None:
        ema.copy_to_params()
    if features is not None:
        features.close()
    model.eval().to(memory_format=torch.contiguous_format)
    if teacher is not None:
        teacher.to(memory_format=torch.contiguous_format)


def _score(log: TrainLog, model: nn.Module, val_pairs: Sequence[ImagePair], scale: int, device: str, step: int,
           desc: str, ema: WeightAverage | None = None, best: BestWeights | None = None) -> None:
    """Validate ``model`` (holding its weight average, if kept) after ``step`` steps, log its PSNR-Y and
    offer those weights to ``best``."""
    with ema.applied() if ema is not None else contextlib.nullcontext():
        log.val_psnr_y_db.append((step, _validate(model, val_pairs, scale, device)))
        kept = best is not None and best.offer(step, log.val_psnr_y_db[-1][1], model)
    tqdm.write(f"[{desc}] step {step}: val PSNR-Y {log.val_psnr_y_db[-1][1]:.3f} dB" + (" (best)" if kept else ""))


def _log_loss(log: TrainLog, bar: tqdm, plain: PlainProgress, step: int, running: float, lr_now: float,
              last: bool) -> None:
    """Every 50 steps and at the end: the running loss into the log and the progress bar (or, without a
    terminal, a plain line at most once a minute)."""
    if step % 50 == 0 or last:
        log.loss.append((step, running))
        bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr_now:.2e}")
        line = plain.line(step, running, lr_now) if bar.disable else None
        if line is not None:
            tqdm.write(line)


def _optimizer(cfg: TrainConfig, params: list) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.99))
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9)


def _weight_average(cfg: TrainConfig, params: list, state: dict | None) -> WeightAverage | None:
    """The weight average of the model's own parameters (not the feature distiller's adapters), if
    ``cfg`` keeps one. Built once training's start weights are in place: after a resume (a checkpoint
    written without an average seeds it with the resumed weights) and after DDP gave every rank rank 0's."""
    if not cfg.ema_decay:
        return None
    ema = WeightAverage(params, cfg.ema_decay)
    if state is not None:
        ema.load_state_dict(state)
    return ema


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
    channels_last: bool | None = None,
) -> TrainLog:
    """Train ``model`` in place on ``batches`` of (lr, hr) NCHW arrays.

    Args:
        model: canonical model (RGB in [0, 1] to RGB in [0, 1]).
        batches: endless iterator of patch batches (on CUDA three more are drawn than trained on).
        cfg: optimisation settings (``cfg.precision``: bf16 autocast or FP32, :func:`resolve_precision`).
        scale: SR factor, for validation.
        val_pairs: validation images; PSNR-Y is logged every ``cfg.val_every`` steps and at the end.
        hooks: called with the step number after each optimizer step.
        teacher: frozen model for output distillation (``cfg.distill_weight``) and feature distillation
            (``cfg.feature_distill_weight``; same module names at the feature taps).
        device: ``cpu`` or ``cuda``.
        resume: checkpoint written every ``cfg.ckpt_every`` steps (any number of ranks can resume from
            it) and read at start if present; a resumed run skips the batches already used and counts
            the seconds already spent against ``cfg.max_minutes``.
        params: parameters to optimise (default: all that require grad).
        desc: progress-bar label.
        channels_last: train in ``torch.channels_last`` (``False``: NCHW, for operators slow in that layout;
            ``None``: on CUDA and where the CPU's convolutions are faster so, :attr:`CpuInfo.channels_last`).

    Under torchrun the model trains in DDP (gradients averaged over the ranks; every rank holds the same
    weights after each step, so pruning masks agree); only rank 0 validates and writes the resume file.
    """
    ranks = ensure_process_group(device)
    device = rank_device(device)
    if channels_last is None:
        channels_last = device.startswith("cuda") or host_cpu().channels_last
    with _prefetched(batches, device) as stream:
        return _fit(model, stream, cfg, scale, val_pairs, hooks, teacher, device, ranks, resume, params, desc,
                    channels_last)


def _fit(model: nn.Module, batches: Iterator[tuple[np.ndarray, np.ndarray]], cfg: TrainConfig, scale: int,
         val_pairs: Sequence[ImagePair], hooks: Sequence[StepHook], teacher: nn.Module | None, device: str,
         ranks: Ranks, resume: Path | None, params: Sequence[torch.nn.Parameter] | None, desc: str,
         channels_last: bool) -> TrainLog:
    """:func:`fit` on a device already resolved for this rank."""
    torch.manual_seed(cfg.seed)
    log = TrainLog(precision=resolve_precision(cfg.precision, device),
                   memory_format="channels_last" if channels_last else "nchw")
    bf16 = log.precision == "bf16"
    fmt = _place(model, teacher, device, channels_last)
    for name in ("ema_decay", "keep_best"):
        if getattr(cfg, name) and hooks:
            raise ValueError(f"TrainConfig.{name} cannot be combined with step hooks (e.g. pruning masks)")
    own = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    features = _feature_distiller(model, teacher, cfg, batches, device, fmt)
    trainable = own + (features.parameters() if features is not None else [])
    opt = _optimizer(cfg, trainable)
    start, spent_s, states = _load_resume(resume, model, opt, device, batches)
    earlier = list(states.get("segments") or [])
    here = {"from_step": start, "precision": log.precision,
            "hardware": torch.cuda.get_device_name(device) if device.startswith("cuda") else host_cpu().describe()}
    net = _parallel(model, ranks, device)
    ema = _weight_average(cfg, own, states.get("ema"))
    best = BestWeights.from_state(states.get("best")) if cfg.keep_best and val_pairs else None
    step_hooks = list(hooks) if ema is None else [lambda _step: ema.update()]  # ema_decay excludes hooks
    t0, budget_s = time.perf_counter() - spent_s, cfg.max_minutes * 60.0
    end = start if budget_s and spent_s >= budget_s else cfg.steps  # a resumed run whose budget is spent
    bar = tqdm(range(start, end), desc=desc, initial=start, total=cfg.steps, mininterval=5, disable=None)
    plain = PlainProgress(desc, cfg.steps, start)
    running, done = 0.0, start
    with _cudnn_autotune(device):
        for step in bar:
            lr_t, hr_t = _on_device(next(batches), device, fmt)
            lr_now = lr_at(cfg, step, (time.perf_counter() - t0) / budget_s if budget_s else 0.0)
            loss = _optimizer_step(net, opt, trainable, teacher, cfg, lr_t, hr_t, bf16, lr_now, features)
            for hook in step_hooks:
                hook(step + 1)
            running = 0.98 * running + 0.02 * loss if step > start else loss
            last = step + 1 == cfg.steps or _out_of_time(budget_s, t0, ranks)
            _log_loss(log, bar, plain, step + 1, running, lr_now, last)
            if val_pairs and ranks.rank == 0 and ((cfg.val_every and (step + 1) % cfg.val_every == 0) or last):
                _score(log, model, val_pairs, scale, device, step + 1, desc, ema, best)
            if resume is not None and ranks.rank == 0 and cfg.ckpt_every and ((step + 1) % cfg.ckpt_every == 0 or last):
                _save_resume(resume, model, opt, step + 1, time.perf_counter() - t0, ema, best,
                             [*earlier, {**here, "to_step": step + 1}])
            done = step + 1
            if last:
                break
    if done == start and val_pairs and ranks.rank == 0:  # nothing left to run: score what the resume file holds
        _score(log, model, val_pairs, scale, device, start, desc, ema, best)
    bar.close()
    _release(model, teacher, features, ema)
    if best is not None and best.weights is not None and ranks.rank == 0:
        best.restore(model)
        log.kept_step, log.kept_val_psnr_y_db = best.step, best.psnr_y_db
    log.seconds, log.steps_done = time.perf_counter() - t0, done
    log.segments = [*earlier, {**here, "to_step": done}] if done > start or not earlier else earlier
    return log
