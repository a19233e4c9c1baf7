import pytest

from benchmarks.ort_conv_path import compare, main
from export.onnx_export import export_onnx
from tests.conftest import tiny_edsr


def test_the_ab_benchmark_times_both_paths_in_their_own_processes(int8_models):
    r = compare(int8_models["edsr"], (16, 16), 2, threads=1, runs=1, rounds=1)
    assert r["max_abs_diff"] == 0.0 and not list(int8_models["edsr"].parent.glob("*qgemm*"))  # nothing left in the run
    assert set(r["p50_ms"]) == {"symmetric conv", "im2col + QGEMM"} and all(len(v) == 1 for v in r["p50_ms"].values())
    p50 = {name: v[0] for name, v in r["p50_ms"].items()}  # one round: the median is that round's p50
    assert r["qgemm_speedup"] == pytest.approx(p50["symmetric conv"] / p50["im2col + QGEMM"], abs=1e-3)
    assert all(r["min_ms"][name] <= p50[name] for name in p50)


def test_a_model_without_int8_weights_or_not_onnx_at_all_is_refused_in_one_line(tmp_path, capsys):
    fp32 = export_onnx(tiny_edsr(2), tmp_path / "fp32.onnx")
    assert main(["--artifact", str(fp32), "--scale", "2"]) == 2
    assert capsys.readouterr().err == f"error: {fp32}: no S8 convolution weight with a zero point to shift\n"
    text = tmp_path / "notes.onnx"
    text.write_text("not a model\n")
    assert main(["--artifact", str(text), "--scale", "2"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {text}: not an ONNX model (")


def test_a_size_that_is_not_hxw_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--artifact", __file__, "--scale", "2", "--size", "256"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == ("error: python -m benchmarks.ort_conv_path: argument --size: "
                                       "size must be HxW (e.g. 256x256), got '256'\n")


def test_a_timing_process_that_fails_is_one_error_line(int8_models, capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys, "executable", "/bin/false")
    assert main(["--artifact", str(int8_models["edsr"]), "--scale", "2", "--size", "16x16", "--runs", "1",
                 "--rounds", "1", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {int8_models['edsr']}: benchmarks.latency: the process failed (exit status 1): "
                   "no output on stderr\n")
