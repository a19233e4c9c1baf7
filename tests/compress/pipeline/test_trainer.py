"""The train command's continue mode: warm start, and never replace better weights with worse ones."""

import dataclasses

import pytest
import torch

from compress.core.archs import EDSRConfig, RRDBConfig
from compress.core.checkpoint import build_model, load_checkpoint, save_checkpoint
from compress.core.data import PatchConfig
from compress.core.errors import InputError
from compress.core.files import read_sidecar, sha256_file, write_sidecar
from compress.core.train_config import TrainConfig
from compress.pipeline.trainer import TrainRecipe, claim_resume, train_model
from tests.conftest import tiny_edsr


def _recipe(image_dir, lr: float) -> TrainRecipe:
    return TrainRecipe(arch="edsr", scale=2, num_feat=16, num_block=2, data=str(image_dir), val_data=str(image_dir),
                       max_side=0, patch=PatchConfig(lr_patch=8, batch_size=2),
                       train=TrainConfig(steps=8, lr=lr, precision="fp32"))


def _trained_start(image_dir, tmp_path, steps: int = 40):
    start = tmp_path / "start.safetensors"
    first = train_model(dataclasses.replace(_recipe(image_dir, 1e-3), train=TrainConfig(steps=steps, lr=1e-3)), start)
    assert first["written"]
    return start


def test_continue_refuses_to_overwrite_better_weights(image_dir, tmp_path):
    start = _trained_start(image_dir, tmp_path)
    before = sha256_file(start)
    record = train_model(_recipe(image_dir, lr=1.0), start, continue_from=start)  # a learning rate that ruins it
    assert record["written"] is False
    assert record["val_psnr_y_db"][-1][1] < record["continued_from"]["val_psnr_y_db"]
    assert sha256_file(start) == before


def test_continue_writes_when_better_and_keeps_history(image_dir, tmp_path):
    start = _trained_start(image_dir, tmp_path, steps=1)
    sidecar = read_sidecar(start)  # one image reached the training machine in another form, noted by hand
    sidecar["training_images"][0]["carried_as"] = "a PNG of it, shrunk"
    write_sidecar(start, sidecar)
    out = tmp_path / "more.safetensors"
    longer = dataclasses.replace(_recipe(image_dir, 1e-3), train=TrainConfig(steps=60, lr=1e-3, precision="fp32"))
    record = train_model(longer, out, continue_from=start)
    assert record["written"] is True and out.is_file()
    assert record["val_psnr_y_db"][-1][1] > record["continued_from"]["val_psnr_y_db"]
    assert [h["steps_done"] for h in record["history"]] == [1, 60]
    assert record["segments"] == [{"from_step": 0, "to_step": 60, "precision": "fp32", "hardware": record["cpu"]}]
    first_image = sidecar["training_images"][0]["file"]
    assert record["history"][0]["carried_as"] == {first_image: "a PNG of it, shrunk"}  # kept with its run
    assert "carried_as" not in record["history"][1] and "carried_as" not in str(record["training_images"])
    assert [h["device"] for h in record["history"]] == ["cpu", "cpu"]  # each run says where it trained
    assert "gpu" not in record  # a GPU's name is recorded for CUDA runs only


def test_continue_with_keep_best_writes_the_best_check_and_judges_it_against_the_start(image_dir, tmp_path):
    from compress.core.data import list_images, load_pairs
    from compress.core.evaluate import evaluate
    from compress.core.infer import torch_upscaler

    torch.manual_seed(0)  # the start model's initialisation
    start = _trained_start(image_dir, tmp_path, steps=1)
    out = tmp_path / "best.safetensors"  # a learning rate so high that later steps undo earlier gains
    cfg = TrainConfig(steps=8, lr=0.01, lr_schedule="constant", val_every=1, keep_best=True, precision="fp32")
    record = train_model(dataclasses.replace(_recipe(image_dir, 1e-3), train=cfg), out, continue_from=start)
    scores, before = dict(record["val_psnr_y_db"]), record["continued_from"]["val_psnr_y_db"]
    assert record["kept_step"] == max(scores, key=scores.get) < 8
    assert record["history"][-1]["kept_step"] == record["kept_step"]
    assert before < scores[record["kept_step"]] == record["final_val_psnr_y_db"] and record["written"] is True
    pairs = load_pairs(list_images(image_dir), 2)  # the file holds the kept check's weights
    psnr = evaluate(torch_upscaler(load_checkpoint(out).model), pairs, 2).psnr_y_db
    assert psnr == pytest.approx(scores[record["kept_step"]], abs=1e-3)


def test_continue_needs_a_matching_architecture(image_dir, tmp_path):
    other = tmp_path / "wide.safetensors"
    save_checkpoint(tiny_edsr(2), EDSRConfig(scale=2, num_feat=16, num_block=2), other)
    wider = dataclasses.replace(_recipe(image_dir, 1e-3), num_feat=24)
    with pytest.raises(InputError, match="does not match"):
        train_model(wider, tmp_path / "x.safetensors", continue_from=other)


def test_init_from_another_architecture_is_refused_before_any_image_is_read(image_dir, tmp_path, monkeypatch):
    rrdb = tmp_path / "rrdb.safetensors"
    model = build_model(RRDBConfig(scale=2, num_feat=8, num_block=1, num_grow_ch=4))
    save_checkpoint(model, model.cfg, rrdb)
    monkeypatch.setattr("compress.pipeline.trainer.training_images", lambda _data: pytest.fail("images were read"))
    recipe = dataclasses.replace(_recipe(image_dir, 1e-3), init_from=str(rrdb))
    with pytest.raises(InputError, match=r"rrdb\.safetensors: init_from holds a rrdb checkpoint, and the recipe "
                                         r"trains edsr"):
        train_model(recipe, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_continue_from_a_wrong_file_is_named_before_any_image_is_read(image_dir, tmp_path, monkeypatch):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    monkeypatch.setattr("compress.pipeline.trainer.training_images", lambda _data: pytest.fail("images were read"))
    with pytest.raises(InputError, match=r"junk\.safetensors: not a readable safetensors file"):
        train_model(_recipe(image_dir, 1e-3), tmp_path / "x.safetensors", continue_from=junk)
    no_val = dataclasses.replace(_recipe(image_dir, 1e-3), data=str(image_dir), val_data="")
    start = tmp_path / "s.safetensors"
    save_checkpoint(tiny_edsr(2), EDSRConfig(scale=2, num_feat=16, num_block=2), start)
    with pytest.raises(InputError, match="continuing needs validation images"):
        train_model(no_val, tmp_path / "x.safetensors", continue_from=start)


@pytest.mark.parametrize("history", [5, "abc", [1, 2]])
def test_a_sidecar_history_that_is_no_list_of_runs_is_named(image_dir, tmp_path, history):
    start = save_checkpoint(tiny_edsr(2), EDSRConfig(scale=2, num_feat=16, num_block=2), tmp_path / "s.safetensors")
    write_sidecar(start, {"stage": "train", "history": history})
    with pytest.raises(InputError, match=r"s\.safetensors\.json: history is not a list of training runs"):
        train_model(_recipe(image_dir, 1e-3), tmp_path / "x.safetensors", continue_from=start)
    assert not (tmp_path / "x.safetensors").exists()


def _interrupted(recipe: TrainRecipe, out, step: int):
    """The resume file and its record an interrupted run of ``recipe`` leaves after ``step`` steps."""
    resume = out.with_name(out.name + ".resume.pt")
    claim_resume(resume, recipe, None)
    model = build_model(recipe.model_config())
    opt = torch.optim.Adam(model.parameters())
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "seconds": 0.0}, resume)
    return resume, model.state_dict()


def test_a_resume_file_of_another_training_is_refused_and_its_own_is_resumed(image_dir, tmp_path):
    out, recipe = tmp_path / "m.safetensors", _recipe(image_dir, 1e-3)
    resume, weights = _interrupted(recipe, out, step=8)  # interrupted after its last step, before writing
    with pytest.raises(InputError, match="resume.pt: left by an interrupted training with another recipe"):
        train_model(_recipe(image_dir, 2e-3), out)
    assert resume.is_file() and not out.exists()
    record = train_model(recipe, out)  # nothing left to train: the resumed weights are written as they are
    assert record["written"] and record["steps_done"] == 8
    written = load_checkpoint(out).model.state_dict()
    assert all(torch.equal(written[k], v) for k, v in weights.items())
    assert not resume.exists() and not resume.with_name(resume.name + ".json").exists()


def test_an_unreadable_resume_file_is_named(image_dir, tmp_path):
    out, recipe = tmp_path / "m.safetensors", _recipe(image_dir, 1e-3)
    resume, _ = _interrupted(recipe, out, step=5)
    resume.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="resume.pt: not a resume checkpoint"):
        train_model(recipe, out)
    assert not out.exists()


def test_a_training_that_fails_before_its_first_checkpoint_leaves_no_resume_record(image_dir, tmp_path, monkeypatch):
    import compress.pipeline.trainer as trainer

    def broken_fit(*args, **kwargs):
        raise RuntimeError("the forward pass failed")

    monkeypatch.setattr(trainer, "fit", broken_fit)
    out = tmp_path / "m.safetensors"
    with pytest.raises(RuntimeError, match="forward pass failed"):
        train_model(_recipe(image_dir, 1e-3), out)
    assert not list(tmp_path.glob("m.safetensors*"))  # neither the weights nor <out>.resume.pt.json


def test_a_run_over_its_own_start_replaces_weights_and_sidecar_together(image_dir, tmp_path, monkeypatch):
    """``--out`` = ``--continue-from`` (the recipes' example): if the sidecar cannot be written (here NaN in
    the record), the old weights and their sidecar stay as they were, and no staged file is left behind."""
    import compress.pipeline.trainer as trainer

    start = _trained_start(image_dir, tmp_path, steps=1)
    before = (start.read_bytes(), start.with_name(start.name + ".json").read_bytes())
    longer = dataclasses.replace(_recipe(image_dir, 1e-3), train=TrainConfig(steps=60, lr=1e-3, precision="fp32"))
    real = trainer._summary
    monkeypatch.setattr(trainer, "_summary", lambda record: {**real(record), "bad": float("nan")})
    with pytest.raises(ValueError, match="not JSON compliant"):
        train_model(longer, start, continue_from=start)
    assert (start.read_bytes(), start.with_name(start.name + ".json").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    monkeypatch.setattr(trainer, "_summary", real)
    assert train_model(longer, start, continue_from=start)["written"] is True
    assert read_sidecar(start)["sha256"] == sha256_file(start)  # the new pair describes itself


def test_the_seed_decides_the_initial_weights_too(image_dir, tmp_path):
    """From scratch, the same recipe and seed give the same model; another seed, another one."""
    def trained(name, seed):
        recipe = _recipe(image_dir, 1e-3)
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, steps=1, seed=seed))
        train_model(recipe, tmp_path / name)
        return load_checkpoint(tmp_path / name).model.state_dict()

    a, b, c = trained("a.safetensors", 1), trained("b.safetensors", 1), trained("c.safetensors", 2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv_first.weight"], c["conv_first.weight"])


def test_a_diverged_training_removes_its_resume_file(image_dir, tmp_path, monkeypatch):
    """Its last checkpoint may hold the NaN weights; a rerun with a lower rate must not need it deleted by hand."""
    import compress.pipeline.trainer as trainer

    real = trainer.fit

    def diverging(model, *args, **kwargs):
        log = real(model, *args, **kwargs)
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
        return log

    monkeypatch.setattr(trainer, "fit", diverging)
    recipe = _recipe(image_dir, 1e-3)
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, steps=8, ckpt_every=2))
    out = tmp_path / "nan.safetensors"
    with pytest.raises(InputError, match=r"^training diverged: NaN weights; .*its resume file was removed$"):
        train_model(recipe, out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("nan.")] == []  # no weights, no resume file
