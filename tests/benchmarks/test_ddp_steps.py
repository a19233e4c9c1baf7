import subprocess
import sys

import pytest

from benchmarks.ddp_steps import main
from tests.conftest import REPO, launch_env


def test_one_process_and_a_torchrun_group_are_timed_side_by_side():
    cmd = [sys.executable, "-m", "benchmarks.ddp_steps", "--steps", "1", "--warmup", "2", "--threads", "2", "--nproc", "2",
           "--batch", "2", "--patch", "8", "--precision", "fp32"]
    done = subprocess.run(cmd, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    header, one, many = done.stdout.strip().splitlines()
    assert header.startswith("# EDSR-baseline x2, global batch 2 x 8x8 LR, fp32, 1 steps after 2")
    assert one.startswith("1 process x 2 threads: ") and one.endswith(" steps/s")
    assert many.startswith("2 processes x 1 thread(s) (DDP, Gloo): ") and many.endswith("x)")


def test_a_batch_that_does_not_split_over_the_processes_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--batch", "3", "--nproc", "2"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == ("error: python -m benchmarks.ddp_steps: argument --batch: "
                                       "the global batch 3 does not split over 2 processes\n")
