import sys

import pytest

from benchmarks.child import ChildFailed, run_child


def test_a_child_gives_its_stdout():
    assert run_child([sys.executable, "-c", "print('ok')"], "echo") == "ok\n"


def test_a_failed_child_is_named_with_its_status_and_last_stderr_line():
    code = "import sys; print('first', file=sys.stderr); sys.exit('MemoryError: out of memory')"
    with pytest.raises(ChildFailed) as exc:
        run_child([sys.executable, "-c", code], "benchmarks.train_step --variant bf16-cl")
    assert str(exc.value) == ("benchmarks.train_step --variant bf16-cl: the process failed (exit status 1): "
                              "MemoryError: out of memory")
