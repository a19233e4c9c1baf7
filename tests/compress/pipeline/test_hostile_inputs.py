"""Hostile inputs through the real CLI, each in its own process.

Every case must end with exit status 2 (bad input) or 3 (internal error), a last stderr line that
starts with ``error:``, no Python traceback, and no file of the run folder changed. Inputs are made
here; nothing large is committed.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
import pytest
import torch
from safetensors.torch import save_file

from compress.core.archs import EDSRConfig
from compress.core.checkpoint import save_checkpoint
from export.onnx_export import export_onnx
from tests.conftest import REPO, as_layout, tiny_edsr, write_image


BENCH_CONFIG = {"threads": 1, "runs": 1, "warmup": 2}  # the counts a latency file's config must hold


def cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "compress", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_clean_failure(proc: subprocess.CompletedProcess, expect: str = "") -> None:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode in (2, 3), (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert lines and lines[-1].startswith("error:"), proc.stderr
    assert expect in lines[-1], lines[-1]


def _bomb_png(path: Path, side: int = 30000) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A run folder with a tiny baseline, a bench result and a report's inputs, plus bad files."""
    root = tmp_path_factory.mktemp("hostile")
    run = root / "run"
    ckpt = save_checkpoint(tiny_edsr(2), EDSRConfig(scale=2, num_feat=16, num_block=2), run / "00-model/model.safetensors")
    (run / "00-model/model.safetensors.json").write_text(json.dumps({"stage": "model", "quality": {}}))
    (run / "40-bench").mkdir()
    (run / "40-bench/latency.json").write_text(json.dumps({"scale": 2, "machine": {}, "config": BENCH_CONFIG, "targets_ms": [300, 1000],
                                                          "results": [{"artifact": "00-model/model.safetensors",
                                                                       "runtime": "pytorch", "lr_size": [8, 8],
                                                                       "error": "boom"}]}))
    export_onnx(tiny_edsr(2), root / "x2.onnx")
    imgs = root / "imgs"
    imgs.mkdir()
    write_image(imgs / "a.png", (64, 48))
    for name in ("bomb", "small", "notimg", "float"):
        (root / name).mkdir()
    _bomb_png(root / "bomb" / "b.png")
    write_image(root / "small" / "s.png", (6, 40))
    (root / "notimg" / "n.png").write_text("not an image")
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).random((40, 40), dtype=np.float32)).save(root / "float" / "f.tiff")
    (root / "empty.pth").write_bytes(b"")
    (root / "trunc.safetensors").write_bytes(ckpt.read_bytes()[:200])
    sd = as_layout(tiny_edsr(2), "edsr-basicsr")
    sd["body.1.conv1.weight"] = torch.zeros(16, 16, 5, 5)
    save_file(sd, str(root / "wrongshape.safetensors"))
    return root


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


CASES = [
    ("onnx-wrong-scale", ["eval", "--model", "{root}/x2.onnx", "--scale", "4", "--data", "{root}/imgs"], "upscales x2, not x4"),
    ("wrong-shape", ["inspect", "{root}/wrongshape.safetensors"], "'body.1.conv1.weight' has shape (16, 16, 5, 5)"),
    ("zero-byte", ["inspect", "{root}/empty.pth"], "empty.pth: not a readable PyTorch checkpoint"),
    ("inspect-onnx", ["inspect", "{root}/x2.onnx"], "inspect reads checkpoints (.pth, .pt, .safetensors)"),
    ("truncated", ["inspect", "{root}/trunc.safetensors"], "not a readable safetensors file"),
    ("bomb-header", ["eval", "--model", "bicubic", "--scale", "2", "--data", "{root}/bomb"], "decoding limit"),
    ("float-tiff", ["eval", "--model", "bicubic", "--scale", "2", "--data", "{root}/float"], "floating-point image"),
    ("too-small", ["eval", "--model", "bicubic", "--scale", "4", "--data", "{root}/small"], "too small for x4"),
    ("not-an-image", ["eval", "--model", "bicubic", "--scale", "2", "--data", "{root}/notimg"], "not a readable image"),
    ("scale-negative", ["eval", "--model", "bicubic", "--scale", "-1", "--data", "{root}/imgs"], "scale must be one of"),
    ("tile-negative", ["eval", "--model", "bicubic", "--scale", "2", "--tile", "-5", "--data", "{root}/imgs"],
     "tile must be 0 (automatic) or 32..8192, got -5"),
    ("tile-one", ["upscale", "{root}/imgs", "--out", "{root}/up", "--scale", "2", "--tile", "1"], "32..8192, got 1"),
    ("threads-huge", ["upscale", "{root}/imgs", "--out", "{root}/up", "--scale", "2", "--threads", "100000"],
     "threads must be 0..1024"),  # OpenMP crashed (exit 139) on this
    ("threads-overflow", ["eval", "--model", "bicubic", "--scale", "2", "--threads", "99999999999999999999",
                          "--data", "{root}/imgs"], "threads must be 0..1024"),
    ("bench-threads-zero", ["bench", "--run", "{root}/run", "--threads", "0"], "threads must be 1..1024 for a benchmark, got 0"),
    ("run-empty", ["model", "--model", "{root}/run/00-model/model.safetensors", "--run", ""],
     "argument --run: an empty path"),  # '' meant the current folder
    ("eval-data-empty", ["eval", "--model", "bicubic", "--scale", "2", "--data", ""],
     "argument --data: an empty path"),  # '' meant the current folder
    ("serve-workers-huge", ["serve", "--workers", "100000"], "workers must be 1..64"),
    ("run-unwritable", ["model", "--model", "{root}/run/00-model/model.safetensors", "--run", "/proc/srcompress-run"],
     "/proc/srcompress-run/00-model/model.safetensors: cannot write (No such file or directory)"),
    ("runs-zero", ["bench", "--run", "{root}/run", "--runs", "0"], "runs must be 1..1000, got 0"),
    ("runs-huge", ["bench", "--run", "{root}/run", "--runs", "99999999999999999999"], "runs must be 1..1000"),
    ("sizes-garbage", ["bench", "--run", "{root}/run", "--sizes", "abc"], "HxW"),
    ("report-all-failed", ["report", "--run", "{root}/run"], "no configuration was timed successfully"),
    ("quality-over-100", ["upscale", "{root}/imgs", "--out", "{root}/up", "--scale", "2", "--format", "webp",
                          "--quality", "500"], "quality must be 1..100"),
]


@pytest.mark.parametrize("name, argv, expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_cleanly_and_changes_nothing(work, name, argv, expect):
    before = snapshot(work / "run")
    proc = cli(*[a.format(root=work) for a in argv], cwd=REPO)
    assert_clean_failure(proc, expect)
    assert snapshot(work / "run") == before


def test_pickle_that_would_create_a_file_is_refused_and_the_file_never_appears(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"conv_first.weight": torch.zeros(1), "x": _Evil(str(marker))}, tmp_path / "evil.pth")
    proc = cli("inspect", str(tmp_path / "evil.pth"), cwd=REPO)
    assert_clean_failure(proc, "could run code")
    assert "weights_only=False" not in proc.stderr
    assert not marker.exists()


def test_corrupt_run_files_are_named_and_nothing_is_written(tmp_path):
    run = tmp_path / "run"
    save_checkpoint(tiny_edsr(2), EDSRConfig(scale=2, num_feat=16, num_block=2), run / "00-model/model.safetensors")
    (run / "00-model/model.safetensors.json").write_text("{not json")
    (run / "stage_seconds.json").write_text("[1, 2")
    before = snapshot(run)
    proc = cli("export", "--run", str(run), "--no-tflite", cwd=REPO)
    assert_clean_failure(proc, "stage_seconds.json: not valid JSON")
    (run / "stage_seconds.json").write_text("{}")
    before = snapshot(run)
    proc = cli("export", "--run", str(run), "--no-tflite", cwd=REPO)
    assert_clean_failure(proc, "model.safetensors.json: not valid JSON")
    assert snapshot(run) == before


@pytest.mark.parametrize("body, expect", [("[train]\nlr = \"fast\"\n", "expected a number"),
                                          ("[train]\nlr = inf\n", "finite"),
                                          ("[train]\nfeature_distill_weight = 0.5\n", "no teacher"),
                                          ("[train]\ndistill_weight = 0.5\n", "no teacher"),
                                          ("num_feat = 1024\nnum_block = 256\n", "4880 M parameters, over 100 M")])
def test_bad_recipe_fails_before_training(tmp_path, body, expect):
    recipe = tmp_path / "r.toml"
    recipe.write_text(body)
    proc = cli("train", "--recipe", str(recipe), "--out", str(tmp_path / "m.safetensors"), cwd=REPO)
    assert_clean_failure(proc, expect)
    assert not (tmp_path / "m.safetensors").exists()


def test_second_probe_cases(tmp_path, work):
    """Cases a second hostile-input probe found (exit 3 or a wrong success before they were fixed)."""
    ckpt = work / "run/00-model/model.safetensors"
    img = write_image(tmp_path / "pic.png", (24, 16))
    (tmp_path / "file.txt").write_text("x")
    assert_clean_failure(cli("upscale", str(img), "--artifact", str(ckpt), "--out", str(tmp_path / "file.txt"),
                             cwd=REPO), "--out must be a folder")
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        write_image(tmp_path / sub / "same.png", (24, 16))
    proc = cli("upscale", str(tmp_path / "a"), str(tmp_path / "b"), "--artifact", str(ckpt), "--out",
               str(tmp_path / "o"), cwd=REPO)
    assert_clean_failure(proc, "same name")
    assert not (tmp_path / "o").exists()
    assert_clean_failure(cli("interpolate", str(ckpt), str(ckpt), "--alpha", "0.5", "--out", str(tmp_path / "b.pth"),
                             cwd=REPO), "written as .safetensors")
    loop = tmp_path / "loop.toml"
    loop.symlink_to(loop)
    assert_clean_failure(cli("train", "--recipe", str(loop), "--out", str(tmp_path / "t.safetensors"), cwd=REPO),
                         "cannot read the recipe")
    wide = tmp_path / "wide.png"
    Image.new("RGB", (8200, 1)).save(wide)
    assert_clean_failure(cli("upscale", str(wide), "--artifact", str(ckpt), "--out", str(tmp_path / "w"),
                             "--format", "webp", cwd=REPO), "wide.png: a 16400x2 output is over WEBP's limit")


def test_a_replaced_artifact_is_not_reported_with_its_old_sidecar(tmp_path):
    run = tmp_path / "run"
    ckpt = save_checkpoint(tiny_edsr(2), EDSRConfig(scale=2, num_feat=16, num_block=2), run / "00-model/model.safetensors")
    from compress.core.files import write_sidecar

    write_sidecar(ckpt, {"stage": "model", "quality": {"embedded": {"psnr_y_db": 30.0}}})
    (run / "40-bench").mkdir()
    (run / "40-bench/latency.json").write_text(json.dumps({"scale": 2, "machine": {}, "config": BENCH_CONFIG,
                                                          "targets_ms": [300, 1000], "results": [
        {"artifact": "00-model/model.safetensors", "runtime": "pytorch", "lr_size": [8, 8], "out_mp": 0.1,
         "p50_ms": 1.0, "p95_ms": 1.0, "min_ms": 1.0, "peak_rss_mb": 1.0}]}))
    ckpt.write_bytes(np.random.default_rng(0).bytes(2000))
    assert_clean_failure(cli("report", "--run", str(run), cwd=REPO), "not the one its sidecar describes")
    assert not (run / "50-report").exists()
    (run / "40-bench/latency.json").write_text("{}")
    assert_clean_failure(cli("report", "--run", str(run), cwd=REPO), "not a latency file")


def _tiny_run(root: Path) -> Path:
    run = root / "run"
    save_checkpoint(tiny_edsr(2), EDSRConfig(scale=2, num_feat=16, num_block=2), run / "00-model/model.safetensors")
    (run / "00-model/model.safetensors.json").write_text(json.dumps({"stage": "model", "scale": 2, "quality": {}}))
    return run


GOOD_RESULT = {"artifact": "00-model/model.safetensors", "runtime": "pytorch", "lr_size": [8, 8], "p50_ms": 1.0,
               "p95_ms": 1.0, "min_ms": 1.0, "out_mp": 0.0003, "peak_rss_mb": 10.0}


@pytest.mark.parametrize("change, expect", [
    ({"results": [{}]}, "results[0] artifact None is not a path inside the run folder"),
    ({"results": [1]}, "results[0] is not an object"),
    ({"results": [{**GOOD_RESULT, "artifact": "/etc/hostname"}]}, "'/etc/hostname' is not a path inside the run"),
    ({"results": [{**GOOD_RESULT, "artifact": "../run2/x.onnx"}]}, "is not a path inside the run"),
    ({"results": [{**GOOD_RESULT, "p50_ms": "fast"}]}, "results[0] p50_ms not numbers"),
    ({"machine": None}, "not a latency file of make bench"),
    ({"targets_ms": [300]}, "must be positive and include [300, 1000]"),
    ({"ladders": [{}]}, "ladders[0] needs artifact"),
    ({"quality": {"x|ort": {"Set5": {"psnr_y_db": "high"}}}}, "quality['x|ort'] must map each evaluation set"),
    ({"quality": {"x|ort": {"Set5": {"psnr_y_db": -1.7e308}}}}, "psnr_y_db from 0 to 1000"),  # made dB lost inf
    ({"config": {}}, "config threads, warmup, runs not whole numbers in range"),  # KeyError while writing
    ({"config": {**BENCH_CONFIG, "ladder_targets_ms": "abc"}}, "ladder_targets_ms 'abc' is not a list"),
    ({"machine": {"gpu": 5}}, "machine gpu of the wrong type"),
    ({"machine": {"cores": "two"}}, "machine cores of the wrong type"),
    ({"scale": True}, "scale True is not a whole number from 1 to 8"),
    ({"scale": 4}, "scale 4 but the baseline is x2"),
])
def test_a_malformed_latency_file_is_refused_naming_the_entry(tmp_path, capsys, change, expect):
    from compress.pipeline.cli import main

    run = _tiny_run(tmp_path)
    (run / "40-bench").mkdir()
    bench = {"scale": 2, "machine": {}, "config": BENCH_CONFIG, "targets_ms": [300, 1000], "results": [GOOD_RESULT],
             **change}
    (run / "40-bench/latency.json").write_text(json.dumps(bench))
    assert main(["report", "--run", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "latency.json" in err and expect in err, err
    assert not (run / "50-report").exists()


@pytest.mark.parametrize("field, value", [("macs_256x256", "abc"), ("storage", [1]), ("params", None),
                                          ("format", 3), ("storage", {"gzip_file_bytes": "big"})])
def test_a_sidecar_field_the_report_prints_is_type_checked(tmp_path, capsys, field, value):
    from compress.pipeline.cli import main

    run = _tiny_run(tmp_path)
    (run / "00-model/model.safetensors.json").write_text(json.dumps({"stage": "model", "quality": {}, "scale": 2,
                                                                     field: value}))
    (run / "40-bench").mkdir()
    bench = {"scale": 2, "machine": {}, "config": BENCH_CONFIG, "targets_ms": [300, 1000], "results": [GOOD_RESULT]}
    (run / "40-bench/latency.json").write_text(json.dumps(bench))
    code = main(["report", "--run", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    if value is None:  # absent or null: the report prints a dash
        assert code == 0, err
        return
    assert code == 2 and err[-1].endswith(f"model.safetensors.json: {field} of the wrong type; rerun the stage that "
                                          "wrote it"), err
    assert not (run / "50-report").exists()


def test_malformed_quality_and_stage_seconds_are_refused_before_anything_is_written(tmp_path, capsys):
    from compress.pipeline.cli import main

    run = _tiny_run(tmp_path)
    recipe = tmp_path / "p.toml"
    recipe.write_text((REPO / "pruning/recipes/quick.toml").read_text())
    (run / "00-model/model.safetensors.json").write_text(json.dumps({"quality": {"embedded": {"psnr_y_db": "x"}}}))
    assert main(["prune", "--run", str(run), "--recipe", str(recipe)]) == 2
    assert "'quality' must map each evaluation set" in capsys.readouterr().err
    assert not (run / "10-prune").exists()
    (run / "00-model/model.safetensors.json").write_text(json.dumps({"quality": {}}))
    (run / "stage_seconds.json").write_text(json.dumps({"model": "x"}))
    assert main(["export", "--run", str(run), "--no-tflite"]) == 2
    assert "every stage's seconds must be a number" in capsys.readouterr().err
    assert not (run / "30-export").exists()
    (run / "stage_seconds.json").unlink()
    (run / "stage_seconds.json").mkdir()  # was found only once the stage had written everything
    assert main(["export", "--run", str(run), "--no-tflite"]) == 2
    assert "stage_seconds.json: not a file" in capsys.readouterr().err
    assert not (run / "30-export").exists()


def test_prune_reads_every_recipe_before_the_first_runs(tmp_path, capsys):
    from compress.pipeline.cli import main

    run = _tiny_run(tmp_path)
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text((REPO / "pruning/recipes/quick.toml").read_text())
    bad.write_text("methd = \"channel\"\n")
    assert main(["prune", "--run", str(run), "--recipe", str(good), "--recipe", str(bad)]) == 2
    assert "unknown field(s) ['methd']" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    twin = tmp_path / "other" / "good.toml"
    twin.write_text(good.read_text())
    assert main(["prune", "--run", str(run), "--recipe", str(good), "--recipe", str(twin)]) == 2
    assert "both would write 10-prune/good" in capsys.readouterr().err
    assert not (run / "10-prune").exists()


def test_a_channel_round_to_that_prunes_nothing_is_refused(tmp_path, capsys):
    from compress.pipeline.cli import main

    run = _tiny_run(tmp_path)  # 16 trunk channels
    recipe = tmp_path / "wide.toml"
    recipe.write_text((REPO / "pruning/recipes/quick.toml").read_text().replace("round_to = 8", "round_to = 16"))
    assert "round_to = 16" in recipe.read_text()
    assert main(["prune", "--run", str(run), "--recipe", str(recipe)]) == 2
    assert ("wide.toml: round_to 16 is not below the model's widest prunable layer (16 channels), so nothing "
            "would be pruned") in capsys.readouterr().err
    assert not (run / "10-prune").exists()


def test_a_channel_round_to_that_empties_some_layers_is_refused(tmp_path, capsys):
    """torch-pruning would leave those layers whole, so the recipe's ratio for them would not be made."""
    from compress.pipeline.cli import main

    run = _tiny_run(tmp_path)  # 16 trunk channels, 16 in each block's conv1
    recipe = tmp_path / "deep.toml"
    recipe.write_text((REPO / "pruning/recipes/quick.toml").read_text().replace(
        "round_to = 8", "round_to = 8\ninner_final_sparsity = 0.75"))
    assert main(["prune", "--run", str(run), "--recipe", str(recipe)]) == 2
    assert capsys.readouterr().err == (
        f"error: {recipe}: round_to 8 rounds 2 layer(s) down to no channel, which torch-pruning would leave whole "
        "instead (first: body.0.conv1, 16 channels at ratio 0.75 keep 4); use round_to <= 4 or a smaller ratio for them\n")
    assert not (run / "10-prune").exists()


def test_a_calibration_patch_no_image_fits_is_refused_before_writing(tmp_path, capsys):
    from compress.pipeline.cli import main

    run = _tiny_run(tmp_path)
    recipe = tmp_path / "q.toml"
    recipe.write_text("ptq_methods = [\"minmax\"]\nmixed_precision = false\nqat = false\n[nncf]\nenabled = false\n"
                      "[tflite_qat]\nenabled = false\n[calibration]\nlr_patch = 1024\n")
    assert main(["quantize", "--run", str(run), "--recipe", str(recipe)]) == 2
    assert "calibration: no image fits an LR patch of 1024 px at x2 (needs 2048x2048 px)" in capsys.readouterr().err
    assert not (run / "20-quantize").exists()
    (tmp_path / "mine").mkdir()
    write_image(tmp_path / "mine" / "a.png", (64, 64))
    recipe.write_text(recipe.read_text().replace("[nncf]", f"calibration_data = \"{tmp_path / 'mine'}\"\n[nncf]"))
    assert main(["quantize", "--run", str(run), "--recipe", str(recipe)]) == 2
    assert f"error: {tmp_path / 'mine'}: no image fits an LR patch" in capsys.readouterr().err  # the folder, named
    assert not (run / "20-quantize").exists()


@pytest.mark.parametrize(("qat", "tflite"), [("true", "false"), ("false", "true")])
def test_a_qat_patch_a_training_image_does_not_fit_is_refused_before_the_ptqs(tmp_path, capsys, qat, tflite):
    """Found from the headers: the earlier results stay, and no PTQ runs first to fail after it."""
    from compress.pipeline.cli import main

    run = _tiny_run(tmp_path)
    earlier = run / "20-quantize" / "model" / "model_int8_minmax.onnx"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier result")
    (tmp_path / "mine").mkdir()
    write_image(tmp_path / "mine" / "big.png", (128, 128))
    small = write_image(tmp_path / "mine" / "small.png", (100, 60))
    recipe = tmp_path / "q.toml"
    recipe.write_text(f"ptq_methods = [\"minmax\"]\nmixed_precision = false\nqat = {qat}\ndata = \"{tmp_path / 'mine'}\"\n"
                      f"[nncf]\nenabled = false\n[patch]\nlr_patch = 40\n[tflite_qat]\nenabled = {tflite}\n"
                      "[tflite_qat.patch]\nlr_patch = 40\n")
    assert main(["quantize", "--run", str(run), "--recipe", str(recipe)]) == 2
    assert capsys.readouterr().err == (f"error: {small}: LR image 50x30 at x2 is smaller than the 40x40 QAT patch; "
                                       "use a smaller patch lr_patch in the recipe or remove the image\n")
    assert earlier.read_bytes() == b"an earlier result"


@pytest.mark.parametrize("source", ["prune/../../elsewhere/00-model", "prune/", "bogus"])
def test_quantize_sources_stay_inside_the_run(tmp_path, capsys, source):
    from compress.pipeline.cli import main

    run = _tiny_run(tmp_path)
    recipe = str(REPO / "quantization/recipes/quick.toml")
    assert main(["quantize", "--run", str(run), "--recipe", recipe, "--source", source]) == 2
    assert "quantize source must be 'model', 'auto' or 'prune/<recipe name>'" in capsys.readouterr().err
    assert not (run / "20-quantize").exists()


def test_quantize_refuses_a_baseline_its_sidecar_does_not_describe(tmp_path, capsys):
    from compress.core.files import write_sidecar
    from compress.pipeline.cli import main

    run = _tiny_run(tmp_path)
    ckpt = run / "00-model/model.safetensors"
    write_sidecar(ckpt, {"stage": "model", "scale": 2, "quality": {}})  # records the file's sha256
    save_checkpoint(tiny_edsr(2, seed=1), EDSRConfig(scale=2, num_feat=16, num_block=2), ckpt)  # swapped in after
    recipe = str(REPO / "quantization/recipes/quick.toml")
    assert main(["quantize", "--run", str(run), "--recipe", recipe]) == 2
    assert "model.safetensors: the file is not the one its sidecar describes" in capsys.readouterr().err
    (run / "00-model/model.safetensors.json").write_text("{bad")
    assert main(["quantize", "--run", str(run), "--recipe", recipe]) == 2
    assert "model.safetensors.json" in capsys.readouterr().err
    assert not (run / "20-quantize").exists()


def test_quantize_checks_its_image_folders_before_writing(tmp_path, capsys):
    from compress.pipeline.cli import main

    run = _tiny_run(tmp_path)
    recipe = tmp_path / "q.toml"
    recipe.write_text(f"calibration_data = \"{tmp_path / 'nothere'}\"\n")
    assert main(["quantize", "--run", str(run), "--recipe", str(recipe)]) == 2
    assert "nothere" in capsys.readouterr().err
    recipe.write_text(f"data = \"{tmp_path / 'nothere'}\"\n")
    assert main(["quantize", "--run", str(run), "--recipe", str(recipe)]) == 2
    assert "nothere" in capsys.readouterr().err
    assert not (run / "20-quantize").exists()


def test_a_run_that_is_a_file_is_refused_before_the_model_is_read(tmp_path, capsys):
    from compress.pipeline.cli import main

    (tmp_path / "run").write_text("a file")
    assert main(["model", "--run", str(tmp_path / "run"), "--model", str(_tiny_run(tmp_path / "src").parent /
                                                                          "run/00-model/model.safetensors")]) == 2
    assert "is a file, not a run folder" in capsys.readouterr().err
