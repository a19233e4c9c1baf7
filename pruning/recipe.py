"""The prune recipe: which method, which schedule, how to fine-tune."""

from __future__ import annotations

import dataclasses

from compress.core.data import PatchConfig
from compress.core.train_config import TrainConfig
from pruning.channel import Criterion
from pruning.schedule import PolynomialDecay

METHODS = ("unstructured", "channel")
#: Fields that only one method reads: set for the other, they would be silently ignored.
ONLY_FOR = {"channel": ("round_to", "inner_final_sparsity", "upsample_final_sparsity", "criterion"),
            "unstructured": ("skip_first_last",)}
CRITERIA = tuple(c.value for c in Criterion)


@dataclasses.dataclass(frozen=True)
class PruneRecipe:
    """A pruning run.

    Attributes:
        method: ``unstructured`` (weight magnitude) or ``channel`` (structured, channels removed).
        schedule: AGP sparsity (unstructured: fraction of weights; channel: fraction of channels per
            prunable group) over fine-tuning steps.
        scope: ``layer`` or ``global`` thresholds (unstructured); channel: ``layer`` prunes every group
            equally, ``global`` ranks groups across layers.
        skip_first_last: keep the first and last convolutions dense (unstructured).
        round_to: channel counts stay multiples of this (channel).
        inner_final_sparsity: final channel ratio inside blocks (EDSR's conv1, RRDB's growth
            convolutions); the trunk follows ``schedule`` (channel; default: the same as the trunk).
        upsample_final_sparsity: final fraction of PixelShuffle groups removed from every sub-pixel
            upsampling stage (channel; :mod:`pruning.shuffle`), or of the channels of an interpolating
            upsampler's convolutions (RRDB's conv_up1, conv_up2, conv_hr); 0 keeps EDSR's upsampler
            whole and prunes RRDB's at the trunk's ratio. At x4 the upsampler is about a third of
            EDSR-baseline's MACs and a quarter of the compact RRDB's.
        criterion: channel ranking (``magnitude``, ``taylor``, ``lamp``, ``fpgm``; see
            :class:`pruning.channel.Criterion`).
        data: ``default`` or a folder of HR training images.
        patch: fine-tuning patches.
        train: fine-tuning; ``train.steps`` must reach past ``schedule.end_step`` to recover.
    """

    method: str = "channel"
    schedule: PolynomialDecay = PolynomialDecay(0.0, 0.3, begin_step=0, end_step=200, frequency=50)
    scope: str = "layer"
    skip_first_last: bool = True
    round_to: int = 8
    inner_final_sparsity: float | None = None
    upsample_final_sparsity: float = 0.0
    criterion: str = "magnitude"
    data: str = "default"
    patch: PatchConfig = PatchConfig(lr_patch=32, batch_size=8)
    train: TrainConfig = TrainConfig(steps=300, lr=1e-4, distill_weight=0.5)

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("data must be 'default' or a folder, got ''")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.scope not in ("layer", "global"):
            raise ValueError(f"scope must be layer or global, got {self.scope!r}")
        if self.inner_final_sparsity is not None and not 0.0 <= self.inner_final_sparsity < 1.0:
            raise ValueError(f"inner_final_sparsity must be in [0, 1), got {self.inner_final_sparsity}")
        if not 0.0 <= self.upsample_final_sparsity < 1.0:
            raise ValueError(f"upsample_final_sparsity must be in [0, 1), got {self.upsample_final_sparsity}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for method, names in ONLY_FOR.items():
            ignored = [n for n in names if method != self.method and getattr(self, n) != defaults[n]]
            if ignored:
                raise ValueError(f"{', '.join(ignored)}: only method = {method!r} reads it, and this recipe's "
                                 f"method is {self.method!r}; remove it")
        if self.train.ema_decay:
            raise ValueError(f"train.ema_decay must be 0 for pruning (unstructured: the masks would not hold in the "
                             f"weight average; channel: every fine-tuning segment between pruning steps would "
                             f"restart it), got {self.train.ema_decay}")
        if self.train.keep_best:
            raise ValueError("train.keep_best must be false for pruning: an early check of the schedule is less "
                             "sparse than its end, and channel pruning validates nothing to choose among")
        if self.criterion == "lamp" and self.scope == "layer":
            raise ValueError("criterion lamp ranks a layer's channels as magnitude does (LAMP rescales each layer "
                             "monotonically); it differs only across layers: set scope = \"global\" or use magnitude")
        if self.train.max_minutes:
            raise ValueError(f"train.max_minutes must be 0 for pruning (the schedule is in steps: a wall-time budget "
                             f"would end the run before the schedule does), got {self.train.max_minutes}")
        if self.method == "channel" and self.train.warmup_steps:
            raise ValueError(f"train.warmup_steps must be 0 for channel pruning (each fine-tuning segment between "
                             f"pruning steps starts at the full rate), got {self.train.warmup_steps}")
        if self.round_to < 1:
            raise ValueError(f"round_to must be >= 1, got {self.round_to}")
        if self.train.steps <= self.schedule.end_step:
            raise ValueError(
                f"train.steps ({self.train.steps}) must be > schedule.end_step ({self.schedule.end_step}): "
                "the last pruning step needs fine-tuning steps after it to recover"
            )
        if self.criterion == "taylor" and self.train.distill_weight >= 1.0:
            raise ValueError("criterion taylor ranks channels by loss gradients, and with train.distill_weight = 1 "
                             "the loss is the distillation term alone, whose gradient is 0 while the student still "
                             "equals its teacher: set distill_weight below 1 or use another criterion")
