import pytest
import torch

from compress.core.errors import InputError
from compress.core.files import read_sidecar
from compress.core.recipe import from_mapping
from compress.pipeline.model_stage import stage_model
from quantization.recipe import QuantRecipe
from compress.pipeline.quantize_stage import run_quantize
from tests.conftest import as_layout, tiny_edsr


def _staged_run(tmp_path):
    """A run folder whose baseline is a tiny EDSR x2 in BasicSR's layout."""
    src = tmp_path / "edsr.pth"
    torch.save({"params": as_layout(tiny_edsr(2), "edsr-basicsr")}, src)
    run = tmp_path / "run"
    stage_model(str(src), None, run)
    return run


def test_quantize_stage_ptq_mixed_qat(tmp_path, image_dir):
    run = _staged_run(tmp_path)
    recipe = from_mapping(QuantRecipe, {
        "ptq_methods": ["minmax", "percentile"], "calibration": {"lr_patch": 16, "patches_per_image": 2},
        "calibration_data": str(image_dir), "data": str(image_dir), "budget_db": 0.0, "max_float_nodes": 1,
        "qat_calibration": "auto", "qat_keep": "always",
        "patch": {"lr_patch": 16, "batch_size": 2}, "train": {"steps": 3, "lr": 1e-5},
        "tflite_qat": {"enabled": True, "steps": 2, "patch": {"lr_patch": 16, "batch_size": 2}}, "nncf": {"qat": True},
    })
    summary = run_quantize(run, recipe, "model")
    out = run / "20-quantize" / "model"
    for name in ("minmax", "percentile", "mixed", "qat"):
        side = read_sidecar(out / f"model_int8_{name}.onnx")
        assert side["kernels"]["integer_convs"] > 0
        assert set(side["psnr_y_delta_db"]) == {"embedded"}
        assert side["calibration"]["samples"] == 6
    mixed = read_sidecar(out / "model_int8_mixed.onnx")
    assert len(mixed["excluded_nodes"]) <= 1 and mixed["kernels"]["float_convs"] >= len(mixed["excluded_nodes"])
    assert all(f"Conv:{n}" in mixed["kernels"]["float_nodes"] for n in mixed["excluded_nodes"])
    assert read_sidecar(out / "model_int8_percentile.onnx")["calibration"]["percentile"] == 99.99
    qat = read_sidecar(out / "model_int8_qat.onnx")
    start = qat["against_ptq_start"]["ptq_start"]  # auto: the PTQ model that scored best
    assert start in ("model_int8_minmax.onnx", "model_int8_percentile.onnx")
    assert start == f"model_int8_{qat['calibration']['method']}.onnx" and qat["calibration"]["tensors_with_qat_ranges"] > 0
    assert qat["qat_precision"] == "fp32"  # the recipe says "auto": QAT simulates integers in FP32, bf16 CPU or not
    nncf_ir = read_sidecar(out / "model_int8_nncf.xml")  # NNCF's INT8 IR beside the ORT-calibrated graphs
    assert nncf_ir["format"] == "openvino-ir-int8" and nncf_ir["nncf"]["fake_quantize_nodes"] > 0
    assert nncf_ir["calibration"]["samples"] == 6 and (out / "model_int8_nncf.bin").is_file()
    # NNCF's weight width follows its overflow fix, not the ORT graphs' weight_range
    assert "weights" not in nncf_ir and "overflow_fix" in nncf_ir["nncf"]
    assert read_sidecar(out / "model_int8_minmax.onnx")["weights"]["bits"] in (7, 8)
    nncf_qat = read_sidecar(out / "model_int8_nncf_qat.xml")  # NNCF's QAT from that PTQ (kept: qat_keep always)
    assert nncf_qat["method"] == "qat-nncf" and nncf_qat["against_ptq_start"]["ptq_start"] == "model_int8_nncf.xml"
    assert nncf_qat["nncf"]["trainable_range_values"] > 0 and (out / "model_int8_nncf_qat.bin").is_file()
    assert not (out / "nncf_qat_candidate.xml").exists()
    tfl = read_sidecar(out / "model_int8_tfmot_qat.tflite")
    assert tfl["method"] == "tfmot-qat" and "CONV_2D:int8" in tfl["op_input_dtypes"]
    assert tfl["calibration"]["samples"] == 6  # the recipe's calibration folder, as ORT's and NNCF's
    assert tfl["calibration"]["images"] == sorted(p.name for p in image_dir.iterdir())
    fp32 = read_sidecar(out / "model_int8_minmax.onnx")["fp32_quality"]["embedded"]["psnr_y_db"]
    expected = round(tfl["quality"]["embedded"]["psnr_y_db"] - fp32, 4)  # a change in dB, like every other row
    assert tfl["psnr_y_delta_db"] == {"embedded": expected} == summary["psnr_y_delta_db"]["model_int8_tfmot_qat.tflite"]


def test_missing_source(tmp_path):
    recipe = QuantRecipe()
    with pytest.raises(InputError, match="quantize source 'prune/channel' not found"):
        run_quantize(tmp_path, recipe, "prune/channel")


def test_qat_that_does_not_beat_its_ptq_start_is_not_kept(tmp_path, image_dir, capsys):
    run = _staged_run(tmp_path)
    out = run / "20-quantize" / "model"
    out.mkdir(parents=True)
    (out / "model_int8_qat.onnx").write_bytes(b"stale")  # an earlier run's QAT models must not survive
    (out / "model_int8_nncf_qat.xml").write_bytes(b"stale")
    (out / "model_int8_nncf_qat.bin").write_bytes(b"stale")
    stale = ["model_int8_entropy.onnx", "model_int8_entropy.onnx.json", "model_int8_mixed.onnx",
             "model_int8_tfmot_qat.tflite"]  # made by an earlier recipe, not by this one: they would be reported
    for name in stale:
        (out / name).write_bytes(b"stale")
    recipe = from_mapping(QuantRecipe, {
        "ptq_methods": ["minmax"], "calibration": {"lr_patch": 16, "patches_per_image": 2},
        "calibration_data": str(image_dir), "data": str(image_dir), "mixed_precision": False,
        "qat_calibration": "minmax", "patch": {"lr_patch": 16, "batch_size": 2},
        "train": {"steps": 6, "lr": 0.5, "warmup_steps": 0, "val_every": 3},  # a rate that ruins it
        "tflite_qat": {"enabled": False},
        "nncf": {"qat": True},
    })
    result = run_quantize(run, recipe, "model")
    verdict = result["psnr_y_delta_db"]["model_int8_qat.onnx"]["not_kept"]
    assert verdict["qat_psnr_y_db"] <= verdict["ptq_start_psnr_y_db"] and verdict["ptq_start"] == "model_int8_minmax.onnx"
    assert not (out / "model_int8_qat.onnx").exists() and (out / "model_int8_minmax.onnx").is_file()
    printed = capsys.readouterr().out
    assert "model_int8_qat.onnx not kept" in printed
    # val_every: the fake-quantized model scored on the calibration crops during the fine-tuning
    assert [step for step, _ in verdict["val_trace"]] == [3, 6]
    assert "[qat] step 3: val PSNR-Y" in printed
    assert not (out / "model_int8_nncf_qat.xml").exists() and not (out / "model_int8_nncf_qat.bin").exists()
    assert (out / "model_int8_nncf.xml").is_file()
    nncf_verdict = result["psnr_y_delta_db"]["model_int8_nncf_qat.xml"]["not_kept"]  # NNCF's QAT, same rule
    assert nncf_verdict["ptq_start"] == "model_int8_nncf.xml"
    assert nncf_verdict["qat_psnr_y_db"] <= nncf_verdict["ptq_start_psnr_y_db"]
    assert [step for step, _ in nncf_verdict["val_trace"]] == [3, 6]
    assert "model_int8_nncf_qat.xml not kept" in printed
    assert not (out / "nncf_qat_candidate.xml").exists() and not (out / "nncf_qat_candidate.bin").exists()
    assert not [name for name in stale if (out / name).exists()]


def test_qat_plan_runs_only_the_qat_from_the_best_ptq_start(tmp_path, capsys):
    from compress.pipeline.quantize_stage import qat_plan

    ort, nncf = tmp_path / "model_int8_percentile.onnx", tmp_path / "model_int8_nncf.xml"
    scores = {ort: 27.978, nncf: 27.951}
    both = {"qat": True, "nncf": {"qat": True}}
    each = from_mapping(QuantRecipe, both)
    assert qat_plan(each, ort, nncf, scores.__getitem__) == {"ort": True, "nncf": True}  # each: both run, no scoring
    best = from_mapping(QuantRecipe, {**both, "qat_from": "best"})
    plan = qat_plan(best, ort, nncf, scores.__getitem__)
    assert plan["ort"] and not plan["nncf"]
    assert plan["start_psnr_y_db"] == {ort.name: 27.978, nncf.name: 27.951}
    assert "QAT starts from model_int8_percentile.onnx" in capsys.readouterr().out
    scores[ort] = float("nan")  # an unscorable start never wins: the other QAT runs
    assert qat_plan(best, ort, nncf, scores.__getitem__)["nncf"] and not qat_plan(best, ort, nncf, scores.__getitem__)["ort"]
    scores[ort] = 27.978
    scores[nncf] = 28.1
    assert qat_plan(best, ort, nncf, scores.__getitem__)["nncf"] and not qat_plan(best, ort, nncf, scores.__getitem__)["ort"]
    # one QAT possible (NNCF absent, or ORT's QAT off): it runs without a contest
    assert qat_plan(best, ort, None, scores.__getitem__) == {"ort": True, "nncf": False}
    assert qat_plan(best, None, nncf, scores.__getitem__) == {"ort": False, "nncf": True}
    with pytest.raises(InputError, match=r"qat_from must be one of \('each', 'best'\), got 'first'"):
        from_mapping(QuantRecipe, {"qat_from": "first"})


def test_qat_from_best_runs_one_qat_and_names_the_other(tmp_path, image_dir):
    run = _staged_run(tmp_path)
    out = run / "20-quantize" / "model"
    out.mkdir(parents=True)
    for stale in ("model_int8_qat.onnx", "model_int8_nncf_qat.xml"):  # an earlier run's: the one not run goes
        (out / stale).write_bytes(b"stale")
    recipe = from_mapping(QuantRecipe, {
        "ptq_methods": ["minmax"], "calibration": {"lr_patch": 16, "patches_per_image": 2},
        "calibration_data": str(image_dir), "data": str(image_dir), "mixed_precision": False,
        "qat": True, "qat_from": "best", "qat_keep": "always", "patch": {"lr_patch": 16, "batch_size": 2},
        "train": {"steps": 2, "lr": 1e-5}, "tflite_qat": {"enabled": False}, "nncf": {"qat": True},
    })
    result = run_quantize(run, recipe, "model")["psnr_y_delta_db"]
    names = {"ort": "model_int8_qat.onnx", "nncf": "model_int8_nncf_qat.xml"}
    ran = [k for k, name in names.items() if "not_run" not in result.get(name, {})]
    assert len(ran) == 1
    kept, skipped = names[ran[0]], names[{"ort": "nncf", "nncf": "ort"}[ran[0]]]
    plan = read_sidecar(out / kept)["qat_plan"]
    assert plan == result[skipped]["not_run"] and plan[ran[0]]
    starts = plan["start_psnr_y_db"]
    assert set(starts) == {"model_int8_minmax.onnx", "model_int8_nncf.xml"}
    assert not (out / skipped).exists()


def test_a_quantize_stage_interrupted_midway_leaves_no_folder_of_some_artifacts(tmp_path, image_dir, monkeypatch):
    import compress.pipeline.quantize_stage as stage

    run = _staged_run(tmp_path)
    recipe = from_mapping(QuantRecipe, {
        "ptq_methods": ["minmax"], "calibration": {"lr_patch": 16, "patches_per_image": 1},
        "calibration_data": str(image_dir), "data": str(image_dir), "mixed_precision": False,
        "nncf": {"enabled": False}, "tflite_qat": {"enabled": False},
    })
    reached = []

    def interrupted(*args, **kwargs):
        reached.append(sorted(p.name for p in (run / "20-quantize" / "model").iterdir()))
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "_qat_start", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_quantize(run, recipe, "model")
    assert "model_int8_minmax.onnx" in reached[0]  # the PTQ model was written when QAT was interrupted
    assert not (run / "20-quantize" / "model").exists()  # and went with the rest of the stage's folder


class _Absent:
    def absence(self) -> str:
        return "tensorflow is not installed"


def test_a_tflite_qat_without_tensorflow_is_refused_before_the_earlier_output_goes(tmp_path, monkeypatch):
    import compress.pipeline.quantize_stage as stage

    run = _staged_run(tmp_path)
    earlier = run / "20-quantize" / "model" / "model_int8_minmax.onnx"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier run's")
    monkeypatch.setattr(stage, "runtime", lambda name: _Absent())
    with pytest.raises(InputError, match=r"tflite_qat needs TensorFlow and tfmot \(tensorflow is not installed\)"):
        run_quantize(run, from_mapping(QuantRecipe, {"tflite_qat": {"enabled": True}}), "model")
    assert earlier.read_bytes() == b"an earlier run's"


def test_qat_of_an_unstructured_pruned_source_keeps_its_zeros(tmp_path, image_dir):
    """Sparsity-preserving QAT: ORT's and NNCF's QAT hold the pruned model's zero weights, and the INT8
    graph stores them as 0 (symmetric weights)."""
    import onnx
    from onnx import numpy_helper

    from compress.core.checkpoint import load_checkpoint
    from compress.pipeline.contract import quantize_dir
    from compress.pipeline.prune_stage import run_prune
    from pruning.recipe import PruneRecipe

    run = _staged_run(tmp_path)
    run_prune(run, from_mapping(PruneRecipe, {
        "method": "unstructured", "data": str(image_dir), "patch": {"lr_patch": 16, "batch_size": 2},
        "schedule": {"initial_sparsity": 0.0, "final_sparsity": 0.5, "begin_step": 0, "end_step": 2, "frequency": 1},
        "train": {"steps": 3, "lr": 1e-4}}), "sparse")
    pruned = load_checkpoint(run / "10-prune" / "sparse" / "model.safetensors").model
    zeros = sum(int((p == 0).sum()) for p in pruned.parameters() if p.ndim == 4)
    recipe = from_mapping(QuantRecipe, {
        "ptq_methods": ["minmax"], "calibration": {"lr_patch": 16, "patches_per_image": 1},
        "calibration_data": str(image_dir), "data": str(image_dir), "mixed_precision": False,
        "qat_calibration": "minmax", "qat_keep": "always", "patch": {"lr_patch": 16, "batch_size": 2},
        "train": {"steps": 4, "lr": 1e-2, "warmup_steps": 0},  # a rate that would move every weight
        "tflite_qat": {"enabled": False}, "nncf": {"qat": True},
    })
    run_quantize(run, recipe, "prune/sparse")
    out = quantize_dir(run, "prune/sparse")
    for name in ("model_int8_qat.onnx", "model_int8_nncf_qat.xml"):
        assert read_sidecar(out / name)["zero_weights_held"] == zeros > 0
    int8 = [numpy_helper.to_array(t) for t in onnx.load(str(out / "model_int8_qat.onnx")).graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert sum(int((w == 0).sum()) for w in int8) >= zeros


def test_the_scoring_crops_come_from_the_images_the_calibration_draws_from(tmp_path):
    """max_images and the patch filter of iter_patches hold for the crops every choice is scored on."""
    from compress.pipeline.quantize_stage import _centre_crops
    from quantization.calibration import CalibrationConfig, iter_patches
    from tests.conftest import write_image

    paths = [write_image(tmp_path / "a.png", (200, 160)), write_image(tmp_path / "b.png", (40, 40)),
             write_image(tmp_path / "c.png", (200, 160)), write_image(tmp_path / "d.png", (200, 160))]
    cfg = CalibrationConfig(lr_patch=32, patches_per_image=1, max_images=3)
    crops = _centre_crops(paths, 2, cfg)
    assert [c.name for c in crops] == ["a", "c"]  # b's LR (20x20) fits no patch, d is past max_images
    assert len(list(iter_patches(paths, 2, cfg))) == len(crops)
    assert crops[0].lr.shape == (80, 80, 3) and crops[0].hr.shape == (160, 160, 3)  # min(SCORE_CROP, 100, 80)
