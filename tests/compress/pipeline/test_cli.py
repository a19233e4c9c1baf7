import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from compress.core.checkpoint import save_checkpoint
from compress.core.errors import InputError
from compress.pipeline.cli import main
from compress.core.files import read_sidecar
from export.runtimes import runtime
from tests.conftest import REPO, as_layout, launch_env, tiny_edsr, tiny_srcnn


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inspect_json(tmp_path, capsys):
    path = tmp_path / "edsr.pth"
    torch.save({"params": as_layout(tiny_edsr(3), "edsr-basicsr")}, path)
    code, out, _ = _run(capsys, "inspect", str(path), "--json")
    info = json.loads(out)
    assert code == 0
    assert {k: info[k] for k in ("arch", "scale", "num_feat", "num_block", "layout")} == {
        "arch": "edsr", "scale": 3, "num_feat": 16, "num_block": 2, "layout": "edsr-basicsr"}
    assert info["params"] == sum(p.numel() for p in tiny_edsr(3).parameters())


def test_bad_checkpoint_gives_message_not_traceback(tmp_path, capsys):
    path = tmp_path / "x.pth"
    torch.save({"foo.weight": torch.zeros(1)}, path)
    code, _, err = _run(capsys, "inspect", str(path))
    assert code == 2
    assert err.startswith(f"error: {path}: unknown checkpoint layout") and "Traceback" not in err


def test_eval_bicubic_and_model_json(image_dir, tmp_path, capsys):
    code, out, _ = _run(capsys, "eval", "--model", "bicubic", "--data", str(image_dir), "--scale", "2", "--json")
    bicubic = json.loads(out)
    assert code == 0 and len(bicubic["images"]) == 3 and bicubic["psnr_y_db"] > 25
    model = tiny_srcnn(2, 3)
    torch.nn.init.zeros_(model.conv3.weight)
    torch.nn.init.zeros_(model.conv3.bias)  # SRCNN predicts the image itself: a zeroed last layer outputs black
    ckpt = save_checkpoint(model, model.cfg, tmp_path / "s.safetensors")
    code, out, _ = _run(capsys, "eval", "--model", str(ckpt), "--data", str(image_dir), "--scale", "2", "--json")
    result = json.loads(out)
    assert code == 0 and result["psnr_y_db"] < bicubic["psnr_y_db"]
    assert {"psnr_y_db", "ssim_y", "name"} <= set(result["images"][0])


def test_eval_named_set_golden_bicubic_and_a_folder_of_that_name(tmp_path, capsys, monkeypatch):
    code, out, _ = _run(capsys, "eval", "--model", "bicubic", "--data", "embedded", "--scale", "4", "--json")
    result = json.loads(out)
    assert code == 0 and [i["name"] for i in result["images"]] == ["chelsea", "barbara", "monarch", "kodim23"]
    assert abs(result["psnr_y_db"] - 28.748) < 0.001  # the bicubic row of artifacts/default/MODELS.md (28.75)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "embedded").mkdir()
    code, _, err = _run(capsys, "eval", "--model", "bicubic", "--data", "./embedded", "--scale", "4")
    assert code == 2 and "no images" in err  # ./embedded is the folder, not the named set


def test_eval_empty_folder(tmp_path, capsys):
    code, _, err = _run(capsys, "eval", "--model", "bicubic", "--data", str(tmp_path), "--scale", "2")
    assert code == 2 and "no images" in err


def test_model_then_export_stage(tmp_path, capsys, image_dir):
    model = tiny_edsr(2)
    src = tmp_path / "official.pt"
    torch.save(as_layout(model, "edsr-official"), src)
    run = tmp_path / "run"
    code, _, err = _run(capsys, "model", "--model", str(src), "--run", str(run), "--eval", str(image_dir))
    assert code == 0, err
    side = read_sidecar(run / "00-model" / "model.safetensors")
    assert side["source"]["layout"] == "edsr-official" and side["stage"] == "model"
    assert set(side["quality"]) == {"embedded", "imgs"}
    assert side["macs_256x256"] > 0 and len(side["sha256"]) == 64
    code, _, err = _run(capsys, "export", "--run", str(run))
    assert code == 0, err
    onnx_side = read_sidecar(run / "30-export" / "model_fp32.onnx")
    assert onnx_side["parity_vs_pytorch"]["max_abs_diff"] < 1e-4
    assert [r["kind"] for r in onnx_side["tail_rewrites"]] == ["subpixel"]
    assert read_sidecar(run / "30-export" / "model_fp32_plain.onnx")["tail_rewrites"] == []
    assert onnx_side["source"]["sha256"] == side["sha256"]
    for kind in ("fp32", "fp16", "dynamic_int8", "int8"):
        tfl = read_sidecar(run / "30-export" / f"model_{kind}.tflite")
        assert tfl["keras_twin_parity_vs_pytorch"]["max_abs_diff"] < 1e-4
        assert set(tfl["quality"]) == {"embedded"}
    assert "DEPTH_TO_SPACE:int8" in read_sidecar(run / "30-export" / "model_int8.tflite")["op_input_dtypes"]
    assert set(json.loads((run / "stage_seconds.json").read_text())) == {"model", "export"}
    code, out, err = _run(capsys, "eval", "--run", str(run), "--data", str(image_dir), "--json")
    assert code == 0, err
    rows = {r["artifact"]: r for r in json.loads(out)["rows"]}
    assert rows["00-model/model.safetensors"]["db_lost"] == 0.0
    assert abs(rows["30-export/model_fp32.onnx"]["db_lost"]) < 1e-3
    assert abs(rows["30-export/model_fp32_plain.onnx"]["db_lost"]) < 1e-3
    assert abs(rows["30-export/model_fp32.tflite"]["db_lost"]) < 1e-3
    ir = 1 if runtime("openvino").present() else 0
    if ir:
        assert abs(rows["30-export/model_fp32.xml"]["db_lost"]) < 1e-3
    assert len(rows) == 7 + ir  # PyTorch, ONNX (output conv rewritten, and plain), [OpenVINO IR], four TFLite


def test_eval_run_reads_a_named_set(tmp_path, capsys, image_dir):
    """``eval --run --data validation`` scores the run's artifacts on the named set, as ``--model`` does."""
    model = tiny_edsr(4)
    ckpt = save_checkpoint(model, model.cfg, tmp_path / "m.safetensors")
    run = tmp_path / "run"
    code, _, err = _run(capsys, "model", "--model", str(ckpt), "--run", str(run), "--eval", str(image_dir))
    assert code == 0, err
    code, out, err = _run(capsys, "eval", "--run", str(run), "--data", "validation", "--json")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    code, out, err = _run(capsys, "eval", "--model", str(ckpt), "--data", "validation", "--scale", "4", "--json")
    assert code == 0, err
    assert [r["artifact"] for r in rows] == ["00-model/model.safetensors"]
    assert rows[0]["psnr_y_db"] == round(json.loads(out)["psnr_y_db"], 4)


def test_eval_needs_model_or_run(tmp_path, capsys):
    code, _, err = _run(capsys, "eval", "--data", str(tmp_path))
    assert code == 2 and "needs --model and --scale" in err


def test_export_without_model_stage(tmp_path, capsys):
    code, _, err = _run(capsys, "export", "--run", str(tmp_path / "nothing"))
    assert code == 2 and "run `make model RUN=" in err


def test_train_command_under_torchrun_exits_cleanly_on_every_rank(image_dir, tmp_path):
    """The real entry point with 2 Gloo ranks: both leave the process group and exit 0, rank 0 writes."""
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(f'arch = "edsr"\nscale = 2\nnum_feat = 8\nnum_block = 1\ndata = "{image_dir}"\n'
                      f'val_data = "{image_dir}"\nmax_side = 0\n[patch]\nlr_patch = 8\nbatch_size = 4\n'
                      '[train]\nsteps = 3\nlr = 1e-3\nprecision = "fp32"\n')
    out = tmp_path / "m.safetensors"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "compress", "train", "--recipe", str(recipe), "--out", str(out)],
                          env=launch_env(OMP_NUM_THREADS="1"), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file() and json.loads(out.with_name(out.name + ".json").read_text())["steps_done"] == 3


def test_every_command_leaves_the_process_group_waiting_only_after_success(tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr("compress.pipeline.cli.release_process_group", lambda wait=True: calls.append(wait))
    model = tiny_edsr(2)
    save_checkpoint(model, model.cfg, tmp_path / "m.safetensors")
    assert _run(capsys, "inspect", str(tmp_path / "m.safetensors"))[0] == 0
    assert _run(capsys, "inspect", str(tmp_path / "missing.safetensors"))[0] == 2
    assert calls == [True, False]  # an error path must not wait at a barrier other ranks may never reach


def test_prune_under_torchrun_reruns_over_an_earlier_run(image_dir, tmp_path):
    """2 Gloo ranks prune a run twice: the other rank copies the run folder while rank 0 waits at a
    barrier, so the rerun that replaces rank 0's outputs cannot pull files from under the copy."""
    from compress.pipeline.model_stage import stage_model

    model = tiny_edsr(2)
    src = save_checkpoint(model, model.cfg, tmp_path / "m.safetensors")
    run = tmp_path / "run"
    stage_model(str(src), None, run)
    recipe = tmp_path / "quick.toml"
    recipe.write_text(f'method = "channel"\ndata = "{image_dir}"\nround_to = 4\n[schedule]\ninitial_sparsity = 0.0\n'
                      'final_sparsity = 0.5\nbegin_step = 0\nend_step = 2\nfrequency = 1\n[patch]\nlr_patch = 8\n'
                      'batch_size = 4\n[train]\nsteps = 3\nlr = 1e-4\nprecision = "fp32"\n')
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                               "-m", "--", "compress", "prune", "--run", str(run), "--recipe", str(recipe)],  # as make
                              env=launch_env(OMP_NUM_THREADS="1"), cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "10-prune" / "quick" / "model.safetensors").is_file()


def test_prune_seed_replaces_every_seed_of_the_recipe_in_the_sidecar(image_dir, tmp_path, capsys):
    from compress.pipeline.model_stage import stage_model

    model = tiny_edsr(2)
    run = tmp_path / "run"
    stage_model(str(save_checkpoint(model, model.cfg, tmp_path / "m.safetensors")), None, run)
    recipe = tmp_path / "quick.toml"
    recipe.write_text(f'method = "unstructured"\ndata = "{image_dir}"\n[schedule]\ninitial_sparsity = 0.0\nfinal_sparsity = 0.5\nbegin_step = 0\n'
                      'end_step = 2\nfrequency = 1\n[patch]\nlr_patch = 8\nbatch_size = 2\nseed = 1\n[train]\nsteps = 3\n'
                      'lr = 1e-4\nprecision = "fp32"\nseed = 1\n')
    code, _, err = _run(capsys, "prune", "--run", str(run), "--recipe", str(recipe), "--seed", "7")
    assert code == 0, err
    saved = read_sidecar(run / "10-prune" / "quick" / "model.safetensors")["recipe"]
    assert (saved["patch"]["seed"], saved["train"]["seed"]) == (7, 7)
    with pytest.raises(SystemExit) as info:
        main(["prune", "--run", str(run), "--recipe", str(recipe), "--seed", "-1"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "--seed must be 0.." in err, err


def test_a_usage_error_is_one_line_even_with_control_characters_in_the_arguments(capsys):
    with pytest.raises(SystemExit) as info:
        main(["inspect", "m.pth", "--bogus\nTraceback (most recent call last):\x1b[2J"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: python -m compress: unrecognized arguments: --bogus\\nTraceback") and "\\x1b[2J" in err


def test_warnings_print_as_one_line_without_a_source_location(tmp_path):
    import subprocess
    import sys

    from compress.pipeline.cli import warning_line
    from tests.conftest import REPO, launch_env, write_image

    assert warning_line(UserWarning("a.png: L image\nconverted"), UserWarning, "/x/data.py", 126) == (
        "warning: a.png: L image\\nconverted\n")
    gray = write_image(tmp_path / "gray.png", (40, 32), mode="L")
    done = subprocess.run([sys.executable, "-m", "compress", "eval", "--model", "bicubic", "--data", str(tmp_path),
                           "--scale", "2", "--json"], cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == f"warning: {gray}: L image converted to RGB\n"


def test_train_overrides_replace_the_recipes_lr_seeds_and_budget(tmp_path, capsys):
    from compress.core.recipe import load_recipe
    from compress.pipeline.cli import _train_overrides, build_parser
    from compress.pipeline.trainer import TrainRecipe

    recipe = load_recipe(TrainRecipe, REPO / "compress/recipes/gpu_continue_edsr_x4.toml", {})
    args = build_parser().parse_args(["train", "--recipe", "r.toml", "--out", "o.safetensors", "--lr", "5e-5",
                                      "--seed", "31", "--max-minutes", "2.5"])
    changed = _train_overrides(recipe, args)
    assert (changed.train.lr, changed.train.seed, changed.patch.seed, changed.train.max_minutes) == (5e-5, 31, 31, 2.5)
    assert changed.train.lr_schedule == recipe.train.lr_schedule and changed.patch.lr_patch == recipe.patch.lr_patch
    same = build_parser().parse_args(["train", "--recipe", "r.toml", "--out", "o.safetensors"])
    assert _train_overrides(recipe, same) == recipe and not recipe.train.keep_best
    best = build_parser().parse_args(["train", "--recipe", "r.toml", "--out", "o.safetensors", "--keep-best"])
    assert _train_overrides(recipe, best).train == dataclasses.replace(recipe.train, keep_best=True)
    plain = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, val_every=0))
    with pytest.raises(InputError, match=r"^r\.toml: TrainConfig\.keep_best needs val_every > 0"):
        _train_overrides(plain, best)  # a recipe that validates only at its end has nothing to choose among
    for bad, message in ((["--lr", "0"], "--lr"), (["--lr", "2"], "--lr: must be in (0, 1.0], got 2"),
                         (["--seed", "-1"], "--seed must be 0..")):
        with pytest.raises(SystemExit) as exit_:
            main(["train", "--recipe", "r.toml", "--out", str(tmp_path / "o.safetensors"), *bad])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err and err.count("\n") == 1


def test_a_continuation_that_validates_worse_says_both_figures_and_writes_nothing(image_dir, tmp_path, capsys):
    recipe = tmp_path / "tiny.toml"
    body = (f'arch = "edsr"\nscale = 2\nnum_feat = 8\nnum_block = 1\ndata = "{image_dir}"\n'
            f'val_data = "{image_dir}"\nmax_side = 0\n[patch]\nlr_patch = 8\nbatch_size = 2\n'
            '[train]\nsteps = {steps}\nlr = {lr}\nprecision = "fp32"\nval_every = 1\n')
    recipe.write_text(body.replace("{steps}", "20").replace("{lr}", "1e-3"))
    start = tmp_path / "start.safetensors"
    assert _run(capsys, "train", "--recipe", str(recipe), "--out", str(start))[0] == 0
    before = start.read_bytes()
    recipe.write_text(body.replace("{steps}", "4").replace("{lr}", "1.0"))  # a learning rate that ruins it
    code, out, err = _run(capsys, "train", "--recipe", str(recipe), "--out", str(start), "--continue-from", str(start),
                          "--keep-best")
    record = json.loads(out[out.index("{\n"):])  # after the validation lines
    best = max(psnr for _, psnr in record["val_psnr_y_db"])
    assert code == 0 and record["written"] is False and start.read_bytes() == before
    assert f"validation PSNR-Y {best:.3f} dB is not better than its " in err  # the kept check's figure was judged


def test_sigterm_unwinds_a_command_as_ctrl_c_does(tmp_path, capsys, monkeypatch):
    """A real SIGTERM to this process mid-command: the stage's half-written folder goes, one line, 143."""
    import os
    import signal

    import compress.pipeline.cli as cli
    from compress.core.files import fresh_stage_folder

    stage = tmp_path / "20-quantize"

    def killed_midway(args):
        with fresh_stage_folder(stage) as folder:
            (folder / "model_int8_minmax.onnx").write_bytes(b"written before the signal")
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("SIGTERM did not interrupt the command")

    earlier = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli, "_run", killed_midway)
    code, _, err = _run(capsys, "inspect", "x.pth")
    assert (code, err) == (143, "error: terminated\n")
    assert not stage.exists()
    assert signal.getsignal(signal.SIGTERM) is earlier  # the handler lasts as long as the command


def test_a_quantize_command_sent_sigterm_leaves_no_stage_folder(tmp_path, image_dir):
    """The real entry point in its own process, stopped with SIGTERM during QAT, after its PTQ model was written."""
    import signal
    import time

    from tests.compress.pipeline.test_quantize_stage import _staged_run

    run = _staged_run(tmp_path)
    recipe = tmp_path / "q.toml"
    recipe.write_text(f'ptq_methods = ["minmax"]\ncalibration_data = "{image_dir}"\ndata = "{image_dir}"\n'
                      'mixed_precision = false\n[calibration]\nlr_patch = 16\npatches_per_image = 1\n'
                      '[nncf]\nenabled = false\n[tflite_qat]\nenabled = false\n'
                      '[patch]\nlr_patch = 16\nbatch_size = 2\n[train]\nsteps = 1000000\nlr = 1e-5\n')
    stage = run / "20-quantize" / "model"
    proc = subprocess.Popen([sys.executable, "-m", "compress", "quantize", "--run", str(run), "--recipe", str(recipe),
                             "--source", "model"], env=launch_env(OMP_NUM_THREADS="1"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (stage / "model_int8_minmax.onnx.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()[-2000:]  # still running: QAT has a million steps to go
    time.sleep(1.0)  # into the QAT
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == "error: terminated"
    assert not stage.exists() and (run / "00-model" / "model.safetensors").is_file()


@pytest.mark.parametrize("exc", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 437281914880 bytes. Error code 12 (Cannot allocate memory)"),  # torch on the CPU
    MemoryError(),
    OSError(12, "Cannot allocate memory"),  # ENOMEM: fork / spawn of a benchmark process
    type("Fail", (Exception,), {})("[ONNXRuntimeError] : 1 : FAIL : Failed to allocate memory for requested buffer of "
                                  "size 4294967296"),  # ONNX Runtime's own exception types are no RuntimeError
])
def test_running_out_of_memory_is_one_line_naming_what_to_lower(tmp_path, capsys, monkeypatch, exc):
    def allocate(args):
        raise exc

    monkeypatch.setattr("compress.pipeline.cli._run", allocate)
    assert main(["eval", "--model", "bicubic", "--scale", "2", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: eval: out of memory (") and "lower the batch size" in err[0], err


def test_another_runtime_error_stays_an_internal_error(tmp_path, capsys, monkeypatch):
    def fail(args):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr("compress.pipeline.cli._run", fail)
    assert main(["eval", "--model", "bicubic", "--scale", "2", "--data", str(tmp_path)]) == 3
    assert "internal error RuntimeError: shape mismatch" in capsys.readouterr().err
