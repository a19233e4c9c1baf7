"""The description every architecture file gives of itself: config, module, structure and the
checkpoint layouts of its releases.

Pruning, QAT, export and the checkpoint loader read these facts instead of testing model types, so an
architecture is one file (its config, module, layouts and :class:`Architecture` entry) plus one entry
in :data:`compress.core.archs.ARCHITECTURES` (and, for TFLite export, one Keras twin in
:mod:`export.keras_twins`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torch import nn

from compress.core.archs.layout import Layout


@dataclasses.dataclass(frozen=True)
class Structure:
    """Structural facts of one built model.

    Attributes:
        output_conv: the last convolution (3 or 1 outputs at the HR size, or before the last shuffle).
        upsample_convs: convolutions that feed a PixelShuffle, with its factor (their outputs must be
            pruned in groups of factor², which torch-pruning does not model).
        inner_convs: convolutions whose outputs stay inside a block (prunable harder than the trunk).
        relu_fed_convs: convolutions a ReLU follows (ORT fuses the ReLU: no requantization in between).
        residual_blocks: modules whose forward ends in a residual ``Add`` (requantized by ORT).
        feature_taps: modules whose outputs are the trunk's features, matched by feature distillation
            (:mod:`compress.core.distill`).
        upsample_feature_convs: convolutions of an interpolating upsampler (RRDB's ``conv_up1``,
            ``conv_up2``, ``conv_hr``): plain output channels at the enlarged size, pruned at the
            recipe's upsampler ratio when it sets one, else at the trunk's.
        scaled_sums: modules that multiply a residual block's output by a constant (RRDB's 0.2): ORT
            requantizes their product (``QLinearMul``; a ``Mul`` right after a convolution is folded
            into its weights instead).
    """

    output_conv: nn.Conv2d
    upsample_convs: tuple[tuple[nn.Conv2d, int], ...]
    inner_convs: tuple[nn.Conv2d, ...]
    relu_fed_convs: tuple[nn.Conv2d, ...]
    residual_blocks: tuple[nn.Module, ...]
    feature_taps: tuple[nn.Module, ...]
    upsample_feature_convs: tuple[nn.Conv2d, ...] = ()
    scaled_sums: tuple[nn.Module, ...] = ()

    def protected_convs(self) -> list[nn.Conv2d]:
        """Convolutions whose output channels must not be pruned."""
        return [conv for conv, _ in self.upsample_convs] + [self.output_conv]

    def shuffle_stages(self) -> list[tuple[nn.Conv2d, int, nn.Conv2d]]:
        """Each upsampling conv with its shuffle factor and the conv that reads the shuffled map (the
        next stage's upsampling conv, or the output conv)."""
        readers = [conv for conv, _ in self.upsample_convs[1:]] + [self.output_conv]
        return [(conv, r, reader) for (conv, r), reader in zip(self.upsample_convs, readers)]


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One architecture.

    Attributes:
        name: short name (``edsr``, ``rrdb``, ``srcnn``), as in recipes, sidecars and ``ARCH=``.
        config_type: its frozen config dataclass (canonical BasicSR hyperparameter names).
        module_type: its ``nn.Module`` (built from a config).
        structure: the facts of a built model (see :class:`Structure`).
        canonical_layout: the checkpoint layout a canonical state dict is in.
        layouts: the checkpoint layouts of its public releases, each recognised and converted by
            shape (:class:`~compress.core.archs.layout.Layout`; ``canonical_layout`` among them).
    """

    name: str
    config_type: type
    module_type: type
    structure: Callable[[nn.Module], Structure]
    canonical_layout: str
    layouts: tuple[Layout, ...]

    def build(self, cfg: object) -> nn.Module:
        return self.module_type(cfg)

    def config(self, **hyper: object) -> object:
        """A config from the hyperparameters it has among ``hyper`` (others are ignored)."""
        names = {f.name for f in dataclasses.fields(self.config_type)}
        return self.config_type(**{k: v for k, v in hyper.items() if k in names})
