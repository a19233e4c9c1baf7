"""A real service process on 127.0.0.1 serving a tiny x2 EDSR, shared by the service and browser tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from compress.core.archs import EDSRConfig
from compress.core.checkpoint import save_checkpoint
from tests.conftest import REPO, tiny_edsr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """Start ``python -m compress serve ARGS`` on a free loopback port; wait for /healthz."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "compress", "serve", "--host", "127.0.0.1", "--port", str(port),
                                 *args], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"service did not start: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("serve-models")
    cfg = EDSRConfig(scale=2, num_feat=16, num_block=2)
    a = save_checkpoint(tiny_edsr(2, seed=0), cfg, root / "a.safetensors")
    b = save_checkpoint(tiny_edsr(2, seed=1), cfg, root / "b.safetensors")
    return a, b


@pytest.fixture(scope="session")
def service(tiny_checkpoints, tmp_path_factory):
    """(url, process) of a service with workers=1, queue=0, small limits, and A/B blending."""
    a, b = tiny_checkpoints
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    proc, url = start_service(["--artifact", str(a), "--blend", str(b), "--workers", "1", "--queue", "0",
                               "--max-upload-mb", "1", "--max-pixels", "1500000", "--threads", "1",
                               "--upload-timeout-s", "3", "--header-timeout-s", "2"], log)
    yield url, proc
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
