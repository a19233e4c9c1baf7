"""Intermediate-feature distillation: the student's trunk features regress onto the teacher's.

FitNets hints (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015): at each tap (the output of
every trunk block, :attr:`compress.core.archs.Structure.feature_taps`) the student's feature map, through
a 1x1 convolution where its width differs from the teacher's (a pruned trunk), should match the
teacher's feature map. Each tap's L1 distance is divided by the mean magnitude of the teacher's feature
there, so taps of different scales weigh alike and the term reads as a relative error. The adapters
start from the least-squares map of one batch (closed form, so the hint is informative from the first
step) and train with the student; they are discarded afterwards. Used by channel-pruning fine-tuning,
where student and teacher share module names (the student is a pruned copy of the teacher). Under
torchrun each rank keeps its own adapters (they sit outside DistributedDataParallel); the student's
gradients are still averaged, so its weights stay the same on every rank.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from compress.core.archs import structure_of


def tap_names(model: nn.Module) -> list[str]:
    """Names of ``model``'s feature taps (its architecture's trunk block outputs)."""
    taps = {id(m) for m in structure_of(model).feature_taps}
    return [name for name, module in model.named_modules() if id(module) in taps]


def _capture(model: nn.Module, names: Sequence[str], store: dict[str, torch.Tensor], on: list[bool]) -> list:
    """Forward hooks writing each named module's output into ``store`` while ``on[0]``; the handles."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise KeyError(f"feature taps {missing} not in {type(model).__name__} (has e.g. {list(modules)[1:6]})")

    def hook(name: str):  # noqa: ANN202
        def keep(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            if on[0]:
                store[name] = output
        return keep

    return [modules[n].register_forward_hook(hook(n)) for n in names]


def least_squares_adapter(student: torch.Tensor, teacher: torch.Tensor) -> nn.Conv2d:
    """The 1x1 convolution (with bias) minimising ``||conv(student) - teacher||²`` over one batch.

    Args:
        student: (N, Cs, H, W) features.
        teacher: (N, Ct, H, W) features at the same positions.
    """
    cs, ct = student.shape[1], teacher.shape[1]
    x = student.detach().float().permute(0, 2, 3, 1).reshape(-1, cs)
    y = teacher.detach().float().permute(0, 2, 3, 1).reshape(-1, ct)
    design = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], 1)
    solution = torch.linalg.lstsq(design.cpu(), y.cpu()).solution  # (Cs + 1, Ct)
    conv = nn.Conv2d(cs, ct, 1).to(student.device)
    with torch.no_grad():
        conv.weight.copy_(solution[:cs].T.reshape(ct, cs, 1, 1))
        conv.bias.copy_(solution[cs])
    return conv


class FeatureDistiller:
    """Taps on a student and its teacher; :meth:`loss` after a forward pass of both.

    Args:
        student: the model being trained.
        teacher: the frozen model with the same module names at the taps.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        self.names = tap_names(teacher)
        if not self.names:
            raise ValueError(f"{type(teacher).__name__} declares no feature taps")
        self._student: dict[str, torch.Tensor] = {}
        self._teacher: dict[str, torch.Tensor] = {}
        self._on = [False]
        self._handles = (_capture(student, self.names, self._student, self._on)
                         + _capture(teacher, self.names, self._teacher, self._on))
        self._models = (student, teacher)
        self.adapters = nn.ModuleDict()

    @contextlib.contextmanager
    def capturing(self) -> Iterator[None]:
        """Record the taps during the forward passes inside (validation passes outside are not kept)."""
        self._on[0] = True
        try:
            yield
        finally:
            self._on[0] = False

    def fit_adapters(self, lr_batch: torch.Tensor) -> None:
        """Solve a least-squares 1x1 adapter, from one FP32 forward of ``lr_batch`` through student and
        teacher, for every tap whose widths differ; taps of equal width are compared directly."""
        with torch.no_grad(), self.capturing():
            for model in self._models:
                model(lr_batch)
        for i, name in enumerate(self.names):
            s, t = self._student[name], self._teacher[name]
            if s.shape[1] != t.shape[1]:
                self.adapters[str(i)] = least_squares_adapter(s, t)
        self._student.clear()
        self._teacher.clear()

    def parameters(self) -> list[nn.Parameter]:
        return list(self.adapters.parameters())

    def loss(self) -> torch.Tensor:
        """Mean over taps of L1(adapted student feature, teacher feature) / mean |teacher feature|."""
        terms = []
        for i, name in enumerate(self.names):
            s, t = self._student[name].float(), self._teacher[name].detach().float()
            if str(i) in self.adapters:
                s = self.adapters[str(i)](s)
            terms.append(nn.functional.l1_loss(s, t) / t.abs().mean().clamp_min(1e-6))
        self._student.clear()
        self._teacher.clear()
        return torch.stack(terms).mean()

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
