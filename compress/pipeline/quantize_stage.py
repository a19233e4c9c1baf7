"""The ``quantize`` stage: a run's FP32 (or pruned) checkpoint -> INT8 QDQ ONNX models with sidecars."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import onnx
import torch
from PIL import Image

from compress.core.checkpoint import LoadedModel, load_checkpoint
from compress.core.data import ImagePair, list_images, load_pair, random_patches, shrunk_size
from compress.core.default_data import WALLPAPER_MAX_SIDE, split_paths, training_images, training_pairs, wallpaper_paths
from compress.core.distributed import is_writer, rank0_value
from compress.core.errors import InputError, first_line
from compress.core.evaluate import eval_sets, evaluate, psnr_delta_db, quality
from compress.core.files import fresh_stage_folder, read_sidecar, sidecar_path, write_sidecar
from compress.core.recipe import to_dict
from compress.core.train import TrainLog, fit
from compress.pipeline.contract import find, path_of, quantize_dir
from export.runtimes import open_upscaler, ort_upscaler, runtime
from export.onnx_export import export_onnx, parity
from export.onnx_tail import recorded_rewrites
from pruning.magnitude import freeze_zeros
from quantization.calibration import CalibrationConfig, PatchCalibrationReader, iter_patches
from quantization.nncf_ptq import nncf_quantize
from quantization.nncf_qat import prepare_nncf_qat, qat_ir
from quantization.ptq import (Calibration, Int8Options, calibrate, cpu_has_vnni, kernel_report, preprocess, quantize,
                              range_summary, reduce_weight_range)
from quantization.qat import prepare_qat, qat_train_config, strip_qat
from quantization.qat_ranges import load_qat_ranges, pin_image_ranges, write_qat_ranges
from quantization.recipe import QuantRecipe
from quantization.sensitivity import choose_float_nodes, rank_sensitivity

SCORE_CROP = 96  # LR side of the centre crops that score sensitivity


def source_checkpoint(run: Path, source: str) -> Path:
    """``model`` (the baseline) or ``prune/<name>`` (a pruned model) inside ``run``."""
    name = source.removeprefix("prune/")
    if source != "model" and not (source.startswith("prune/") and name and "/" not in name and "\\" not in name
                                  and name not in (".", "..")):
        raise InputError(f"{run}: quantize source must be 'model', 'auto' or 'prune/<recipe name>', got {source!r}")
    path = path_of(run, "baseline") if source == "model" else path_of(run, "pruned", name)
    if not path.is_file():
        raise InputError(f"{path}: quantize source {source!r} not found in run {run} (run make model / make prune first)")
    read_sidecar(path)  # missing, corrupt, or describing another file: refused, as by export and prune
    return path


def auto_sources(run: Path) -> list[str]:
    """The baseline and every channel-pruned model of the run (unstructured zeros gain no speed in INT8;
    quantizing one by name keeps its zeros: QAT holds them, symmetric weights quantize them to 0)."""
    found = ["model"]
    for ckpt in find(run, "pruned"):
        if sidecar_path(ckpt).is_file() and read_sidecar(ckpt).get("method") == "channel":
            found.append(f"prune/{ckpt.parent.name}")
    return found


def _calibration_paths(recipe: QuantRecipe) -> list[Path]:
    return split_paths("calibration") if recipe.calibration_data == "default" else list_images(recipe.calibration_data)


def checked_images(recipe: QuantRecipe, scale: int) -> list[Path]:
    """The calibration images, once the QAT training images (when a QAT will run) are known to exist and
    each to fit its QAT patch, and one calibration image is large enough for a patch (all read from the
    file headers): a missing or empty folder, or a patch an image does not fit, is refused before the
    stage replaces the earlier results and runs its PTQs."""
    patches = [recipe.patch.lr_patch] if recipe.qat or recipe.nncf.qat else []
    patches += [recipe.tflite_qat.patch.lr_patch] if recipe.tflite_qat.enabled else []
    if patches:
        _check_training_sizes(recipe.data, scale, max(patches))
    paths = _calibration_paths(recipe)
    side = recipe.calibration.lr_patch * scale
    if not any(min(_header_size(p)) >= side for p in paths[: recipe.calibration.max_images or None]):
        where = "calibration" if recipe.calibration_data == "default" else recipe.calibration_data
        raise InputError(f"{where}: no image fits an LR patch of {recipe.calibration.lr_patch} px at x{scale} "
                         f"(needs {side}x{side} px); got: {', '.join(p.name for p in paths[:5])}")
    return paths


def _check_training_sizes(data: str, scale: int, lr_patch: int) -> None:
    """Each QAT training image's LR size, from its header, against the patch (as random_patches checks it
    once the images are decoded, by then after every PTQ); the default wallpapers are shrunk first."""
    walls = set(wallpaper_paths()) if data == "default" else set()
    for path in training_images(data):
        w, h = _header_size(path)
        if path in walls and max(w, h) > WALLPAPER_MAX_SIDE:
            w, h = shrunk_size((w, h), WALLPAPER_MAX_SIDE)
        if min(w, h) // scale < lr_patch:
            raise InputError(f"{path}: LR image {w // scale}x{h // scale} at x{scale} is smaller than the "
                             f"{lr_patch}x{lr_patch} QAT patch; use a smaller patch lr_patch in the recipe or "
                             "remove the image")


def _header_size(path: Path) -> tuple[int, int]:
    """An image's size from its header."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: not a readable image ({first_line(exc)})") from None


def _centre_crops(paths: list[Path], scale: int, cfg: CalibrationConfig) -> list[ImagePair]:
    """Centre crops of the calibration images the calibration draws from (:func:`iter_patches`: the
    first ``max_images``, those that fit a patch), decoded one at a time (only the crops are kept)."""
    out = []
    for path in paths[: cfg.max_images or None]:
        p = load_pair(path, scale)
        h, w = p.lr.shape[:2]
        if h < cfg.lr_patch or w < cfg.lr_patch:
            continue
        s = min(SCORE_CROP, h, w)
        y, x = (h - s) // 2, (w - s) // 2
        out.append(ImagePair(p.name, p.hr[y * scale:(y + s) * scale, x * scale:(x + s) * scale].copy(),
                             p.lr[y:y + s, x:x + s].copy()))
    return out


def _qat_start(recipe: QuantRecipe, reader: PatchCalibrationReader, pre: Path, out_dir: Path,
               caches: dict[str, Path], opts: Int8Options) -> Path:
    """The PTQ model QAT starts from (its calibration, no training), quantized if PTQ did not make it."""
    method = recipe.qat_calibration
    if method not in caches:
        caches[method] = out_dir / f"calibration_{method}.json"
        calibrate(pre, reader, Calibration(method), caches[method], recipe.percentile)
    path = out_dir / f"model_int8_{method}.onnx"
    if not path.is_file():
        path = quantize(pre, out_dir / f"ptq_start_{method}.onnx", caches[method], Calibration(method), options=opts)
    return path


def _run_qat(loaded: LoadedModel, recipe: QuantRecipe, reader: PatchCalibrationReader, pre: Path, out_dir: Path,
             start: Path, rr: bool, opts: Int8Options, finish, score, plan: dict) -> dict:  # noqa: ANN001
    """QAT under the chosen calibration's ranges, then ORT quantizes the trained model with exactly those.

    Kept only if it beats its PTQ starting point on the calibration crops (``recipe.qat_keep``).
    """
    scale = loaded.scale
    model = copy.deepcopy(loaded.model)
    state = prepare_qat(model, iter_patches(reader.paths, scale, recipe.calibration), reduce_range=rr)
    qat_method = Calibration(recipe.qat_calibration)
    if qat_method is not Calibration.MINMAX:  # train under the ranges of the chosen calibration
        load_qat_ranges(state, pre, out_dir / f"calibration_{recipe.qat_calibration}.json")
    pin_image_ranges(state, pre)  # the image's tensors train on the exact ranges the INT8 graph gets
    log, held_zeros = _fine_tune(model, loaded, recipe, "qat")
    strip_qat(state)
    qat_fp32 = export_onnx(model, out_dir / "model_qat_fp32.onnx")
    qat_pre = preprocess(qat_fp32, out_dir / "model_qat_fp32_pre.onnx")
    cache = out_dir / "calibration_qat.json"
    calibrate(qat_pre, reader, qat_method, cache, recipe.percentile)  # tensors QAT did not simulate
    trained = write_qat_ranges(state, qat_pre, cache)
    candidate = quantize(qat_pre, out_dir / "qat_candidate.onnx", cache, qat_method, options=opts)
    final = out_dir / "model_int8_qat.onnx"
    verdict = _judge_qat(candidate, start, final, recipe, score)
    verdict["val_trace"] = [(step, round(db, 4)) for step, db in log.val_psnr_y_db]
    if not verdict["kept"]:
        return {final.name: {"not_kept": verdict}}
    finish(candidate.replace(final), {"method": "qat", "calibration": {"method": recipe.qat_calibration,
                                      "samples": reader.count, "tensors_with_qat_ranges": trained},
                                      "against_ptq_start": verdict, "qat_plan": plan, "excluded_nodes": [],
                                      "qat_seconds": round(log.seconds, 1), "qat_precision": log.precision,
                                      "qat_loss": log.loss[-5:], "zero_weights_held": held_zeros})
    return {}


def _fine_tune(model: torch.nn.Module, loaded: LoadedModel, recipe: QuantRecipe, desc: str,
               channels_last: bool | None = None) -> tuple[TrainLog, int]:
    """QAT fine-tuning of ``model`` with the recipe's ``patch`` / ``train``, distilled from the FP32 source.

    Sparsity-preserving: the zero weights of a pruned source stay zero (:func:`freeze_zeros`); returns
    the log and how many zeros were held.

    With ``train.val_every`` set, the fake-quantized model is scored on the calibration crops every that
    many steps (``TrainLog.val_psnr_y_db``, in the log and the sidecar): a trace of what the fine-tuning
    does to the quality the stage judges it on.
    """
    pairs = training_pairs(recipe.data, loaded.scale)
    teacher = loaded.model.eval() if recipe.train.uses_teacher else None
    val = _centre_crops(_calibration_paths(recipe), loaded.scale, recipe.calibration) if recipe.train.val_every else ()
    cfg = qat_train_config(recipe.train)  # FP32 unless the recipe asks for bf16: QAT simulates integer arithmetic
    held = freeze_zeros(model)
    try:
        log = fit(model, random_patches(pairs, loaded.scale, recipe.patch), cfg, loaded.scale, val_pairs=val,
                  teacher=teacher, desc=desc, channels_last=channels_last)
    finally:
        held.remove()
    return log, held.zeros


def _drop(path: Path) -> None:
    """Delete an artifact with its sidecar (and an IR's weights) if present."""
    for stale in (path, sidecar_path(path), path.with_suffix(".bin") if path.suffix == ".xml" else None):
        if stale is not None:
            stale.unlink(missing_ok=True)


def _judge_qat(candidate: Path, start: Path, final: Path, recipe: QuantRecipe, score) -> dict:  # noqa: ANN001
    """Whether a QAT candidate beats its PTQ start on the calibration crops; a loser is deleted with any
    earlier ``final`` of this stage (no longer true), and the PTQ model stands."""
    qat_db, start_db = score(candidate), score(start)
    verdict = {"qat_psnr_y_db": round(qat_db, 4), "ptq_start": start.name, "ptq_start_psnr_y_db": round(start_db, 4),
               "split": "calibration crops", "kept": recipe.qat_keep == "always" or qat_db > start_db}
    if not verdict["kept"]:
        _drop(candidate)
        _drop(final)
        print(f"[quantize] {final.name} not kept: {qat_db:.3f} dB on the calibration crops is not above its PTQ "
              f"start {start.name} ({start_db:.3f} dB); the PTQ model stands", flush=True)
    return verdict


def _run_nncf_ptq(loaded: LoadedModel, recipe: QuantRecipe, reader: PatchCalibrationReader, fp32: Path,
                  out_dir: Path, finish) -> tuple[Path, list]:  # noqa: ANN001
    """NNCF's PTQ of the OpenVINO IR; returns the IR and the calibration patches (NNCF's QAT reuses them)."""
    patches = list(iter_patches(reader.paths, loaded.scale, recipe.calibration))
    path, ran = nncf_quantize(fp32, patches, out_dir / "model_int8_nncf.xml", recipe.nncf, cpu_has_vnni())
    finish(path, {"method": "ptq-nncf", "calibration": {"method": f"nncf {recipe.nncf.activation_ranges}",
                                                         "samples": len(patches)}, "nncf": ran,
                  "excluded_nodes": ran["float_convs"]})
    return path, patches


def qat_plan(recipe: QuantRecipe, ort_start: Path | None, nncf_start: Path | None, score) -> dict:  # noqa: ANN001
    """Which QATs run: ``{"ort": bool, "nncf": bool}``, and under ``qat_from = "best"`` the scores that chose.

    Args:
        recipe: the quantize recipe (``qat``, ``nncf.qat``, ``qat_from``).
        ort_start: the PTQ model ONNX Runtime's QAT would start from (None: that QAT is off).
        nncf_start: NNCF's PTQ IR (None: NNCF's QAT cannot run).
        score: PSNR-Y (dB) of an artifact on the calibration crops.
    """
    plan = {"ort": ort_start is not None, "nncf": recipe.nncf.qat and nncf_start is not None}
    if recipe.qat_from == "best" and plan["ort"] and plan["nncf"]:
        ort_db, nncf_db = score(ort_start), score(nncf_start)
        nncf_wins = bool(nncf_db > ort_db or math.isnan(ort_db))  # a NaN score never wins
        plan = rank0_value({"ort": not nncf_wins, "nncf": nncf_wins, "split": "calibration crops",
                            "start_psnr_y_db": {ort_start.name: round(ort_db, 4), nncf_start.name: round(nncf_db, 4)}})
        chosen = ort_start if plan["ort"] else nncf_start
        print(f"[quantize] qat_from = best: QAT starts from {chosen.name} (calibration crops: {ort_start.name} "
              f"{ort_db:.3f} dB, {nncf_start.name} {nncf_db:.3f} dB)", flush=True)
    return plan


def _run_nncf_qat(loaded: LoadedModel, recipe: QuantRecipe, patches: list, start: Path, out_dir: Path,
                  finish, score, plan: dict) -> dict:  # noqa: ANN001
    """NNCF QAT: NNCF's PTQ of the PyTorch model, ranges and weights trained (distilled from FP32), as IR.

    Kept only if it beats ``start`` (NNCF's PTQ IR) on the calibration crops (``recipe.qat_keep``).
    """
    model, ran = prepare_nncf_qat(loaded.model, patches, recipe.nncf, cpu_has_vnni())
    # NCHW even under bf16: NNCF's CPU FakeQuantize kernels are several times slower on channels_last tensors
    log, held_zeros = _fine_tune(model, loaded, recipe, "nncf-qat", channels_last=False)
    candidate, final = out_dir / "nncf_qat_candidate.xml", out_dir / "model_int8_nncf_qat.xml"
    try:
        verdict = _judge_qat(qat_ir(model, candidate), start, final, recipe, score)
        verdict["val_trace"] = [(step, round(db, 4)) for step, db in log.val_psnr_y_db]
        if not verdict["kept"]:
            return {final.name: {"not_kept": verdict}}
        _drop(final)  # no earlier .xml may pair with the new weights, even for a moment
        candidate.with_suffix(".bin").replace(final.with_suffix(".bin"))
        candidate.replace(final)
    finally:
        _drop(candidate)
    finish(final, {"method": "qat-nncf", "calibration": {"method": f"nncf {ran['activation_ranges']}",
                                      "samples": len(patches)}, "nncf": ran, "against_ptq_start": verdict, "qat_plan": plan,
                                      "excluded_nodes": ran["float_convs"], "qat_seconds": round(log.seconds, 1),
                                      "qat_precision": log.precision, "qat_loss": log.loss[-5:],
                                      "zero_weights_held": held_zeros})
    return {}


def _run_mixed(recipe: QuantRecipe, pre: Path, cache: Path, method: Calibration, score, target: float,  # noqa: ANN001
               out_dir: Path, opts: Int8Options, finish, about: dict) -> None:  # noqa: ANN001
    """Mixed precision: the most sensitive convolutions stay float until INT8 is within the budget."""
    base, ranking = rank_sensitivity(pre, cache, method, score, options=opts)
    chosen, trace = choose_float_nodes(pre, cache, method, score, ranking, target, recipe.max_float_nodes, opts)
    path = quantize(pre, out_dir / "model_int8_mixed.onnx", cache, method, chosen, opts)
    finish(path, {"method": "ptq-mixed", "calibration": {"method": method.value, "samples": about["samples"]},
                  "excluded_nodes": chosen, "sensitivity": {"score_images": about["score_images"],
                  "int8_psnr_y_db": round(base, 4), "target_psnr_y_db": round(target, 4),
                  "ranking": [(s.node, s.gain_db) for s in ranking], "trace": trace}})


def run_quantize(run: Path, recipe: QuantRecipe, source: str = "model", extra_eval: list[str] | None = None) -> dict:
    """PTQ per method, mixed precision and QAT for one source model of ``run``."""
    src = source_checkpoint(run, source)
    loaded = load_checkpoint(src)
    scale = loaded.scale
    reader = PatchCalibrationReader(checked_images(recipe, scale), scale, recipe.calibration)
    sets = eval_sets(scale, extra_eval)
    if recipe.tflite_qat.enabled and (missing := runtime("tflite").absence()):  # found now, not after the ONNX work
        raise InputError(f"{run}: the recipe's tflite_qat needs TensorFlow and tfmot ({missing}): "
                         "pip install -e '.[tflite]', or set tflite_qat.enabled = false")
    with fresh_stage_folder(quantize_dir(run, source)) as out_dir:  # every input read: the earlier run's files go
        fp32 = export_onnx(loaded.model, out_dir / "model_fp32.onnx")
        pre = preprocess(fp32, out_dir / "model_fp32_pre.onnx")
        ref_quality = quality(ort_upscaler(fp32), sets, scale)
        score_pairs = _centre_crops(reader.paths, scale, recipe.calibration)
        score = lambda path: evaluate(open_upscaler(path), score_pairs, scale).psnr_y_db  # noqa: E731
        rr = reduce_weight_range(recipe.weight_range)
        opts = Int8Options(reduce_range=rr, float_op_types=recipe.float_op_types)
        ort_weights = {"bits": 7 if rr else 8, "range": "[-64, 64]" if rr else "[-127, 127]",  # NNCF's follow its
                       "setting": recipe.weight_range, "cpu_has_vnni": cpu_has_vnni()}  # overflow_fix instead
        common = {"stage": "quantize", "arch": loaded.arch,
                  "scale": scale, "config": loaded.describe()["config"], "params": loaded.describe()["params"],
                  "recipe": to_dict(recipe), "fp32_quality": ref_quality,
                  "tail_rewrites": recorded_rewrites(onnx.load(str(fp32)))}
        sample = next(iter_patches(reader.paths, scale, recipe.calibration))
        fp32_out = ort_upscaler(fp32)(sample)
        results: dict[str, dict] = {}

        def finish(path: Path, extra: dict) -> None:
            upscaler = open_upscaler(path)  # ONNX Runtime for QDQ ONNX, OpenVINO for IR
            q = quality(upscaler, sets, scale)
            onnx_file = path.suffix == ".onnx"
            record = {**({"weights": ort_weights} if onnx_file else {}), **common, **extra,
                      "format": "onnx-qdq-int8" if onnx_file else "openvino-ir-int8", "quality": q,
                      "psnr_y_delta_db": psnr_delta_db(q, ref_quality),
                      "parity_vs_fp32_onnx": parity(fp32_out, upscaler(sample)).to_dict(),
                      "kernels": kernel_report(path) if onnx_file else {"runtime": "openvino"},
                      "fp32_size_bytes": fp32.stat().st_size}
            if not onnx_file:
                record["weights_file"] = path.with_suffix(".bin").name
            write_sidecar(path, record, source=src)
            results[path.name] = record["psnr_y_delta_db"]

        caches: dict[str, Path] = {}
        for name in recipe.ptq_methods:
            method = Calibration(name)
            caches[name] = out_dir / f"calibration_{name}.json"
            ranges = calibrate(pre, reader, method, caches[name], recipe.percentile)
            path = quantize(pre, out_dir / f"model_int8_{name}.onnx", caches[name], method, options=opts)
            finish(path, {"method": "ptq", "calibration": {"method": name, "samples": reader.count,
                          "percentile": recipe.percentile if method is Calibration.PERCENTILE else None,
                          "ranges": range_summary(ranges)}, "excluded_nodes": []})

        mixed = recipe.mixed_precision and recipe.max_float_nodes > 0
        if mixed or (recipe.qat and recipe.qat_calibration == "auto"):  # scored once, used by both
            best_ptq = max(recipe.ptq_methods, key=lambda m: score(out_dir / f"model_int8_{m}.onnx"))
        if mixed:
            _run_mixed(recipe, pre, caches[best_ptq], Calibration(best_ptq), score, score(fp32) - recipe.budget_db,
                       out_dir, opts, finish, {"samples": reader.count, "score_images": [p.name for p in score_pairs]})

        nncf_start, patches = None, []
        if recipe.nncf.enabled and runtime("openvino").present():
            nncf_start, patches = _run_nncf_ptq(loaded, recipe, reader, fp32, out_dir, finish)
        if recipe.qat and recipe.qat_calibration == "auto":  # start from the best PTQ model
            recipe = dataclasses.replace(recipe, qat_calibration=best_ptq)
        ort_start = _qat_start(recipe, reader, pre, out_dir, caches, opts) if recipe.qat else None
        plan = qat_plan(recipe, ort_start, nncf_start, score)
        if plan["nncf"]:
            results.update(_run_nncf_qat(loaded, recipe, patches, nncf_start, out_dir, finish, score, plan))
        if plan["ort"]:
            results.update(_run_qat(loaded, recipe, reader, pre, out_dir, ort_start, rr, opts, finish, score, plan))
        for name, ran in (("model_int8_qat.onnx", plan["ort"]), ("model_int8_nncf_qat.xml", plan["nncf"])):
            if "start_psnr_y_db" in plan and not ran:  # qat_from = best chose the other runtime's start
                results[name] = {"not_run": plan}
        if recipe.tflite_qat.enabled and is_writer():  # TensorFlow training: one process (rank 0 under torchrun)
            from compress.pipeline.tflite_stage import tfmot_qat_tflite

            results.update(tfmot_qat_tflite(loaded, src, out_dir, recipe.tflite_qat, recipe.data, ref_quality,
                                            sets, recipe.calibration, _calibration_paths(recipe)))
        return {"source": source, "out": str(out_dir), "psnr_y_delta_db": results}
