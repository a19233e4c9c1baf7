"""Pick, from a run's report, the artifact that meets a latency target at a given image size with the
least PSNR loss, so that ``upscale`` and ``serve`` deploy exactly what the report measured.

Latency at the image's size is read off the report's measured sizes: the p50 of the nearest measured
size at or above the image's output megapixels, else the largest measured size scaled by the pixel
ratio (inference time grows linearly with pixels once tiled), which the explanation says.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from compress.core.cpu import CpuInfo, host_cpu
from compress.core.errors import InputError
from compress.core.files import is_number, read_json_object
from compress.pipeline.contract import path_of
from compress.pipeline.latency_file import inside_run
from export.runtimes import runs_here

TARGETS_MS = {"300ms": 300.0, "1000ms": 1000.0, "10s": 10_000.0}


@dataclasses.dataclass(frozen=True)
class Choice:
    """An artifact of a run chosen for an image size."""

    artifact: Path
    runtime: str
    predicted_ms: float
    db_lost: float
    why: str


def read_report(run: Path) -> tuple[dict, int]:
    """A run's parsed ``report.json`` and the scale it was made for.

    Raises:
        InputError: no readable report, or one without ``header.scale`` (not a report of this pipeline).
    """
    path = path_of(run, "report")
    report = read_json_object(path)
    header = report.get("header")
    scale = header.get("scale") if isinstance(header, dict) else None
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise InputError(f"{path}: not a report of this pipeline (no header.scale)")
    check_rows(path, report.get("rows", []))
    return report, scale


def run_artifact_problem(value: object) -> str:
    """Why ``value`` is not an artifact path a run can deploy ("" if it is one)."""
    return "" if inside_run(value) else "is not a path inside the run folder"


def text_artifact_problem(value: object) -> str:
    """Why ``value`` is not an artifact name a comparison can print ("" if it is one)."""
    return "" if isinstance(value, str) else "is not text"


def check_rows(path: Path, rows: object,
               artifact_problem: Callable[[object], str] = run_artifact_problem) -> None:
    """Refuse a report's ``rows`` unless it is a list of rows :func:`row_problem` accepts.

    Raises:
        InputError: naming ``path`` and the first unusable row.
    """
    if not isinstance(rows, list):
        raise InputError(f"{path}: rows is not a list")
    for i, row in enumerate(rows):
        if problem := row_problem(row, artifact_problem):
            raise InputError(f"{path}: rows[{i}] {problem}")


def row_problem(row: object, artifact_problem: Callable[[object], str] = run_artifact_problem) -> str:
    """What makes a report row unusable ("" if nothing): the fields :func:`choose` and ``compare`` read.

    Args:
        row: one entry of ``report.json``'s ``rows``.
        artifact_problem: what is wrong with its ``artifact`` ("" if nothing); choosing runs it, so by
            default it must be a path inside the run folder, while a comparison only prints it.
    """
    if not isinstance(row, dict):
        return "is not an object"
    if problem := artifact_problem(row.get("artifact")):
        return f"artifact {str(row.get('artifact'))[:200]!r} {problem}"
    if not isinstance(row.get("runtime"), str):
        return "has no runtime"
    for field in ("psnr_y_db", "db_lost"):
        values = row.get(field, {})
        if not (isinstance(values, dict) and all(v is None or is_number(v) for v in values.values())):
            return f"{field} is not an object of numbers"
    for field in ("size_bytes", "params"):
        if not (row.get(field) is None or is_number(row[field])):
            return f"{field} is not a number"
    latency = row.get("latency", {})
    if not isinstance(latency, dict):
        return "latency is not an object"
    for label, at in latency.items():
        if not (isinstance(at, dict) and is_number(at.get("out_mp")) and at["out_mp"] > 0
                and is_number(at.get("p50_ms")) and at["p50_ms"] >= 0):
            return f"latency[{str(label)[:40]!r}] needs a positive out_mp and p50_ms"
    return ""


def worst_loss(row: dict) -> float | None:
    """The row's worst dB lost over its evaluation sets (0 for the FP32 reference)."""
    losses = [v for v in row.get("db_lost", {}).values() if isinstance(v, (int, float))]
    return max(losses) if losses else None


def predict_ms(row: dict, out_mp: float) -> tuple[float, str] | None:
    """p50 latency of ``row`` at ``out_mp`` output megapixels, and how it was obtained."""
    points = sorted((v["out_mp"], v["p50_ms"], label) for label, v in row.get("latency", {}).items())
    if not points:
        return None
    for mp, ms, label in points:
        if mp >= out_mp:
            return ms, f"measured {ms:.0f} ms at {label} LR ({mp:.2f} MP out)"
    mp, ms, label = points[-1]
    scaled = ms * out_mp / mp
    return scaled, f"{ms:.0f} ms measured at {label} LR scaled by pixels to {scaled:.0f} ms"


def measured_on(report: dict) -> str | None:
    """The CPU the report's latencies were measured on, as its header names it (None if it does not)."""
    header = report.get("header")
    machine = header.get("machine") if isinstance(header, dict) else None
    there = machine.get("cpu_description") if isinstance(machine, dict) else None
    return there if isinstance(there, str) else None


def measured_elsewhere(report: dict, cpu: CpuInfo | None = None) -> str:
    """A note, to lead a choice's explanation (a header cut short keeps it), when the report's latencies
    come from another CPU than this host's ("" if the same or unknown).

    The choice still follows them (they are the only measurements there are), but a deployer should
    know they may not hold here: ``make bench`` on this host measures them again.
    """
    there = measured_on(report)
    here = (cpu or host_cpu()).describe()
    if there is None or there == here:
        return ""
    return f"latencies measured on {there[:200]}, not on this host ({here}): rerun make bench here to trust them; "


def choose(run: Path, out_mp: float, target: str, max_loss_db: float, report: dict | None = None) -> Choice:
    """The artifact of ``run`` meeting ``target`` at ``out_mp`` with the least loss (then the fastest).

    ``report`` is the run's parsed ``report.json`` (read here when not given).

    Raises:
        InputError: no report, or no artifact within ``max_loss_db``.
    """
    if target not in TARGETS_MS:
        raise InputError(f"target must be one of {list(TARGETS_MS)}, got {target!r}")
    report = report if report is not None else read_report(run)[0]
    budget = TARGETS_MS[target]
    candidates = []
    for row in report.get("rows", []):
        loss, pred = worst_loss(row), predict_ms(row, out_mp)
        if loss is None or pred is None or loss > max_loss_db or not runs_here(str(row.get("runtime"))):
            continue  # a runtime the report's host had and this one lacks (bf16, CUDA) is no candidate
        candidates.append((pred[0] > budget, loss, pred[0], row, pred[1]))
    if not candidates:
        raise InputError(f"{path_of(run, 'report')}: no timed artifact loses at most {max_loss_db} dB")
    late, loss, ms, row, how = min(candidates, key=lambda c: (c[0], c[1] if not c[0] else c[2], c[2]))
    verdict = f"meets {target}" if not late else f"none meets {target}; the fastest within {max_loss_db} dB"
    why = (f"{measured_elsewhere(report)}{row['artifact']} on {row['runtime']}: {verdict} at {out_mp:.2f} MP out ({how}), "
           f"loses {loss:.3f} dB (worst evaluation set); {len(candidates)} candidates within {max_loss_db} dB")
    return Choice(Path(run) / row["artifact"], row["runtime"], ms, loss, why)
