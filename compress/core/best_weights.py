"""The weights of a training run's best validation check: checkpoint selection on a held-out set.

PSNR-oriented SR training validates every few thousand steps and ships the checkpoint that scored
best (BasicSR's ``best_metric_results``), since a learning-rate schedule that closes late can give
back what the middle of the run gained. :class:`BestWeights` keeps an in-memory copy of the model's
weights at its best check, so that training can end on them instead of on its last step.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn


@dataclasses.dataclass
class BestWeights:
    """The best-scoring validation check so far and a CPU copy of the weights it scored.

    Attributes:
        step: the check's step (0: none yet).
        psnr_y_db: its validation PSNR-Y (-inf: none yet).
        weights: the model's ``state_dict`` at that check, on the CPU (None: none yet).
    """

    step: int = 0
    psnr_y_db: float = -math.inf
    weights: dict[str, torch.Tensor] | None = None

    def offer(self, step: int, psnr_y_db: float, model: nn.Module) -> bool:
        """Keep ``model``'s weights if ``psnr_y_db`` beats the best so far (a tie keeps the earlier check).

        Returns:
            Whether they were kept.
        """
        if not psnr_y_db > self.psnr_y_db:  # NaN never wins
            return False
        self.step, self.psnr_y_db = step, psnr_y_db
        self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return True

    def restore(self, model: nn.Module) -> None:
        """Load the kept weights into ``model`` (nothing kept: ``model`` is left as it is)."""
        if self.weights is not None:
            model.load_state_dict(self.weights)

    def state_dict(self) -> dict[str, object]:
        """What a resume checkpoint stores, so the choice spans an interrupted run and its resumption."""
        return {"step": self.step, "psnr_y_db": self.psnr_y_db, "weights": self.weights}

    @classmethod
    def from_state(cls, state: dict | None) -> BestWeights:
        """The record :meth:`state_dict` wrote, or a fresh one for ``None`` (a resume file without one)."""
        if state is None:
            return cls()
        weights = state["weights"]  # a resume file loads onto the training device; the copy lives on the CPU
        return cls(int(state["step"]), float(state["psnr_y_db"]),
                   None if weights is None else {k: v.cpu() for k, v in weights.items()})
