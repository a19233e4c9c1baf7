"""``upscale``: artifacts of every kind, alpha / grayscale / palette / 16-bit, tiling, choice from a report,
and ``interpolate``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compress.core.archs import EDSRConfig
from compress.core.checkpoint import interpolate, load_checkpoint, save_checkpoint
from compress.core.errors import InputError
from compress.core.imaging import decode_file, upscale_decoded
from compress.core.infer import TileConfig, torch_upscaler
from compress.core.metrics import psnr_y_db
from compress.pipeline.choose import choose
from compress.pipeline.cli import main
from export.onnx_export import export_onnx
from tests.conftest import tiny_edsr, write_image

CFG = EDSRConfig(scale=2, num_feat=16, num_block=2)


@pytest.fixture()
def ckpt(tmp_path):
    return save_checkpoint(tiny_edsr(2), CFG, tmp_path / "m.safetensors")


def test_folder_of_images_in_every_mode(tmp_path, ckpt):
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "rgb.png", (30, 20))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 4), dtype=np.uint8), "RGBA").save(src / "a.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30), dtype=np.uint8), "L").save(src / "g.png")
    Image.new("RGB", (30, 20), (10, 200, 30)).convert("P").save(src / "p.gif")
    Image.fromarray((np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)).save(src / "deep.png")
    assert main(["upscale", str(src), "--out", str(tmp_path / "out"), "--artifact", str(ckpt)]) == 0
    outs = {p.stem: Image.open(p) for p in (tmp_path / "out").iterdir()}
    assert {k: v.size for k, v in outs.items()} == {f"{n}_x2": (60, 40) for n in ("rgb", "a", "g", "p", "deep")}
    assert outs["a_x2"].mode == "RGBA" and outs["g_x2"].mode == "L" and outs["deep_x2"].mode == "L"
    alpha_in = Image.open(src / "a.png").getchannel("A").resize((60, 40), Image.BICUBIC)
    assert np.array_equal(np.asarray(outs["a_x2"].getchannel("A")), np.asarray(alpha_in))  # bicubic alpha, kept


def test_onnx_artifact_jpeg_output_and_wrong_scale(tmp_path):
    onnx_path = export_onnx(tiny_edsr(2), tmp_path / "m.onnx")
    img = write_image(tmp_path / "x.png", (24, 16))
    assert main(["upscale", str(img), "--out", str(tmp_path / "o"), "--artifact", str(onnx_path),
                 "--format", "jpeg", "--quality", "80"]) == 0
    assert Image.open(tmp_path / "o" / "x_x2.jpg").format == "JPEG"


def test_tiled_output_equals_whole_image_within_001_db(tmp_path):
    model = tiny_edsr(2)
    img = decode_file(write_image(tmp_path / "big.png", (150, 110), seed=4))
    whole = np.asarray(upscale_decoded(torch_upscaler(model), img, 2), dtype=np.float32) / 255
    tiled = np.asarray(upscale_decoded(torch_upscaler(model), img, 2, TileConfig(tile=48, overlap=16)),
                       dtype=np.float32) / 255
    hr = np.asarray(Image.open(tmp_path / "big.png").resize((300, 220), Image.BICUBIC), dtype=np.float32) / 255
    assert abs(psnr_y_db(tiled, hr, 2) - psnr_y_db(whole, hr, 2)) < 0.01


def _report(run, rows):
    (run / "50-report").mkdir(parents=True)
    (run / "50-report/report.json").write_text(json.dumps({"header": {"scale": 2}, "rows": rows}))


def _row(artifact, runtime, loss, p50_at_1mp):
    return {"artifact": artifact, "runtime": runtime, "db_lost": {"embedded": loss, "Set5": loss},
            "latency": {"256x256": {"out_mp": 0.26, "p50_ms": p50_at_1mp / 4}, "540x960": {"out_mp": 2.07,
                                                                                           "p50_ms": p50_at_1mp * 2}}}


def test_choice_follows_the_report(tmp_path):
    _report(tmp_path, [_row("30-export/model_fp32.onnx", "ort", 0.0, 900), _row("20-quantize/model/a.onnx", "ort", 0.08, 200),
                       _row("20-quantize/model/b.onnx", "ort", 0.02, 280), _row("10-prune/c/model.onnx", "ort", 0.3, 50)])
    pick = choose(tmp_path, 0.26, "300ms", 0.1)  # at 256x256 LR: fp32 225 ms meets it with no loss
    assert pick.artifact.name == "model_fp32.onnx" and "meets 300ms" in pick.why
    pick = choose(tmp_path, 2.07, "1000ms", 0.1)  # at 1080p: a 400 ms, b 560 ms, fp32 1800 ms
    assert pick.artifact.name == "b.onnx" and pick.db_lost == 0.02
    pick = choose(tmp_path, 2.07, "300ms", 0.1)  # none within 0.1 dB meets 300 ms: the fastest of those
    assert pick.artifact.name == "a.onnx" and "none meets 300ms" in pick.why
    pick = choose(tmp_path, 4.0, "1000ms", 0.1)  # beyond the measured sizes: scaled by pixels
    assert pick.artifact.name == "a.onnx" and "scaled by pixels" in pick.why
    with pytest.raises(InputError, match="loses at most -0.5 dB"):
        choose(tmp_path, 1.0, "1000ms", -0.5)


def test_a_choice_from_latencies_of_another_cpu_says_so():
    from compress.core.cpu import CpuInfo
    from compress.pipeline.choose import measured_elsewhere

    here = CpuInfo("Host CPU", frozenset({"avx2"}))
    report = {"header": {"machine": {"cpu_description": "Bench CPU (avx2 amx_int8)"}}}
    assert measured_elsewhere(report, here) == ("latencies measured on Bench CPU (avx2 amx_int8), not on this host "
                                                "(Host CPU (avx2)): rerun make bench here to trust them; ")
    assert measured_elsewhere({"header": {"machine": {"cpu_description": here.describe()}}}, here) == ""
    assert measured_elsewhere({"header": {"scale": 2}}, here) == ""  # nothing recorded: nothing to compare


def test_a_served_run_names_the_cpu_of_its_latencies_beside_this_one(tmp_path):
    from compress.core.cpu import host_cpu
    from compress.pipeline.models import ModelSet
    from export.onnx_export import export_onnx

    (tmp_path / "30-export").mkdir()
    export_onnx(tiny_edsr(2), tmp_path / "30-export/model_fp32.onnx")
    _report(tmp_path, [_row("30-export/model_fp32.onnx", "ort", 0.0, 900)])
    report = json.loads((tmp_path / "50-report/report.json").read_text())
    report["header"]["machine"] = {"cpu_description": "Bench CPU (avx2 amx_int8)"}
    (tmp_path / "50-report/report.json").write_text(json.dumps(report))
    here = host_cpu().describe()
    assert ModelSet(run=tmp_path).machine() == {
        "cpu": here, "latencies_measured_on": "Bench CPU (avx2 amx_int8)",
        "note": f"latencies measured on Bench CPU (avx2 amx_int8), not on this host ({here}): rerun make bench here "
                "to trust them"}
    report["header"]["machine"] = {"cpu_description": here}
    (tmp_path / "50-report/report.json").write_text(json.dumps(report))
    assert ModelSet(run=tmp_path).machine() == {"cpu": here, "latencies_measured_on": here, "note": ""}


def test_interpolation_reproduces_a_and_b_at_0_and_1(tmp_path):
    a = save_checkpoint(tiny_edsr(2, seed=0), CFG, tmp_path / "a.safetensors")
    b = save_checkpoint(tiny_edsr(2, seed=1), CFG, tmp_path / "b.safetensors")
    la, lb = load_checkpoint(a), load_checkpoint(b)
    for alpha, ref in ((0.0, la), (1.0, lb)):
        blended = interpolate(la, lb, alpha).state_dict()
        for k, v in ref.model.state_dict().items():
            assert torch.equal(blended[k], v), (alpha, k)
    half = interpolate(la, lb, 0.3).state_dict()["conv_first.weight"]
    torch.testing.assert_close(half, 0.7 * la.model.conv_first.weight + 0.3 * lb.model.conv_first.weight)
    assert main(["interpolate", str(a), str(b), "--alpha", "0.3", "--out", str(tmp_path / "c.safetensors")]) == 0
    assert load_checkpoint(tmp_path / "c.safetensors").config == CFG
    other = save_checkpoint(tiny_edsr(3), EDSRConfig(scale=3, num_feat=16, num_block=2), tmp_path / "x3.safetensors")
    with pytest.raises(InputError, match="not the same architecture"):
        interpolate(la, load_checkpoint(other), 0.5)


def test_interpolate_refuses_to_overwrite_an_input_and_names_an_unwritable_out(tmp_path, capsys):
    a = save_checkpoint(tiny_edsr(2, seed=0), CFG, tmp_path / "a.safetensors")
    b = save_checkpoint(tiny_edsr(2, seed=1), CFG, tmp_path / "b.safetensors")
    before = a.read_bytes()
    assert main(["interpolate", str(a), str(b), "--alpha", "0.5", "--out", str(a)]) == 2
    assert "a.safetensors: is one of the inputs" in capsys.readouterr().err and a.read_bytes() == before
    (tmp_path / "c.safetensors.json").mkdir()  # the sidecar cannot be written: no checkpoint is left without it
    assert main(["interpolate", str(a), str(b), "--alpha", "0.5", "--out", str(tmp_path / "c.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "c.safetensors.json: cannot write (Is a directory)" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "c.safetensors").exists()
    with pytest.raises(SystemExit):
        main(["interpolate", str(a), str(b), "--alpha", "2", "--out", str(tmp_path / "d.safetensors")])
    assert "argument --alpha: must be in [0, 1], got 2" in capsys.readouterr().err


def test_an_output_with_nan_is_refused_not_written_black(tmp_path):
    img = decode_file(write_image(tmp_path / "x.png", (16, 16)))
    with pytest.raises(InputError, match="NaN or Inf"):
        upscale_decoded(lambda x: np.full((1, 3, 32, 32), np.nan, dtype=np.float32), img, 2)


def test_an_output_that_would_overwrite_an_input_is_refused_before_any_write(tmp_path, ckpt, capsys):
    folder = tmp_path / "same"
    folder.mkdir()
    write_image(folder / "a.png", (12, 10), seed=1)
    write_image(folder / "a_x2.png", (8, 6), seed=2)  # the user's own file, named like a's output
    before = (folder / "a_x2.png").read_bytes()
    assert main(["upscale", str(folder), "--out", str(folder), "--artifact", str(ckpt)]) == 2
    assert "a_x2.png: is one of the inputs" in capsys.readouterr().err
    assert (folder / "a_x2.png").read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["a.png",
                                                                                                        "a_x2.png"]


def test_a_missing_input_or_a_device_is_one_error_line_and_nothing_is_written(tmp_path, ckpt, capsys):
    write_image(tmp_path / "a.png", (12, 10))
    for bad, problem in ((tmp_path / "gone.png", "no such file or folder"), (Path("/dev/null"), "not a regular file")):
        assert main(["upscale", str(tmp_path / "a.png"), str(bad), "--out", str(tmp_path / "o"),
                     "--artifact", str(ckpt)]) == 2
        assert capsys.readouterr().err == f"error: {bad}: {problem}\n"
        assert not (tmp_path / "o").exists()


def test_an_input_named_like_an_output_waiting_for_its_batch_is_not_overwritten(tmp_path, ckpt, capsys):
    a = write_image(tmp_path / "a.png", (12, 10))
    pending = tmp_path / ".a_x2.png.pending"  # a PNG under the name a's output waits as
    pending.write_bytes(write_image(tmp_path / "b.png", (16, 16), seed=2).read_bytes())
    before = pending.read_bytes()
    assert main(["upscale", str(a), str(pending), "--out", str(tmp_path), "--artifact", str(ckpt)]) == 2
    assert ".a_x2.png.pending: is one of the inputs" in capsys.readouterr().err
    assert pending.read_bytes() == before and not (tmp_path / "a_x2.png").exists()


def test_a_folder_at_an_outputs_waiting_name_is_refused_before_any_write(tmp_path, ckpt, capsys):
    """It failed the write, and the cleanup then failed on it too and hid the first error."""
    a = write_image(tmp_path / "a.png", (12, 10))
    (tmp_path / "out" / ".a_x2.png.pending").mkdir(parents=True)
    assert main(["upscale", str(a), "--out", str(tmp_path / "out"), "--artifact", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'out' / '.a_x2.png.pending'}: a folder stands where {a}'s output goes\n"


def test_a_scale_or_model_that_contradicts_the_run_is_refused(tmp_path, ckpt, capsys):
    run = tmp_path / "run"
    (run / "50-report").mkdir(parents=True)
    (run / "50-report" / "report.json").write_text(json.dumps({"header": {"scale": 2}, "rows": []}))
    img = write_image(tmp_path / "x.png", (12, 10))
    assert main(["upscale", str(img), "--out", str(tmp_path / "o"), "--run", str(run), "--scale", "4"]) == 2
    assert "its report is for x2, and --scale asks for x4" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["eval", "--run", str(run), "--model", str(ckpt), "--data", str(tmp_path)]) == 2
    assert "give --model or --run, not both" in capsys.readouterr().err


def test_a_bad_image_in_a_batch_stops_it_before_any_output(tmp_path, ckpt, capsys):
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "a.png", (12, 10))
    (src / "b.png").write_bytes(write_image(tmp_path / "whole.png", (40, 30)).read_bytes()[:80])  # truncated
    write_image(src / "c.png", (12, 10))
    assert main(["upscale", str(src), "--out", str(tmp_path / "out" / "x2" / "photos"), "--artifact", str(ckpt)]) == 2
    assert "b.png" in capsys.readouterr().err and not (tmp_path / "out").exists()  # no folder it made is left
    with pytest.raises(SystemExit):
        main(["upscale", str(src), "--out", "", "--artifact", str(ckpt)])
    assert "argument --out: an empty path" in capsys.readouterr().err


def test_an_unwritable_out_and_a_report_without_header_are_input_errors(tmp_path, ckpt, capsys):
    img = write_image(tmp_path / "x.png", (12, 10))
    (tmp_path / "afile").write_text("")
    assert main(["upscale", str(img), "--out", str(tmp_path / "afile" / "sub"), "--artifact", str(ckpt)]) == 2
    assert "cannot write there" in capsys.readouterr().err
    (tmp_path / "run" / "50-report").mkdir(parents=True)
    (tmp_path / "run" / "50-report" / "report.json").write_text("{}")
    assert main(["upscale", str(img), "--out", str(tmp_path / "o"), "--run", str(tmp_path / "run")]) == 2
    assert "no header.scale" in capsys.readouterr().err


def test_a_model_that_fails_on_a_later_image_leaves_no_outputs_behind(tmp_path, capsys):
    """A graph with a fixed 16x16 output passes the probe (8x8 in) and the first image, then fails."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("Resize", ["x", "", "", "size"], ["y"], mode="nearest", axes=[2, 3])],
                              "fixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, None, None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, None, None])],
                              [numpy_helper.from_array(np.array([16, 16], dtype=np.int64), "size")])
    model = tmp_path / "fixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(model))
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "a.png", (8, 8))
    write_image(src / "b.png", (12, 10))
    assert main(["upscale", str(src), "--out", str(tmp_path / "out"), "--artifact", str(model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "b.png" in err and "not x2" in err
    assert not (tmp_path / "out").exists()  # a_x2.png was made, then removed with the folder
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a_x2.png").write_bytes(b"an earlier run's output")
    assert main(["upscale", str(src), "--out", str(tmp_path / "out"), "--artifact", str(model)]) == 2
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a_x2.png"]  # no .pending file left
    assert (tmp_path / "out" / "a_x2.png").read_bytes() == b"an earlier run's output"


def test_an_output_over_the_output_pixel_limit_is_refused_before_inference(tmp_path, ckpt, capsys, monkeypatch):
    monkeypatch.setenv("SRCOMPRESS_MAX_PIXELS", "1000")  # inputs up to 1000 px, outputs up to 4000
    write_image(tmp_path / "ok.png", (40, 25))  # 1000 px in, 4000 out at x2: admitted
    assert main(["upscale", str(tmp_path / "ok.png"), "--out", str(tmp_path / "o1"), "--artifact", str(ckpt)]) == 0
    capsys.readouterr()
    write_image(tmp_path / "wide.png", (41, 24))  # 984 px in (admitted), 15744 out at x4: refused
    x4 = save_checkpoint(tiny_edsr(4), EDSRConfig(scale=4, num_feat=16, num_block=2), tmp_path / "m4.safetensors")
    assert main(["upscale", str(tmp_path / "wide.png"), "--out", str(tmp_path / "o2"), "--artifact", str(x4)]) == 2
    err = capsys.readouterr().err
    assert "wide.png: a 164x96 output (0.0157 MP) is over the output limit of 0.004 MP" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o2").exists()


def test_a_row_on_a_runtime_this_host_lacks_is_no_candidate(tmp_path, monkeypatch):
    import compress.pipeline.choose as ch

    def row(rt: str, ms: float, loss: float) -> dict:
        return {"artifact": "a.onnx", "runtime": rt, "db_lost": {"embedded": loss},
                "latency": {"256x256": {"out_mp": 0.26, "p50_ms": ms}}}

    report = {"rows": [row("openvino-bf16", 50.0, 0.0), row("ort", 200.0, 0.05)]}
    monkeypatch.setattr(ch, "runs_here", lambda name: name != "openvino-bf16")  # made on an AMX host, run here
    assert ch.choose(tmp_path, 0.2, "300ms", 0.1, report).runtime == "ort"
    monkeypatch.setattr(ch, "runs_here", lambda name: True)
    assert ch.choose(tmp_path, 0.2, "300ms", 0.1, report).runtime == "openvino-bf16"
    from export.runtimes import runs_here

    assert runs_here("ort") and not runs_here("no-such-runtime")


@pytest.mark.parametrize("rows, problem", [
    (5, "rows is not a list"),
    ([5], r"rows\[0\] is not an object"),
    ([{"artifact": "/etc/passwd", "runtime": "ort"}], r"rows\[0\] artifact '/etc/passwd' is not a path inside the run"),
    ([{"artifact": "../x.onnx", "runtime": "ort"}], "is not a path inside the run"),
    ([{"artifact": "./20-quantize//a.onnx", "runtime": "ort"}], "is not a path inside the run"),  # not normal form
    ([{"artifact": "a.onnx"}], r"rows\[0\] has no runtime"),
    ([{"artifact": "a.onnx", "runtime": "ort", "db_lost": [1]}], "db_lost is not an object of numbers"),
    ([{"artifact": "a.onnx", "runtime": "ort", "latency": {"x": {}}}], r"latency\['x'\] needs a positive out_mp"),
    ([{"artifact": "a.onnx", "runtime": "ort", "latency": {"x": {"out_mp": 0, "p50_ms": 1}}}], "positive out_mp"),
    ([{"artifact": "a.onnx", "runtime": "ort", "latency": {"x": {"out_mp": "1", "p50_ms": 1}}}], "positive out_mp"),
])
def test_a_report_whose_rows_cannot_be_chosen_from_is_named_before_use(tmp_path, ckpt, capsys, rows, problem):
    run = tmp_path / "run"
    (run / "50-report").mkdir(parents=True)
    (run / "50-report" / "report.json").write_text(json.dumps({"header": {"scale": 2}, "rows": rows}))
    img = write_image(tmp_path / "x.png", (12, 10))
    assert main(["upscale", str(img), "--out", str(tmp_path / "o"), "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run / '50-report' / 'report.json'}: ") and err.count("\n") == 1
    assert re.search(problem, err) and not (tmp_path / "o").exists()
