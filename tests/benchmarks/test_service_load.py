import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.service_load import main, scale_in_name
from compress.core.checkpoint import save_checkpoint
from tests.conftest import launch_env, tiny_edsr


@pytest.mark.parametrize("name, scale", [("edsr_baseline_x4.safetensors", 4), ("model_x3_int8.onnx", 3),
                                         ("rrdb_x1.safetensors", 1), ("rrdb_x16.onnx", None), ("model.onnx", None), ("max2.onnx", None)])
def test_the_scale_is_read_from_the_artifact_name(name, scale):
    assert scale_in_name(Path(name)) == scale


def test_a_real_service_is_loaded_and_its_rows_are_printed(tmp_path):
    model = tiny_edsr(2)
    artifact = save_checkpoint(model, model.cfg, tmp_path / "tiny_x2.safetensors")
    cmd = [sys.executable, "-m", "benchmarks.service_load", "--artifact", artifact.name, "--outputs", "64x48",
           "--concurrency", "1", "2", "--requests", "2", "--workers", "1", "--load", "6"]
    # named relative to where it is run: the service it starts runs in the repository folder
    done = subprocess.run(cmd, cwd=tmp_path, env=launch_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith(f"# {artifact.name}, x2, service workers 1 x 1 threads")
    assert lines[1] == "| output | concurrency | ok / errors | p50 ms | min ms | p95 ms | service inference p50 ms |"
    rows = [line for line in lines if line.startswith("| 64x48 |")]
    assert [r.split(" | ")[1:3] for r in rows] == [["1", "2 / 0"], ["2", "2 / 0"]]
    assert all(float(r.split(" | ")[4]) <= float(r.split(" | ")[3]) for r in rows)  # min <= p50
    assert lines[-1].startswith("load: 6 requests of 32x32 at concurrency 4: 6 served, 0 errors")


def test_an_artifact_without_a_scale_in_its_name_needs_scale(tmp_path, capsys):
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        main(["--artifact", str(artifact)])
    assert exc.value.code == 2
    assert capsys.readouterr().err == (f"error: python -m benchmarks.service_load: argument --scale: {artifact} does not "
                                       "name its scale (_x1 to _x4); give --scale\n")
