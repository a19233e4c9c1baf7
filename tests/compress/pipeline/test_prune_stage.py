import pytest
import torch

from compress.core.checkpoint import load_checkpoint
from compress.core.cpu import host_cpu
from compress.core.files import read_sidecar
from compress.core.recipe import from_mapping
from compress.pipeline.model_stage import stage_model
from pruning.recipe import PruneRecipe
from compress.pipeline.prune_stage import run_prune, storage_bytes
from tests.conftest import as_layout, tiny_edsr

TINY = {
    "schedule": {"initial_sparsity": 0.0, "final_sparsity": 0.5, "begin_step": 0, "end_step": 4, "frequency": 2},
    "patch": {"lr_patch": 16, "batch_size": 2},
    "train": {"steps": 6, "lr": 1e-4, "distill_weight": 0.5},
}


@pytest.fixture
def run_dir(tmp_path):
    src = tmp_path / "edsr.pt"
    torch.save(as_layout(tiny_edsr(2), "edsr-official"), src)
    run = tmp_path / "run"
    stage_model(str(src), None, run)
    return run


@pytest.mark.parametrize(("method", "criterion", "features"), [
    ("channel", "magnitude", 0.0), ("channel", "taylor", 0.0), ("channel", "magnitude", 0.05),
    ("unstructured", "magnitude", 0.0), ("unstructured", "magnitude", 0.05)])
def test_prune_stage_writes_checkpoint_onnx_and_sidecar(run_dir, image_dir, method, criterion, features):
    train = {**TINY["train"], "feature_distill_weight": features}
    channel = {"round_to": 4, "criterion": criterion} if method == "channel" else {}  # what only channel reads
    recipe = from_mapping(PruneRecipe, {**TINY, "train": train, "method": method, "data": str(image_dir), **channel})
    run_prune(run_dir, recipe, method)
    out = run_dir / "10-prune" / method
    side = read_sidecar(out / "model.safetensors")
    assert side["schedule"]["final_sparsity"] == 0.5 and side["method"] == method
    assert side["cpu"] == host_cpu().describe()  # the host whose fine-tuning and PSNR figures these are
    assert side["fine_tune_precision"] == ("bf16" if host_cpu().native_bf16 else "fp32")  # the recipe's "auto"
    assert side["recipe"]["train"]["feature_distill_weight"] == features
    assert set(side["psnr_y_delta_db"]) == {"embedded"}
    assert read_sidecar(out / "model.onnx")["parity_vs_pytorch"]["max_abs_diff"] < 1e-4
    loaded = load_checkpoint(out / "model.safetensors")
    if method == "channel":
        assert side["macs_256x256"] < 0.5 * side["macs_256x256_before"]
        assert loaded.config.num_feat == 8
    else:
        assert side["overall_sparsity"] == pytest.approx(0.5, abs=0.01)
        assert all(v == pytest.approx(0.5, abs=0.001) for v in side["layer_sparsity"].values())  # each layer at 0.5
        weights = [p for p in loaded.model.parameters() if p.ndim == 4]  # the file's, first and last convs included
        whole = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        assert side["conv_weight_sparsity"] == pytest.approx(whole, abs=1e-4)
        assert side["conv_weight_sparsity"] < side["overall_sparsity"]  # the dense first and last convolutions
        assert side["macs_256x256"] == side["macs_256x256_before"]
        assert side["storage"]["sparse_bitmap_bytes"] < side["storage_before"]["sparse_bitmap_bytes"]
    assert (run_dir / "00-model" / "model.safetensors").is_file()  # the input is never edited


def test_a_global_scope_reaches_the_masks(run_dir, image_dir):
    recipe = from_mapping(PruneRecipe, {**TINY, "method": "unstructured", "scope": "global", "data": str(image_dir)})
    run_prune(run_dir, recipe, "global")
    side = read_sidecar(run_dir / "10-prune" / "global" / "model.safetensors")
    assert side["overall_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert max(side["layer_sparsity"].values()) - min(side["layer_sparsity"].values()) > 0.01  # one threshold


def test_prune_stage_measures_the_baseline_on_extra_eval_sets(run_dir, image_dir):
    recipe = from_mapping(PruneRecipe, {**TINY, "method": "channel", "data": str(image_dir), "round_to": 4})
    run_prune(run_dir, recipe, "channel", extra_eval=[str(image_dir)])
    side = read_sidecar(run_dir / "10-prune" / "channel" / "model.safetensors")
    assert set(side["psnr_y_delta_db"]) == {"embedded", "imgs"}
    assert "imgs" not in read_sidecar(run_dir / "00-model" / "model.safetensors")["quality"]
    before = side["quality_before"]["imgs"]["psnr_y_db"]
    assert side["psnr_y_delta_db"]["imgs"] == pytest.approx(side["quality"]["imgs"]["psnr_y_db"] - before, abs=1e-3)


def test_prune_stage_prunes_the_sub_pixel_upsampler_when_asked(run_dir, image_dir):
    recipe = from_mapping(PruneRecipe, {**TINY, "method": "channel", "data": str(image_dir), "round_to": 4,
                                        "upsample_final_sparsity": 0.25})
    run_prune(run_dir, recipe, "shuffle")
    side = read_sidecar(run_dir / "10-prune" / "shuffle" / "model.safetensors")
    assert side["widths"]["upsample.0"] == 12 * 4  # 16 shuffle groups of 2x2 -> 12 (the trunk: 16 -> 8)
    assert load_checkpoint(run_dir / "10-prune" / "shuffle" / "model.safetensors").config.up_feat == 12
    assert read_sidecar(run_dir / "10-prune" / "shuffle" / "model.onnx")["parity_vs_pytorch"]["max_abs_diff"] < 1e-4


def test_storage_bytes_counts_zeros():
    model = torch.nn.Conv2d(4, 4, 3, bias=False)
    dense = storage_bytes(model)
    torch.nn.init.zeros_(model.weight)
    assert dense["dense_fp32_bytes"] == 4 * 144
    assert storage_bytes(model)["sparse_bitmap_bytes"] == 18


@pytest.mark.parametrize("method", ["channel", "unstructured"])
def test_both_methods_fine_tune_the_dense_model_until_begin_step_and_train_steps_in_all(run_dir, image_dir, method,
                                                                                         monkeypatch):
    import compress.pipeline.prune_stage as stage

    runs, real_fit = [], stage.fit

    def counting_fit(model, batches, cfg, *args, **kwargs):  # noqa: ANN001, ANN202
        runs.append(cfg.steps)
        return real_fit(model, batches, cfg, *args, **kwargs)

    monkeypatch.setattr(stage, "fit", counting_fit)
    schedule = {**TINY["schedule"], "begin_step": 2, "end_step": 4}
    recipe = from_mapping(PruneRecipe, {**TINY, "schedule": schedule, "method": method, "data": str(image_dir),
                                        **({"round_to": 4} if method == "channel" else {})})
    run_prune(run_dir, recipe, method)
    assert sum(runs) == recipe.train.steps == 6
    if method == "channel":
        assert runs == [2, 2, 2]  # dense until step 2, then a segment after each of the events at 2 and 4
        events = read_sidecar(run_dir / "10-prune" / method / "model.safetensors")["events"]
        assert [e["step"] for e in events] == [2, 4]
        assert events[-1]["conv_channels_removed"] > 0 and events[-1]["conv_channels_kept"] > 0


def test_taylor_gradients_come_from_the_fine_tuning_loss_not_the_teacher_gap_alone():
    """At the first event the student equals its teacher: the distillation term alone has no gradient."""
    import copy

    import numpy as np

    from compress.core.train_config import TrainConfig
    from compress.pipeline.prune_stage import loss_gradients

    torch.manual_seed(0)
    model = tiny_edsr(2)
    teacher = copy.deepcopy(model).eval()
    rng = np.random.default_rng(0)
    batch = (rng.random((2, 3, 8, 8), dtype=np.float32), rng.random((2, 3, 16, 16), dtype=np.float32))
    loss_gradients(model, batch, teacher, TrainConfig(steps=1, distill_weight=0.5))
    assert max(p.grad.abs().max().item() for p in model.parameters()) > 0
    loss_gradients(model, batch, teacher, TrainConfig(steps=1, distill_weight=1.0))  # the teacher's output only
    assert max(p.grad.abs().max().item() for p in model.parameters()) == 0
