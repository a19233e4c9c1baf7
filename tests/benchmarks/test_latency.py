import json

import pytest

from benchmarks.latency import Timing, main, time_calls
from compress.core.cpu import host_cpu
from export.onnx_export import export_onnx
from tests.conftest import tiny_edsr


def test_timing_statistics():
    t = Timing.of([0.001, 0.002, 0.003, 0.010])
    assert (t.min_ms, t.p50_ms, t.runs) == (1.0, 2.5, 4)
    assert t.p95_ms == pytest.approx(8.95) and t.mean_ms == 4.0
    with pytest.raises(ValueError, match="warmup must be >= 2"):
        time_calls(lambda: None, warmup=1, runs=3)


def test_warm_up_calls_are_made_and_not_timed():
    calls = []
    t = time_calls(lambda: calls.append(1), warmup=3, runs=4)
    assert len(calls) == 7 and t.runs == 4


@pytest.mark.parametrize("tile, mode", [("0", "whole image"), ("32", "tiles of 32 + ")])
def test_one_measurement_of_a_tiny_onnx_model(tmp_path, capsys, tile, mode):
    onnx_path = export_onnx(tiny_edsr(2), tmp_path / "m.onnx")
    assert main(["--artifact", str(onnx_path), "--runtime", "ort", "--height", "40", "--width", "36", "--scale", "2",
                 "--threads", "1", "--runs", "3", "--tile", tile]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["lr_size"] == [40, 36] and row["out_size"] == [80, 72] and row["runs"] == 3 and row["threads"] == 1
    assert row["mode"].startswith(mode)
    assert 0 < row["min_ms"] <= row["p50_ms"] <= row["p95_ms"]
    assert row["cpu"] == host_cpu().describe()  # a figure printed alone still names its CPU and features
    assert 0 < row["rss_opened_mb"] <= row["peak_rss_mb"]


@pytest.mark.parametrize("args, problem", [
    (["--artifact", "missing.onnx"], "argument --artifact: missing.onnx: no such file"),
    (["--warmup", "1"], "argument --warmup: warmup must be 2..1000, got 1"),
    (["--scale", "5"], "argument --scale: scale must be 1..4, got 5"),
    (["--tile", "8"], "argument --tile: tile must be 0 (automatic) or 32..8192, got 8"),
])
def test_bad_arguments_are_one_line_and_exit_2(capsys, args, problem):
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err == f"error: python -m benchmarks.latency: {problem}\n"
