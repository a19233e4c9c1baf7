"""The training loop under torchrun: 2 Gloo processes on a tiny EDSR (real processes, loopback only)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compress.core.errors import InputError
from tests.conftest import REPO, launch_env

WORKER = Path(__file__).with_name("ddp_worker.py")


def launch(nproc: int, out: Path, images: Path, steps: int, die_at: int = 0, resume: Path | None = None,
           precision: str = "fp32"):
    out.mkdir(parents=True, exist_ok=True)
    args = [str(out), str(images), str(steps), str(die_at), str(resume or out / "resume.pt")]
    env = launch_env(OMP_NUM_THREADS="1", WORKER_PRECISION=precision)
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               str(WORKER), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)


def why(proc: subprocess.CompletedProcess) -> str:
    """A failed launch's cause: the workers' own error lines (torchrun's summary fills the tail)."""
    causes = [line for line in proc.stderr.splitlines() if any(k in line for k in ("terminate", "what()", "Error"))]
    return "\n".join(causes[:20]) + "\n...\n" + proc.stderr[-1500:]


def load(out: Path, rank: int) -> dict:
    return torch.load(out / f"rank{rank}.pt", weights_only=True)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_two_gloo_ranks_hold_identical_weights_and_the_loss_falls(image_dir, tmp_path, precision):
    proc = launch(2, tmp_path / "a", image_dir, steps=30, precision=precision)
    assert proc.returncode == 0, why(proc)
    r0, r1 = load(tmp_path / "a", 0), load(tmp_path / "a", 1)
    assert r0["world"] == 2 and r0["steps_done"] == 30
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key
    assert r0["after"] < 0.8 * r0["before"]


def test_same_seed_and_ranks_give_identical_weights(image_dir, tmp_path):
    runs = []
    for name in ("x", "y"):
        proc = launch(2, tmp_path / name, image_dir, steps=10)
        assert proc.returncode == 0, why(proc)
        runs.append(load(tmp_path / name, 0)["state"])
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key


def test_killed_run_resumes_from_its_checkpoint_under_another_number_of_ranks(image_dir, tmp_path):
    resume = tmp_path / "resume.pt"
    killed = launch(2, tmp_path / "k", image_dir, steps=10, die_at=7, resume=resume)
    assert killed.returncode != 0
    assert torch.load(resume, weights_only=True)["step"] == 5  # rank 0's checkpoint of step 5 survived
    alone = launch(1, tmp_path / "k", image_dir, steps=10, resume=resume)
    assert alone.returncode == 0, why(alone)
    done = load(tmp_path / "k", 0)
    assert done["world"] == 1 and done["resumed_from"] == 5 and done["steps_done"] == 10
    assert torch.load(resume, weights_only=True)["step"] == 10


def test_global_batch_must_split_over_the_ranks(monkeypatch):
    from compress.core.distributed import share_of_batch

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(InputError, match="does not split over 3 processes"):
        share_of_batch(16)
    assert share_of_batch(15) == 5


def test_the_process_group_is_left_before_exit():
    from compress.core.distributed import release_process_group

    release_process_group()  # no group joined: nothing to do
    torch.distributed.init_process_group("gloo", rank=0, world_size=1, store=torch.distributed.HashStore())
    assert torch.distributed.is_initialized()
    release_process_group()
    assert not torch.distributed.is_initialized()


def _report_rank0_value(rank: int, port: int, out: str) -> None:
    import os

    from compress.core.distributed import rank0_value, release_process_group

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    got = rank0_value({"rank": rank})  # each rank's own decision; rank 0's must win everywhere
    Path(out, f"rank{rank}").write_text(str(got["rank"]))
    release_process_group()


def test_every_rank_takes_rank0s_decision(tmp_path, monkeypatch):
    import socket

    from compress.core.distributed import rank0_value

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert rank0_value("own") == "own"  # one process: its own value, no group joined
    assert not torch.distributed.is_initialized()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_report_rank0_value, args=(port, str(tmp_path)), nprocs=2)
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["0", "0"]
