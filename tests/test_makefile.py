"""The Makefile's defaults, read from ``make -n`` (what make would run, nothing run)."""

import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _dry(*args: str) -> str:
    env = {k: v for k, v in os.environ.items()  # a variable exported by the caller (make test ARCH=...) would count
           if k not in {"ARCH", "SCALE", "RUN", "MODEL", "DEVICE", "TORCH_INDEX", "TORCH_WHEELS", "MAKEFLAGS",
                        "MFLAGS", "MAKELEVEL"}}
    return subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=REPO, capture_output=True,
                          text=True, check=True, env=env).stdout


def test_arch_rrdb_defaults_to_the_shipped_scale():
    # a default SCALE is what the run is named for, checked against the checkpoint (--expect-scale); a given one is asked for
    assert "--arch rrdb --expect-scale 4 --run artifacts/run-rrdb-x4" in _dry("model", "ARCH=rrdb", "VENV=.venv")
    assert "--arch edsr --expect-scale 2 --run artifacts/run-x2" in _dry("model", "VENV=.venv")
    assert "--model m.pth --arch edsr --expect-scale 2 --run" in _dry("model", "MODEL=m.pth", "VENV=.venv")
    assert "--arch rrdb --scale 2 --run artifacts/run-rrdb-x2" in _dry("model", "ARCH=rrdb", "SCALE=2", "VENV=.venv")


@pytest.mark.parametrize(("args", "source"), [
    (("TORCH_WHEELS=/nonexistent", "DEVICE=cpu"), "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"),
    (("TORCH_WHEELS=/nonexistent", "DEVICE=cpu", "TORCH_INDEX=https://example.org/simple"),
     "torch==2.13.0 --index-url https://example.org/simple"),
    (("TORCH_WHEELS=/", "DEVICE=cpu"), "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"),
    (("TORCH_WHEELS={wheels}", "DEVICE=cpu"), "torch==2.13.0 --find-links {wheels}"),
])
def test_a_cpu_host_never_takes_pypis_cuda_torch(tmp_path, args, source):
    wheels = tmp_path / "wheels"  # a folder with no torch wheel in it is no source of torch
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    out = _dry("venv", f"VENV={tmp_path / 'venv'}", *(a.format(wheels=wheels) for a in args))
    assert source.format(wheels=wheels) in out
