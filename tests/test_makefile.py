"""The Makefile's defaults, read from ``make -n`` (what make would run, nothing run)."""

import shutil
import subprocess

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _dry(*args: str) -> str:
    return subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout


def test_arch_rrdb_defaults_to_the_shipped_scale():
    assert "--arch rrdb --scale 4 --run artifacts/run-rrdb-x4" in _dry("model", "ARCH=rrdb", "VENV=.venv")
    assert "--arch edsr --scale 2 --run artifacts/run-x2" in _dry("model", "VENV=.venv")
    assert "--arch rrdb --scale 2 --run artifacts/run-rrdb-x2" in _dry("model", "ARCH=rrdb", "SCALE=2", "VENV=.venv")


@pytest.mark.parametrize(("args", "source"), [
    (("TORCH_WHEELS=/nonexistent", "DEVICE=cpu"), "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"),
    (("TORCH_WHEELS=/nonexistent", "DEVICE=cpu", "TORCH_INDEX=https://example.org/simple"),
     "torch==2.13.0 --index-url https://example.org/simple"),
    (("TORCH_WHEELS=/", "DEVICE=cpu"), "torch==2.13.0 --find-links /"),
])
def test_a_cpu_host_never_takes_pypis_cuda_torch(tmp_path, args, source):
    out = _dry("venv", f"VENV={tmp_path / 'venv'}", *args)
    assert source in out
