"""The history command: a checkpoint's training runs, read from its sidecar, as the model card shows them."""

import dataclasses
import json
from pathlib import Path

import pytest

from compress.core.data import PatchConfig
from compress.core.errors import InputError
from compress.core.files import read_sidecar, write_sidecar
from compress.core.train_config import TrainConfig
from compress.pipeline.cli import main
from compress.pipeline.defaults import DEFAULT_DIR, DEFAULT_MODELS
from compress.pipeline.history import TrainingRun, history_markdown, read_history, training_run
from compress.pipeline.trainer import TrainRecipe, train_model
from tests.conftest import REPO

OLD_RUN = {"recipe_file": "compress/recipes/train_edsr_x2.toml", "train_seconds": 3163.4, "steps_done": 1200,
           "val_psnr_y_db": [[250, 34.1], [1200, 34.7323]]}
GPU_RUN = {"recipe_file": "compress/recipes/gpu_continue_edsr_x4.toml", "device": "cuda", "gpu": "NVIDIA H200",
           "cpu": "Intel(R) Xeon(R) Processor (avx512_bf16 amx_bf16)", "precision": "bf16", "steps_done": 5220,
           "train_seconds": 198.2, "val_psnr_y_db": [[2000, 30.792], [4000, 30.7941], [5220, 30.8005]],
           "kept_step": 4000, "continued_from": {"file": "x4.safetensors", "sha256": "ab", "val_psnr_y_db": 30.7743}}


def test_a_history_renders_as_the_model_cards_table():
    runs = (training_run(OLD_RUN, "h[0]"), training_run(GPU_RUN, "h[1]"))
    assert runs[1] == TrainingRun("compress/recipes/gpu_continue_edsr_x4.toml", "NVIDIA H200", "bf16", 5220,
                                  pytest.approx(3.3033, abs=1e-4), 30.7743, 30.7941, 4000)
    assert history_markdown(runs) == (
        "| run | recipe | hardware | precision | steps | minutes | validation PSNR-Y dB, start -> written |\n"
        "|---|---|---|---|---|---|---|\n"
        "| 1 | `train_edsr_x2.toml` | CPU (not recorded) | not recorded | 1200 | 53 | - -> 34.732 |\n"
        "| 2 | `gpu_continue_edsr_x4.toml` | NVIDIA H200 | bf16 | 5220 | 3.3 | 30.774 -> 30.794 (step 4000) |\n")


@pytest.mark.parametrize("change, problem", [
    ({"kept_step": 3000}, "kept_step 3000 is not one of its validation checks"),
    ({"train_seconds": -1}, "train_seconds must be a number >= 0"),
    ({"steps_done": "many"}, "steps_done must be a count"),
    ({"val_psnr_y_db": [[1, "x"]]}, r"val_psnr_y_db must be a list of \[step, dB\] pairs"),
    ({"gpu": None}, "gpu must be a non-empty string"),
])
def test_a_malformed_run_is_named_with_its_field(change, problem):
    with pytest.raises(InputError, match=rf"^h\[1\]: {problem}"):
        training_run({**GPU_RUN, **change}, "h[1]")


def _recipe(image_dir, steps: int) -> TrainRecipe:
    return TrainRecipe(arch="edsr", scale=2, num_feat=16, num_block=2, data=str(image_dir), val_data=str(image_dir),
                       max_side=0, patch=PatchConfig(lr_patch=8, batch_size=2),
                       train=TrainConfig(steps=steps, lr=1e-3, val_every=steps, precision="fp32"))


def test_a_trained_and_continued_checkpoint_lists_both_runs(image_dir, tmp_path, capsys):
    start, out = tmp_path / "start.safetensors", tmp_path / "more.safetensors"
    first = train_model(_recipe(image_dir, 1), start)
    second = train_model(dataclasses.replace(_recipe(image_dir, 60), train=TrainConfig(
        steps=60, lr=1e-3, precision="fp32")), out, continue_from=start)
    assert second["written"]
    runs = read_history(out)
    assert [(r.steps, r.precision, r.hardware == first["cpu"]) for r in runs] == [(1, "fp32", True), (60, "fp32", True)]
    assert runs[0].start_val_psnr_y_db is None and runs[0].val_psnr_y_db == first["val_psnr_y_db"][-1][1]
    assert runs[1].start_val_psnr_y_db == second["continued_from"]["val_psnr_y_db"]
    assert runs[1].val_psnr_y_db == second["final_val_psnr_y_db"] > runs[1].start_val_psnr_y_db
    capsys.readouterr()  # the trainings' progress lines
    assert main(["history", "--model", str(out)]) == 0
    assert capsys.readouterr().out == history_markdown(runs)
    assert main(["history", "--model", str(out), "--json"]) == 0
    assert [r["steps"] for r in json.loads(capsys.readouterr().out)] == [1, 60]


def test_a_checkpoint_without_history_or_sidecar_gets_one_line(image_dir, tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    train_model(_recipe(image_dir, 1), model)
    record = read_sidecar(model)
    write_sidecar(model, {k: v for k, v in record.items() if k != "history"})
    assert main(["history", "--model", str(model)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {model}.json: no training history (only `compress train` records one)"
    Path(f"{model}.json").unlink()
    assert main(["history", "--model", str(model)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {model}.json: file not found"


@pytest.mark.parametrize("name", sorted(DEFAULT_MODELS.values()))
def test_the_model_card_shows_each_shipped_models_recorded_history(name):
    """MODELS.md's training tables are the sidecars' histories: new weights without a new table fail here."""
    card = (REPO / "artifacts" / "default" / "MODELS.md").read_text(encoding="utf-8")
    assert history_markdown(read_history(DEFAULT_DIR / name)) in card
