"""Exponential moving average of a model's weights (Polyak & Juditsky, SIAM J. Control Optim. 1992).

The average of the iterates of a noisy optimizer lies closer to the minimum than the last iterate: the
step-to-step noise of small-batch fine-tuning averages out. Super-resolution training keeps such an
average beside the trained network and ships it (BasicSR's ``ema_decay``, 0.999); here it also serves
QAT, whose few hundred small-batch steps otherwise move a well-trained model by more than its
quantization costs. Pure tensor bookkeeping: no project imports.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch


class WeightAverage:
    """Shadow copies of ``params`` updated as ``shadow = decay * shadow + (1 - decay) * param``.

    The shadow starts at the parameters' values when constructed (for fine-tuning: the starting model),
    so after ``n`` updates the start still weighs ``decay ** n`` in it.

    Args:
        params: the tensors to average (parameters, or parametrizations' ``original`` tensors).
        decay: weight of the old average per update, in (0, 1).
    """

    def __init__(self, params: Sequence[torch.Tensor], decay: float) -> None:
        if not (math.isfinite(decay) and 0 < decay < 1):
            raise ValueError(f"WeightAverage decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.params = list(params)
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current parameters."""
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - self.decay)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        """Overwrite the parameters with the average (the end of training)."""
        for p, s in zip(self.params, self.shadow, strict=True):
            p.copy_(s)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the parameters hold the average; afterwards their own values again."""
        with torch.no_grad():
            own = [p.detach().clone() for p in self.params]
            self.copy_to_params()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, o in zip(self.params, own, strict=True):
                    p.copy_(o)

    def state_dict(self) -> dict[str, object]:
        """The average, for a resume checkpoint."""
        return {"decay": self.decay, "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict`'s average (same parameters, same shapes)."""
        shadow = list(state["shadow"])  # type: ignore[arg-type]
        if len(shadow) != len(self.shadow) or any(a.shape != b.shape for a, b in zip(shadow, self.shadow)):
            raise ValueError("WeightAverage state does not match the parameters it averages")
        with torch.no_grad():
            for s, saved in zip(self.shadow, shadow, strict=True):
                s.copy_(saved)
