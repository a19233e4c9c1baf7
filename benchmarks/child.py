"""Child processes of the benchmark commands, which time each configuration in a process of its own.

A child that fails (out of memory, a runtime that cannot open the artifact) becomes one
:class:`ChildFailed` naming the child and its last line of stderr, which the command prints as its
one ``error:`` line, rather than a ``CalledProcessError`` traceback that hides the child's message.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


class ChildFailed(Exception):
    """A child process exited with a non-zero status."""


def run_child(cmd: Sequence[str], name: str, **kwargs) -> str:
    """Run ``cmd`` and return its stdout.

    Args:
        cmd: the command.
        name: what the child is, for the message (e.g. ``benchmarks.train_step --variant bf16``).
        **kwargs: passed to :func:`subprocess.run` (``env``, ``cwd``, ``timeout``).

    Raises:
        ChildFailed: the child exited non-zero; the message holds its exit status and last stderr line.
    """
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output on stderr"]
        raise ChildFailed(f"{name}: the process failed (exit status {proc.returncode}): {tail[0]}")
    return proc.stdout
