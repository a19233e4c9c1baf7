import onnx
from onnx import TensorProto, helper

from benchmarks.calibration_memory import main, measure_once
from export.onnx_export import export_onnx
from quantization.ptq import preprocess
from tests.conftest import tiny_edsr


def _graph(tmp_path):
    return preprocess(export_onnx(tiny_edsr(2), tmp_path / "f.onnx"), tmp_path / "p.onnx")


def test_one_measurement_counts_the_patches_and_a_peak(tmp_path):
    r = measure_once(_graph(tmp_path), 2, patches_per_image=3, chunk=2, method="minmax", percentile=99.99)
    assert r["patches"] == 6 and r["chunk"] == 2 and r["peak_rss_mb"] > 0 and r["seconds"] >= 0


def test_every_pair_runs_in_its_own_process_and_prints_a_row(tmp_path, capsys):
    assert main(["--onnx", str(_graph(tmp_path)), "--scale", "2", "--patches-per-image", "2",
                 "--chunk", "1", "0", "--method", "minmax"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert len(rows) == 2 and "calls of 1" in rows[0] and "one call" in rows[1]
    assert all("4 patches" in row and " MB" in row for row in rows)


def test_a_file_that_is_not_a_model_is_one_line(tmp_path, capsys):
    bad = tmp_path / "x.onnx"
    bad.write_text("x\n")
    assert main(["--onnx", str(bad), "--scale", "2"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {bad}: not an ONNX model (")


def test_a_relative_path_from_elsewhere_and_a_model_that_is_not_sr_are_one_line(tmp_path, capsys, monkeypatch):
    _graph(tmp_path)
    monkeypatch.chdir(tmp_path)  # the measurements run from the repository root: the path must not break
    assert main(["--onnx", "p.onnx", "--scale", "2", "--patches-per-image", "1", "--chunk", "0",
                 "--method", "minmax"]) == 0
    assert "    2 patches, one call" in capsys.readouterr().out  # 1 patch from each of the 2 calibration images
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, None, None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, None, None])
    other = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 18)]), str(other))
    assert main(["--onnx", str(other), "--scale", "2", "--patches-per-image", "1", "--chunk", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {other.resolve()}: cannot calibrate it as an SR model (") and err.count("\n") == 1, err
