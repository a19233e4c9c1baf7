"""FP32 ONNX export with dynamic height and width, ``onnx.checker`` and a PyTorch parity check."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from compress.core.files import atomic_path
from export.onnx_tail import rewrite_narrow_tail

OPSET = 18
INPUT_NAME = "lr"
OUTPUT_NAME = "sr"


MIN_PARITY_DB = 60.0  # an FP32 conversion must match its source to ~1e-3 of full range


@dataclasses.dataclass(frozen=True)
class Parity:
    """Agreement between two runtimes on the same input (outputs in [0, 1])."""

    max_abs_diff: float
    psnr_db: float
    input_shape: tuple[int, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "max_abs_diff": float(f"{self.max_abs_diff:.3g}") if math.isfinite(self.max_abs_diff) else "inf",
            "psnr_db": round(self.psnr_db, 2) if math.isfinite(self.psnr_db) else str(self.psnr_db),
            "input_shape": list(self.input_shape),
        }


def parity(reference: np.ndarray, candidate: np.ndarray) -> Parity:
    """PSNR and largest difference of ``candidate`` against ``reference``; a NaN or Inf in either is
    infinitely far (PSNR ``-inf``), never a match."""
    diff = reference.astype(np.float64) - candidate.astype(np.float64)
    if not np.isfinite(diff).all():
        return Parity(max_abs_diff=math.inf, psnr_db=-math.inf, input_shape=tuple(reference.shape))
    mse = float(np.mean(diff**2))
    return Parity(
        max_abs_diff=float(np.abs(diff).max()),
        psnr_db=math.inf if mse == 0 else 10 * math.log10(1.0 / mse),
        input_shape=tuple(reference.shape),
    )


class ParityError(RuntimeError):
    """An exported or converted model disagrees with the model it came from."""


def require_parity(par: Parity, what: str, files: tuple[Path, ...] = ()) -> Parity:
    """``par`` if it reaches :data:`MIN_PARITY_DB`; else ``files`` (the converted model) are removed.

    Raises:
        ParityError: naming ``what`` was compared, with the PSNR and the largest difference.
    """
    if par.psnr_db >= MIN_PARITY_DB:
        return par
    for f in files:
        Path(f).unlink(missing_ok=True)
    raise ParityError(f"{what} (PSNR {par.psnr_db:.1f} dB, max diff {par.max_abs_diff:.3g}; "
                      f"at least {MIN_PARITY_DB:.0f} dB needed)")


@contextlib.contextmanager
def _exporter_quiet() -> Iterator[None]:
    """The exporter's notes on stderr (torchvision's ops skipped, pytree's deprecations) would stand
    between a command and its one-line result or error: held back while it runs."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model: nn.Module, path: str | Path, sample: torch.Tensor | None = None,
                narrow_tail: bool = True) -> Path:
    """Export a canonical model to ONNX with dynamic H and W, written atomically and checked.

    Args:
        model: canonical model (NCHW RGB in [0, 1]).
        path: output ``.onnx`` file.
        sample: example LR input (default 1x3x64x64).
        narrow_tail: apply the exact output-convolution rewrites of :mod:`export.onnx_tail`
            (recorded in the file's metadata); ``False`` writes the graph as PyTorch exports it.
    """
    model = model.eval().cpu()
    sample = sample if sample is not None else torch.rand(1, 3, 64, 64)
    dims = {2: torch.export.Dim("height", min=8, max=8192), 3: torch.export.Dim("width", min=8, max=8192)}
    with atomic_path(path) as tmp, contextlib.redirect_stdout(io.StringIO()), _exporter_quiet():
        program = torch.onnx.export(
            model,
            (sample,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamo=True,
            dynamic_shapes={"x": dims},
            verbose=False,
        )
        program.save(str(tmp))
        if narrow_tail:
            proto = onnx.load(str(tmp))
            if rewrite_narrow_tail(proto):
                onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
    return Path(path)


def onnx_op_counts(path: str | Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def export_checked(model: nn.Module, path: str | Path, probe: torch.Tensor,
                   narrow_tail: bool = True) -> tuple[Path, Parity]:
    """Export ``model`` to ONNX, run the file in ONNX Runtime on ``probe`` and compare with PyTorch.

    Raises:
        ParityError: if the two disagree by more than ``MIN_PARITY_DB`` PSNR; the file is removed.
    """
    from export.runtimes import ort_upscaler

    out = export_onnx(model, path, narrow_tail=narrow_tail)
    with torch.inference_mode():
        ref = model.eval()(probe).numpy()
    par = require_parity(parity(ref, ort_upscaler(out)(probe.numpy())), f"{out}: ONNX output disagrees with PyTorch",
                         (out,))
    return out, par
