"""The automated gradual pruning (AGP) schedule.

Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model compression",
arXiv:1710.01878, eq. (1):

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3,   t in {t0, t0 + dt, ..., t0 + n * dt}

with initial sparsity s_i, final sparsity s_f, first pruning step t0, pruning frequency dt and n
pruning events. This is tfmot's ``PolynomialDecay`` with ``power=3``; the same object drives the
PyTorch pruners here and is converted to tfmot's for the Keras path.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from compress.core.recipe import from_mapping


MAX_EVENTS = 100_000  # pruning events a schedule may ask for (each recomputes every mask)


@dataclasses.dataclass(frozen=True)
class PolynomialDecay:
    """Sparsity that rises polynomially from ``initial_sparsity`` to ``final_sparsity``.

    Attributes:
        initial_sparsity: sparsity at ``begin_step`` (s_i), in [0, 1).
        final_sparsity: sparsity from ``end_step`` on (s_f), in [0, 1), at least ``initial_sparsity``.
        begin_step: first pruning step (t0).
        end_step: last pruning step (t0 + n * dt).
        power: exponent; 3 is AGP.
        frequency: steps between pruning events (dt).
    """

    initial_sparsity: float
    final_sparsity: float
    begin_step: int
    end_step: int
    power: float = 3.0
    frequency: int = 100

    def __post_init__(self) -> None:
        for name in ("initial_sparsity", "final_sparsity"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"PolynomialDecay.{name} must be in [0, 1), got {value!r}")
        if self.final_sparsity < self.initial_sparsity:
            raise ValueError(
                f"PolynomialDecay.final_sparsity ({self.final_sparsity}) must be >= initial_sparsity ({self.initial_sparsity})"
            )
        if self.begin_step < 0:
            raise ValueError(f"PolynomialDecay.begin_step must be >= 0, got {self.begin_step}")
        if self.end_step < self.begin_step:
            raise ValueError(f"PolynomialDecay.end_step ({self.end_step}) must be >= begin_step ({self.begin_step})")
        if self.frequency < 1:
            raise ValueError(f"PolynomialDecay.frequency must be >= 1, got {self.frequency}")
        if self.power <= 0:
            raise ValueError(f"PolynomialDecay.power must be > 0, got {self.power}")
        if (self.end_step - self.begin_step) // self.frequency > MAX_EVENTS:
            raise ValueError(f"PolynomialDecay: {(self.end_step - self.begin_step) // self.frequency} pruning events "
                             f"(end_step - begin_step) / frequency, more than {MAX_EVENTS}; raise frequency")

    def __call__(self, step: int) -> float:
        """Target sparsity at ``step`` (clamped before ``begin_step`` and after ``end_step``)."""
        span = self.end_step - self.begin_step
        if span == 0:  # a one-shot schedule: final sparsity from begin_step on
            return self.final_sparsity if step >= self.begin_step else self.initial_sparsity
        progress = min(1.0, max(0.0, (step - self.begin_step) / span))
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - progress) ** self.power

    def should_prune(self, step: int) -> bool:
        """Whether masks are updated at ``step``: every ``frequency`` steps from begin, and at end.

        Unlike tfmot, ``end_step`` is always a pruning step, so the final sparsity is reached even
        when ``end_step - begin_step`` is not a multiple of ``frequency``.
        """
        on_grid = (step - self.begin_step) % self.frequency == 0
        return self.begin_step <= step <= self.end_step and (on_grid or step == self.end_step)

    def pruning_steps(self) -> list[int]:
        return [s for s in range(self.begin_step, self.end_step + 1, self.frequency)] + (
            [self.end_step] if (self.end_step - self.begin_step) % self.frequency else []
        )

    def get_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PolynomialDecay:
        """The schedule :meth:`get_config` describes; an unknown or mistyped field is named."""
        return from_mapping(cls, config, "schedule")
