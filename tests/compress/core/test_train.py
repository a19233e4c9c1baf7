import dataclasses

import numpy as np
import pytest
import torch

from compress.core.data import PatchConfig, list_images, load_pairs, random_patches
from compress.core.train import LOSSES, _cudnn_autotune, fit
from compress.core.train_config import LOSS_NAMES, TrainConfig
from tests.conftest import tiny_edsr


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_each_precision_reduces_the_loss_and_keeps_fp32_weights(image_dir, precision):
    pairs = load_pairs(list_images(image_dir), 2)
    model = tiny_edsr(2)
    batches = random_patches(pairs, 2, PatchConfig(lr_patch=16, batch_size=4, seed=0))
    log = fit(model, batches, TrainConfig(steps=100, lr=1e-3, precision=precision), 2)
    assert log.precision == precision
    assert log.loss[-1][1] < 0.7 * log.loss[0][1]
    for name, p in model.state_dict().items():
        assert p.dtype == torch.float32, name
        assert p.is_contiguous(), name  # safetensors needs contiguous tensors


def test_wall_time_budget_stops_training(image_dir):
    pairs = load_pairs(list_images(image_dir), 2)
    log = fit(tiny_edsr(2), random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2)),
              TrainConfig(steps=10_000, max_minutes=1e-4), 2)
    assert 1 <= log.steps_done < 10_000


def test_loss_falls_and_validation_logged(image_dir):
    pairs = load_pairs(list_images(image_dir), 2)
    model = tiny_edsr(2)
    batches = random_patches(pairs, 2, PatchConfig(lr_patch=16, batch_size=4, seed=0))
    log = fit(model, batches, TrainConfig(steps=100, lr=1e-3), 2, val_pairs=pairs[:1])
    first, last = log.loss[0][1], log.loss[-1][1]
    assert last < 0.7 * first
    assert log.val_psnr_y_db and log.val_psnr_y_db[-1][0] == 100


def test_resume_continues_from_checkpoint(image_dir, tmp_path):
    pairs = load_pairs(list_images(image_dir), 2)
    resume = tmp_path / "r.pt"
    cfg = TrainConfig(steps=10, lr=1e-3, ckpt_every=5)
    model = tiny_edsr(2)
    fit(model, random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2)), cfg, 2, resume=resume)
    assert torch.load(resume, weights_only=True)["step"] == 10
    again = tiny_edsr(2, seed=1)
    log = fit(again, random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2)), cfg, 2, resume=resume)
    assert log.loss == []  # nothing left to do: all 10 steps were already done
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)


def _interrupted_after_2_of_4_steps(pairs, cfg, resume):  # noqa: ANN001, ANN202
    """Run ``cfg`` (4 steps, a resume checkpoint every 2) until it is interrupted during step 3."""
    def crash(step):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(tiny_edsr(2), random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2)), cfg, 2,
            resume=resume, hooks=[crash])
    return resume


def test_an_interrupted_run_resumed_ends_where_the_uninterrupted_run_ends(image_dir, tmp_path):
    pairs = load_pairs(list_images(image_dir), 2)
    cfg = TrainConfig(steps=4, lr=1e-3, ckpt_every=2)
    whole = tiny_edsr(2)
    fit(whole, random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2)), cfg, 2)

    resume = _interrupted_after_2_of_4_steps(pairs, cfg, tmp_path / "r.pt")
    assert torch.load(resume, weights_only=True)["step"] == 2
    resumed = tiny_edsr(2)
    fit(resumed, random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2)), cfg, 2, resume=resume)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_a_run_resumed_in_another_precision_records_each_segment(image_dir, tmp_path):
    """Stopped after 2 FP32 steps (another host, say) and resumed in bf16: the log says which steps ran how."""
    from compress.core.cpu import host_cpu

    pairs = load_pairs(list_images(image_dir), 2)
    cfg = TrainConfig(steps=4, lr=1e-3, ckpt_every=2, precision="fp32")

    resume = _interrupted_after_2_of_4_steps(pairs, cfg, tmp_path / "r.pt")
    cpu = host_cpu().describe()
    assert torch.load(resume, weights_only=True)["segments"] == [
        {"from_step": 0, "to_step": 2, "precision": "fp32", "hardware": cpu}]
    log = fit(tiny_edsr(2), random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2)),
              dataclasses.replace(cfg, precision="bf16"), 2, resume=resume)
    assert log.segments == [{"from_step": 0, "to_step": 2, "precision": "fp32", "hardware": cpu},
                            {"from_step": 2, "to_step": 4, "precision": "bf16", "hardware": cpu}]
    assert log.precision == "bf16" and log.steps_done == 4
    again = fit(tiny_edsr(2), random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2)), cfg, 2, resume=resume)
    assert again.segments == log.segments  # nothing left to run: the record stays what ran


def test_resume_counts_the_time_already_spent_against_the_budget(image_dir, tmp_path):
    pairs = load_pairs(list_images(image_dir), 2)
    resume = tmp_path / "r.pt"
    cfg = TrainConfig(steps=4, lr=1e-3, ckpt_every=2)
    fit(tiny_edsr(2), random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2)), cfg, 2, resume=resume)
    state = torch.load(resume, weights_only=True)
    assert state["step"] == 4 and state["seconds"] > 0
    state["step"], state["seconds"] = 2, 59.9  # interrupted after 2 steps, with 59.9 s of a 1-minute budget spent
    torch.save(state, resume)
    log = fit(tiny_edsr(2), random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2)),
              dataclasses.replace(cfg, steps=1000, max_minutes=1.0), 2, resume=resume)
    assert log.steps_done < 1000 and log.seconds >= 59.9  # the budget ran out: no fresh minute
    state["seconds"] = 60.0  # the whole budget already spent: no step runs, the file is left as it was
    torch.save(state, resume)
    log = fit(tiny_edsr(2), random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2)),
              dataclasses.replace(cfg, steps=1000, max_minutes=1.0), 2, resume=resume, val_pairs=pairs[:1])
    assert log.steps_done == 2 and torch.load(resume, weights_only=True)["step"] == 2
    assert [step for step, _ in log.val_psnr_y_db] == [2]  # what the resume file holds is still scored


def _twin_fits(pairs, cfg_a, cfg_b):
    a, b = tiny_edsr(2), tiny_edsr(2)
    start = {k: v.clone() for k, v in a.state_dict().items()}
    for model, cfg in ((a, cfg_a), (b, cfg_b)):
        fit(model, random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2, seed=4)), cfg, 2)
    return start, a, b


def test_weight_average_is_what_the_model_ends_with(image_dir):
    pairs = load_pairs(list_images(image_dir), 2)
    plain = TrainConfig(steps=1, lr=1e-2)
    start, stepped, averaged = _twin_fits(pairs, plain, dataclasses.replace(plain, ema_decay=0.25))
    for name, w in averaged.state_dict().items():  # one step: 0.25 of the start, 0.75 of the step's result
        torch.testing.assert_close(w, 0.25 * start[name] + 0.75 * stepped.state_dict()[name])
        assert name.startswith("mean") or not torch.equal(w, stepped.state_dict()[name])


def test_weight_average_survives_a_resume(image_dir, tmp_path):
    pairs = load_pairs(list_images(image_dir), 2)
    cfg = TrainConfig(steps=4, lr=1e-3, lr_schedule="constant", ema_decay=0.5, ckpt_every=2)
    whole = tiny_edsr(2)
    fit(whole, random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2)), cfg, 2)
    resume = tmp_path / "r.pt"
    fit(tiny_edsr(2), random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2)),
        dataclasses.replace(cfg, steps=2), 2, resume=resume)  # stopped after 2 steps
    resumed = tiny_edsr(2)
    fit(resumed, random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2)), cfg, 2, resume=resume)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_weight_average_after_resuming_a_run_without_one_starts_from_the_resumed_weights(image_dir, tmp_path):
    pairs = load_pairs(list_images(image_dir), 2)
    resume = tmp_path / "r.pt"
    trained = tiny_edsr(2)
    fit(trained, random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2)),
        TrainConfig(steps=4, lr=1e-2, ckpt_every=4), 2, resume=resume)  # no average in the checkpoint
    resumed = tiny_edsr(2, seed=9)  # a fresh model the checkpoint overwrites
    fit(resumed, random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2)),
        TrainConfig(steps=4, lr=1e-2, ckpt_every=4, ema_decay=0.9), 2, resume=resume)  # nothing left to run
    for a, b in zip(trained.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(("name", "settings"), [("ema_decay", {"ema_decay": 0.9}),
                                                ("keep_best", {"val_every": 1, "keep_best": True})])
def test_weight_average_and_keep_best_refuse_step_hooks(image_dir, name, settings):
    pairs = load_pairs(list_images(image_dir), 2)
    with pytest.raises(ValueError, match=f"{name} cannot be combined with step hooks"):
        fit(tiny_edsr(2), random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2)),
            TrainConfig(steps=1, **settings), 2, hooks=[lambda step: None])


@pytest.mark.parametrize("loss", ["l1", "mse"])
def test_sgd_moves_each_weight_by_its_gradient(image_dir, loss):
    """Golden value: SGD's first step (momentum buffer = gradient) is ``w - lr * dloss/dw`` on the first batch."""
    pairs = load_pairs(list_images(image_dir), 2)
    patches = PatchConfig(lr_patch=8, batch_size=2, seed=4)
    model, reference = tiny_edsr(2), tiny_edsr(2)
    lr_b, hr_b = next(random_patches(pairs, 2, patches))
    criterion = torch.nn.functional.l1_loss if loss == "l1" else torch.nn.functional.mse_loss
    criterion(reference(torch.from_numpy(lr_b)), torch.from_numpy(hr_b)).backward()
    fit(model, random_patches(pairs, 2, patches),
        TrainConfig(steps=1, lr=0.5, lr_schedule="constant", optimizer="sgd", loss=loss, precision="fp32"), 2)
    for (name, w), p in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(w, p - 0.5 * p.grad, msg=name)


def test_hooks_see_every_step(image_dir):
    pairs = load_pairs(list_images(image_dir), 2)
    seen = []
    fit(tiny_edsr(2), random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2)), TrainConfig(steps=3), 2,
        hooks=[seen.append])
    assert seen == [1, 2, 3]


def test_distillation_pulls_towards_teacher(image_dir):
    pairs = load_pairs(list_images(image_dir), 2)
    teacher, student = tiny_edsr(2, seed=5), tiny_edsr(2, seed=6)
    x = torch.from_numpy(np.ascontiguousarray(pairs[0].lr.transpose(2, 0, 1)[None]))
    with torch.no_grad():
        before = (student(x) - teacher(x)).abs().mean()
    fit(student, random_patches(pairs, 2, PatchConfig(lr_patch=16, batch_size=4)),
        TrainConfig(steps=60, lr=1e-3, distill_weight=1.0), 2, teacher=teacher)
    with torch.no_grad():
        assert (student(x) - teacher(x)).abs().mean() < 0.5 * before


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_layout_follows_the_channels_last_switch_in_both_precisions(image_dir, channels_last, precision):
    pairs = load_pairs(list_images(image_dir), 2)
    seen = []
    model = tiny_edsr(2)
    model.conv_first.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    fit(model, random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2)),
        TrainConfig(steps=2, precision=precision), 2, channels_last=channels_last)
    assert seen and all(s == channels_last for s in seen)


@pytest.mark.parametrize(("flags", "layout"), [({"avx2"}, "nchw"), ({"avx2", "avx512f"}, "channels_last")])
def test_by_default_the_layout_is_the_one_this_cpus_convolutions_are_fastest_in(image_dir, monkeypatch, flags, layout):
    import compress.core.train as train_mod
    from compress.core.cpu import CpuInfo

    monkeypatch.setattr(train_mod, "host_cpu", lambda: CpuInfo("CPU", frozenset(flags)))
    pairs = load_pairs(list_images(image_dir), 2)
    seen = []
    model = tiny_edsr(2)
    model.conv_first.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    log = fit(model, random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2)),
              TrainConfig(steps=2, precision="fp32"), 2)
    assert log.memory_format == layout and seen and all(s == (layout == "channels_last") for s in seen)


def test_every_loss_a_config_accepts_has_a_function():
    assert set(LOSSES) == set(LOSS_NAMES)


@pytest.mark.parametrize(("device", "inside"), [("cpu", False), ("cuda", True), ("cuda:1", True)])
def test_cudnn_autotunes_only_while_training_on_cuda_and_the_setting_comes_back(device, inside):
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        with _cudnn_autotune(device):
            assert torch.backends.cudnn.benchmark is inside
        assert torch.backends.cudnn.benchmark is False
        with pytest.raises(RuntimeError), _cudnn_autotune(device):
            raise RuntimeError("a failed step")
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before


def test_prefetched_batches_train_exactly_as_the_plain_stream(image_dir, monkeypatch, tmp_path):
    """The CUDA path's prefetching thread, forced on the CPU: same batches, same order, same weights,
    also through a resume's skipped batches."""
    from contextlib import contextmanager

    from compress.core import train
    from compress.core.prefetch import Prefetcher

    pairs = load_pairs(list_images(image_dir), 2)
    cfg = TrainConfig(steps=4, lr=1e-3)
    plain = tiny_edsr(2)
    fit(plain, random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2, seed=4)), cfg, 2)
    used = []

    @contextmanager
    def always(batches, device):
        with Prefetcher(batches, depth=2) as ahead:
            used.append(ahead)
            yield ahead

    monkeypatch.setattr(train, "_prefetched", always)
    fetched = tiny_edsr(2)
    fit(fetched, random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2, seed=4)), cfg, 2)
    assert len(used) == 1

    def crash(step):
        if step == 3:
            raise KeyboardInterrupt

    resume, cut = tmp_path / "r.pt", dataclasses.replace(cfg, ckpt_every=2)
    with pytest.raises(KeyboardInterrupt):  # stopped after step 2's resume file, then resumed
        fit(tiny_edsr(2), random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2, seed=4)), cut, 2,
            resume=resume, hooks=[crash])
    resumed = tiny_edsr(2)
    fit(resumed, random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2, seed=4)), cut, 2, resume=resume)
    assert len(used) == 3
    for a, b, c in zip(plain.state_dict().values(), fetched.state_dict().values(), resumed.state_dict().values(),
                       strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c, rtol=0, atol=0)


def _validated(model, pairs) -> float:
    from compress.core.evaluate import evaluate
    from compress.core.infer import torch_upscaler

    return evaluate(torch_upscaler(model), pairs, 2).psnr_y_db


@pytest.mark.parametrize("ema_decay", [0.0, 0.5])
def test_keep_best_ends_with_the_weights_of_the_best_check(image_dir, ema_decay):
    pairs = load_pairs(list_images(image_dir), 2)
    cfg = TrainConfig(steps=8, lr=0.05, lr_schedule="constant", val_every=1, keep_best=True, ema_decay=ema_decay,
                      precision="fp32")
    model = tiny_edsr(2)  # a learning rate high enough that later steps undo earlier gains
    log = fit(model, random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2, seed=3)), cfg, 2,
              val_pairs=pairs[:1])
    scores = dict(log.val_psnr_y_db)
    assert log.kept_step == max(scores, key=scores.get) < 8  # the best check was not the last one
    assert log.final_val_psnr_y_db() == scores[log.kept_step] > scores[8]
    assert _validated(model, pairs[:1]) == pytest.approx(scores[log.kept_step], abs=1e-3)  # NCHW now, channels_last then


def test_keep_best_chooses_across_an_interrupted_run_and_its_resumption(image_dir, tmp_path):
    pairs = load_pairs(list_images(image_dir), 2)
    cfg = TrainConfig(steps=8, lr=0.05, lr_schedule="constant", val_every=1, keep_best=True, ckpt_every=4,
                      precision="fp32")
    stream = lambda: random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2, seed=3))  # noqa: E731
    whole = tiny_edsr(2)
    whole_log = fit(whole, stream(), cfg, 2, val_pairs=pairs[:1])
    resume = tmp_path / "r.pt"
    fit(tiny_edsr(2), stream(), dataclasses.replace(cfg, steps=4), 2, val_pairs=pairs[:1], resume=resume)
    resumed = tiny_edsr(2)
    log = fit(resumed, stream(), cfg, 2, val_pairs=pairs[:1], resume=resume)
    assert whole_log.kept_step <= 4  # the best check came before the interruption: the resume file carried it
    assert (log.kept_step, log.final_val_psnr_y_db()) == (whole_log.kept_step, whole_log.final_val_psnr_y_db())
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)
