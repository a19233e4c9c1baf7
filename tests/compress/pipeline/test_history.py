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
           "train_seconds": 198.2, "finished_utc": "2026-11-20T14:03:59Z", "val_psnr_y_db": [[2000, 30.792], [4000, 30.7941], [5220, 30.8005]],
           "kept_step": 4000, "continued_from": {"file": "x4.safetensors", "sha256": "ab", "val_psnr_y_db": 30.7743}}


def test_a_history_renders_as_the_model_cards_table():
    runs = (training_run(OLD_RUN, "h[0]"), training_run(GPU_RUN, "h[1]"))
    assert runs[1] == TrainingRun("compress/recipes/gpu_continue_edsr_x4.toml", "NVIDIA H200", "bf16", 5220,
                                  pytest.approx(3.3033, abs=1e-4), 30.7743, 30.7941, 4000, "2026-11-20T14:03:59Z")
    assert runs[0].finished_utc is None  # older than the field
    assert history_markdown(runs) == (
        "| run | recipe | hardware | precision | steps | minutes | finished (UTC) "
        "| validation PSNR-Y dB, start -> written |\n"
        "|---|---|---|---|---|---|---|---|\n"
        "| 1 | `train_edsr_x2.toml` | CPU (not recorded) | not recorded | 1200 | 53 | - | - -> 34.732 |\n"
        "| 2 | `gpu_continue_edsr_x4.toml` | NVIDIA H200 | bf16 | 5220 | 3.3 | 2026-11-20 14:03 "
        "| 30.774 -> 30.794 (step 4000) |\n")


@pytest.mark.parametrize("change, problem", [
    ({"kept_step": 3000}, "kept_step 3000 is not one of its validation checks"),
    ({"train_seconds": -1}, "train_seconds must be a number from 0 to"),
    ({"steps_done": "many"}, "steps_done must be a count"),
    ({"val_psnr_y_db": [[1, "x"]]}, r"val_psnr_y_db must be a list of \[step, dB\] pairs"),
    ({"kept_step": True}, "kept_step True is not one of its validation checks"),
    ({"gpu": None}, "gpu must be a non-empty string"),
    ({"gpu": "H200\nrow"}, "gpu holds control characters"),
    ({"val_psnr_y_db": [[True, 30.0]]}, "val_psnr_y_db must be a list of"),
    ({"val_psnr_y_db": [[-1, 30.0]]}, "val_psnr_y_db must be a list of"),
    ({"val_psnr_y_db": [[4000, 30.0], [2000, 30.1]]}, "val_psnr_y_db must be a list of .* steps rising"),
    ({"val_psnr_y_db": [[4000, 30.0], [4000, 30.1]]}, "val_psnr_y_db must be a list of .* steps rising"),
    ({"val_psnr_y_db": [[4000, 1e300]]}, "val_psnr_y_db must be a list of .* dB from 0 to 1000"),
    ({"continued_from": True}, "continued_from must be an object with a val_psnr_y_db"),
    ({"continued_from": {"val_psnr_y_db": True}}, "continued_from must be an object with a val_psnr_y_db"),
    ({"train_seconds": 1e308}, "train_seconds must be a number from 0 to"),
    ({"finished_utc": "2026-11-20 14:03"}, "finished_utc must be a UTC time like"),
    ({"finished_utc": "2026-02-30T10:00:00Z"}, "finished_utc must be a UTC time like"),
    ({"finished_utc": 1764000000}, "finished_utc must be a UTC time like"),
    ({"finished_utc": None}, "finished_utc must be a UTC time like"),
    ({"segments": {"from_step": 0}}, "segments must be a list of objects"),
    ({"segments": [{"from_step": 0, "to_step": 2, "precision": "bf16"}]}, r"segments\[0\]: hardware must be"),
    ({"segments": [{"from_step": -1, "to_step": 2, "precision": "bf16", "hardware": "x"}]}, r"segments\[0\]: from_step"),
])
def test_a_malformed_run_is_named_with_its_field(change, problem):
    with pytest.raises(InputError, match=rf"^h\[1\]: {problem}"):
        training_run({**GPU_RUN, **change}, "h[1]")


def test_a_run_resumed_on_other_hardware_shows_each_segment():
    amx, avx2 = "Xeon (avx2 amx_bf16)", "EPYC (avx2)"
    segments = [{"from_step": 0, "to_step": 3000, "precision": "bf16", "hardware": amx},
                {"from_step": 3000, "to_step": 5220, "precision": "fp32", "hardware": avx2}]
    run = training_run({**GPU_RUN, "device": "cpu", "cpu": avx2, "precision": "fp32", "segments": segments}, "h")
    assert run.hardware == f"{amx} + {avx2}" and run.precision == "bf16 (steps 0-3000) + fp32 (steps 3000-5220)"
    one = training_run({**GPU_RUN, "segments": segments[:1]}, "h")  # one segment: the run's own fields say it all
    assert (one.hardware, one.precision) == ("NVIDIA H200", "bf16")


def test_the_written_check_is_the_last_in_order_and_table_cells_stay_cells():
    run = training_run({**GPU_RUN, "kept_step": 0, "device": "cuda:1", "gpu": "H200 | 141 GB"}, "h")
    assert run.kept_step is None and run.val_psnr_y_db == 30.8005 and run.hardware == "H200 | 141 GB"
    assert "| H200 \\| 141 GB |" in history_markdown((run,))


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
    assert [r.finished_utc for r in runs] == [first["finished_utc"], second["finished_utc"]]
    assert first["finished_utc"] <= second["finished_utc"]  # ISO 8601 UTC strings sort as times
    assert runs[0].start_val_psnr_y_db is None and runs[0].val_psnr_y_db == first["val_psnr_y_db"][-1][1]
    assert runs[1].start_val_psnr_y_db == second["continued_from"]["val_psnr_y_db"]
    assert runs[1].val_psnr_y_db == second["final_val_psnr_y_db"] > runs[1].start_val_psnr_y_db
    capsys.readouterr()  # the trainings' progress lines
    assert main(["history", "--model", str(out)]) == 0
    assert capsys.readouterr().out == history_markdown(runs)
    assert main(["history", "--model", str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [(r["steps"], r["finished_utc"]) for r in shown] == [(1, first["finished_utc"]), (60, second["finished_utc"])]


def test_a_first_training_is_its_own_one_run_history(image_dir, tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    record = train_model(_recipe(image_dir, 1), model)
    assert "history" not in read_sidecar(model)  # the trainer writes a history only when it continues
    (run,) = read_history(model)
    assert (run.steps, run.start_val_psnr_y_db, run.val_psnr_y_db) == (1, None, record["val_psnr_y_db"][-1][1])


def test_a_sidecar_without_history_or_no_sidecar_gets_one_line(image_dir, tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    train_model(_recipe(image_dir, 1), model)
    write_sidecar(model, {"stage": "prune"})  # another stage's sidecar: no training recorded
    assert main(["history", "--model", str(model)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {model}.json: no training history (not written by `compress train`)"
    Path(f"{model}.json").unlink()
    assert main(["history", "--model", str(model)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {model}.json: file not found"


def _card_tables() -> dict[str, str]:
    """MODELS.md's training tables, by the file its section's heading names (``### ... (`<file>`)``)."""
    tables: dict[str, str] = {}
    name = None
    for line in (REPO / "artifacts" / "default" / "MODELS.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("### "):
            name = line.rsplit("`", 2)[-2] if line.endswith("`)") else None
        elif name and line.startswith("|"):
            tables[name] = tables.get(name, "") + line + "\n"
        elif name and name in tables:
            name = None  # the table ended
    return tables


@pytest.mark.parametrize("name", sorted(DEFAULT_MODELS.values()))
def test_the_model_card_shows_each_shipped_models_recorded_history(name):
    """MODELS.md's training tables are the sidecars' histories: new weights without a new table fail here."""
    assert _card_tables()[name] == history_markdown(read_history(DEFAULT_DIR / name))
