import pytest

from compress.core.train_config import TrainConfig, lr_at, resolve_precision


def test_lr_schedules():
    cos = TrainConfig(steps=100, lr=1.0, lr_schedule="cosine", min_lr_ratio=0.0)
    assert lr_at(cos, 0) == pytest.approx(1.0)
    assert lr_at(cos, 50) == pytest.approx(0.5)
    assert lr_at(cos, 100) == pytest.approx(0.0, abs=1e-12)
    step = TrainConfig(steps=100, lr=1.0, lr_schedule="step")
    assert [lr_at(step, s) for s in (0, 49, 50, 75)] == [1.0, 1.0, 0.5, 0.25]
    warm = TrainConfig(steps=100, lr=1.0, warmup_steps=10)
    assert lr_at(warm, 0) == pytest.approx(0.1)
    # the cosine starts after the warm-up and ends at its floor, lr * min_lr_ratio
    warm = TrainConfig(steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.01)
    assert [lr_at(warm, s) for s in (9, 10, 60, 110, 500)] == pytest.approx([1.0, 1.0, 0.505, 0.01, 0.01])


def test_wall_time_fraction_drives_the_schedule():
    cos = TrainConfig(steps=100, lr=1.0, min_lr_ratio=0.0, max_minutes=1.0)
    assert lr_at(cos, 10, time_fraction=0.5) == pytest.approx(0.5)  # time is further along than steps
    assert lr_at(cos, 50, time_fraction=0.1) == pytest.approx(0.5)  # steps are further along


def test_precision_resolution():
    assert resolve_precision("auto", "cpu", cpu_bf16=True) == "bf16"
    assert resolve_precision("auto", "cpu", cpu_bf16=False) == "fp32"
    assert resolve_precision("fp32", "cpu", cpu_bf16=True) == "fp32"
    assert resolve_precision("bf16", "cpu", cpu_bf16=False) == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", "cpu")


def test_config_validation():
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(ValueError, match="distill_weight"):
        TrainConfig(distill_weight=2)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="half")
    with pytest.raises(ValueError, match="max_minutes"):
        TrainConfig(max_minutes=float("inf"))
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="keep_best needs val_every > 0"):
        TrainConfig(keep_best=True)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="loss"):
        TrainConfig(loss="huber")
