import json
import subprocess
import sys

import pytest

from benchmarks.train_step import VARIANTS, main
from compress.core.cpu import host_cpu
from tests.conftest import REPO, launch_env

SMALL = ["--steps", "1", "--warmup", "2", "--batch", "1", "--patch", "8", "--threads", "1"]


def test_one_variant_prints_its_step_times(capsys):
    assert main(["--variant", "fp32-cl", *SMALL]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["variant"] == "fp32-cl" and 0 < row["min_s"] <= row["median_s"]


def test_every_variant_runs_in_its_own_process_side_by_side():
    done = subprocess.run([sys.executable, "-m", "benchmarks.train_step", *SMALL], cwd=REPO, env=launch_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.strip().splitlines()
    assert header.startswith("# EDSR-baseline x2 training step, batch 1 x 8x8 LR, 1 threads")
    assert header.endswith(host_cpu().describe())
    assert [r.split()[0] for r in rows] == list(VARIANTS)
    assert rows[0].endswith("(1.00x FP32 NCHW)")


@pytest.mark.parametrize("args, problem", [
    (["--warmup", "1"], "argument --warmup: warmup must be 2..1000, got 1"),
    (["--steps", "0"], "argument --steps: steps must be 1..10000, got 0"),
    (["--variant", "fp16"], "argument --variant: invalid choice: 'fp16'"),
])
def test_bad_arguments_are_one_line_and_exit_2(capsys, args, problem):
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith(f"error: python -m benchmarks.train_step: {problem}")
    assert err.count("\n") == 1


def test_a_variant_whose_process_fails_is_one_error_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.setattr(sys, "executable", "/bin/false")  # every child exits 1 with nothing on stderr
    assert main(SMALL) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == ("error: benchmarks.train_step --variant fp32-nchw: the process failed (exit status 1): "
                                 "no output on stderr\n")
