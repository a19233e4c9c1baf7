import pytest

from benchmarks.ort_conv_path import compare, main, not_exact
from export.onnx_export import export_onnx
from compress.core.cpu import host_cpu
from quantization.ptq import cpu_has_vnni
from tests.conftest import seven_bit_weights, tiny_edsr


def test_the_ab_benchmark_times_both_paths_in_their_own_processes(int8_models):
    seven = seven_bit_weights(int8_models["edsr"], int8_models["edsr"].with_name("seven.onnx"))  # exact on any x86
    r = compare(seven, (16, 16), 2, threads=1, runs=1, rounds=1)
    assert r["max_abs_diff"] == 0.0 and not list(seven.parent.glob("*qgemm*"))  # nothing left in the run
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

    seven = seven_bit_weights(int8_models["edsr"], int8_models["edsr"].with_name("seven.onnx"))
    monkeypatch.setattr(sys, "executable", "/bin/false")
    assert main(["--artifact", str(seven), "--scale", "2", "--size", "16x16", "--runs", "1",
                 "--rounds", "1", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {seven}: benchmarks.latency: the process failed (exit status 1): no output on stderr\n"


@pytest.mark.parametrize("vnni", [False, True])
def test_a_twin_whose_outputs_differ_is_one_error_line_that_says_why(int8_models, capsys, monkeypatch, vnni):
    import benchmarks.ort_conv_path as bench

    monkeypatch.setattr(bench, "same_outputs", lambda *_: 0.0078)
    monkeypatch.setattr(bench, "cpu_has_vnni", lambda: vnni)
    model = int8_models["edsr"]
    assert main(["--artifact", str(model), "--scale", "2", "--size", "16x16", "--runs", "1", "--rounds", "1"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {not_exact(model, 0.0078, vnni)}\n" and err.count("\n") == 1
    assert ("this CPU has no VNNI" in err) is not vnni and "differ by 0.0078" in err


@pytest.mark.skipif(cpu_has_vnni() or "avx2" not in host_cpu().flags,
                    reason="measured on an AVX2 CPU without VNNI only (with VNNI both paths compute alike)")
def test_without_vnni_a_full_range_twin_is_refused_for_real(int8_models, capsys):
    """On an AVX2-only CPU (session 41's AMD EPYC) the tiny EDSR's full-range twin differs by about 0.008."""
    model = int8_models["edsr"]
    assert main(["--artifact", str(model), "--scale", "2", "--size", "16x16", "--runs", "1", "--rounds", "1"]) == 2
    assert "this CPU has no VNNI" in capsys.readouterr().err
