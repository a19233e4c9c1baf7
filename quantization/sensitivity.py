"""Per-layer sensitivity and automatic mixed precision for PTQ.

Sensitivity of a node is the PSNR-Y recovered when that node alone stays in float while every other
node is INT8 (leave-one-out). Mixed precision keeps the most sensitive nodes in float, one at a time
in ranking order, until the INT8 model is within a PSNR budget of FP32 or a node limit is reached.
Scores come from the calibration images, never from the evaluation images.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx

from quantization.ptq import Calibration, Int8Options, quantize

Scorer = Callable[[Path], float]  # a quantized model file -> PSNR-Y in dB


def conv_nodes(model: Path) -> list[str]:
    """Names of the convolutions of an FP32 model, in graph order."""
    return [n.name for n in onnx.load(str(model)).graph.node if n.op_type == "Conv"]


@dataclasses.dataclass(frozen=True)
class Sensitivity:
    node: str
    gain_db: float


def rank_sensitivity(model: Path, cache: Path, method: Calibration, score: Scorer,
                     candidates: list[str] | None = None, options: Int8Options = Int8Options()) -> tuple[float, list[Sensitivity]]:
    """PSNR of the all-INT8 model and every candidate's leave-one-out gain, most sensitive first.

    Ties keep graph order, so the ranking is deterministic.
    """
    candidates = candidates if candidates is not None else conv_nodes(model)
    with tempfile.TemporaryDirectory(prefix="sens.") as tmp:
        base = score(quantize(model, Path(tmp) / "all.onnx", cache, method, options=options))
        gains = [Sensitivity(node, round(score(quantize(model, Path(tmp) / "one.onnx", cache, method, [node],
                                                        options)) - base, 4))
                 for node in candidates]
    order = sorted(range(len(gains)), key=lambda i: (-gains[i].gain_db, i))
    return base, [gains[i] for i in order]


def choose_float_nodes(model: Path, cache: Path, method: Calibration, score: Scorer, ranking: list[Sensitivity],
                       target_db: float, max_nodes: int, options: Int8Options = Int8Options()) -> tuple[list[str], list[tuple[int, float]]]:
    """Greedy mixed precision: add ranked nodes to the float set until ``score >= target_db``.

    Returns the float set and the score after each addition (0 = all INT8).
    """
    chosen: list[str] = []
    trace: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory(prefix="mixed.") as tmp:
        psnr = score(quantize(model, Path(tmp) / "m.onnx", cache, method, options=options))
        trace.append((0, round(psnr, 4)))
        for item in ranking:
            if psnr >= target_db or len(chosen) >= max_nodes:
                break
            if item.gain_db <= 0:
                break
            chosen.append(item.node)
            psnr = score(quantize(model, Path(tmp) / "m.onnx", cache, method, chosen, options))
            trace.append((len(chosen), round(psnr, 4)))
    return chosen, trace
