"""Training progress for logs that are not a terminal."""

from __future__ import annotations

import time


class PlainProgress:
    """Progress as plain lines, at most one per ``interval_s``, for logs that are not a terminal (where
    tqdm's bar is disabled): a long fine-tuning written to a file would otherwise say nothing until it ends.

    Args:
        desc: label at the start of each line.
        total: the step count a full run reaches.
        start_step: the first step of this run (after a resume, the steps already done).
        interval_s: the least time between two lines.
    """

    def __init__(self, desc: str, total: int, start_step: int, interval_s: float = 60.0) -> None:
        self.desc, self.total, self.interval_s = desc, total, interval_s
        self._t0 = self._last_s = time.perf_counter()
        self._start_step = start_step

    def line(self, step: int, loss: float, lr_now: float, now_s: float | None = None) -> str | None:
        """The line to print after ``step`` steps, or None while ``interval_s`` has not passed."""
        now_s = time.perf_counter() if now_s is None else now_s
        if now_s - self._last_s < self.interval_s:
            return None
        self._last_s = now_s
        elapsed_s = now_s - self._t0
        s_per_step = elapsed_s / max(step - self._start_step, 1)
        return (f"[{self.desc}] step {step}/{self.total}: loss {loss:.4f}, lr {lr_now:.2e}, "
                f"{s_per_step:.2f} s/step, {elapsed_s / 60:.1f} min")
