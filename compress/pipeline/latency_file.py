"""``40-bench/latency.json`` as the report stage reads it, checked entry by entry.

The bench stage writes the file; the report reads it through :func:`read_latency`, so a truncated,
hand-edited or foreign file is one :class:`~compress.core.errors.InputError` naming the file and the
entry, never a ``KeyError`` halfway through the report.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from compress.core.errors import InputError
from compress.core.files import is_number, quality_problem, read_json_object

REPORT_TARGETS_MS = (300, 1000)  # the report's pass / fail columns
TIMING_FIELDS = ("p50_ms", "p95_ms", "min_ms", "out_mp", "peak_rss_mb")
CONFIG_COUNTS = {"threads": 1, "warmup": 0, "runs": 1}  # bench config counts the report prints -> least value
MACHINE_TEXT = ("cpu", "cpu_description", "gpu")  # machine fields the report prints as text
MAX_COUNT = 1 << 20
LARGE_LR_PIXELS = 100_000  # about 316x316 LR: the 1080p-output sizes at x2, x3 and x4; timed large_runs times
MAX_SCALE = 8


def inside_run(value: Any) -> bool:
    """A path inside the run folder: relative, without ``..``, in normal form (``a/b.onnx``, never
    ``./a//b.onnx``: the service looks rows up by the normal form)."""
    if not isinstance(value, str) or not value:
        return False
    path = PurePosixPath(value)
    return not path.is_absolute() and ".." not in path.parts and "\\" not in value and path.as_posix() == value


def _result_problem(r: Any) -> str:
    if not isinstance(r, dict):
        return "is not an object"
    if not inside_run(r.get("artifact")):
        return f"artifact {r.get('artifact')!r} is not a path inside the run folder"
    if not isinstance(r.get("runtime"), str):
        return "has no runtime"
    size = r.get("lr_size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        return f"lr_size {size!r} is not [height, width]"
    if "error" in r:
        return "" if isinstance(r["error"], str) else "error is not text"
    bad = [f for f in TIMING_FIELDS if not is_number(r.get(f))]
    return f"{', '.join(bad)} not numbers" if bad else ""


def _ladder_problem(lad: Any) -> str:
    if not isinstance(lad, dict):
        return "is not an object"
    if not (inside_run(lad.get("artifact")) and isinstance(lad.get("runtime"), str) and is_number(lad.get("target_ms"))):
        return "needs artifact (inside the run), runtime and target_ms"
    if not all(lad.get(k) is None or is_number(lad.get(k)) for k in ("max_output_mp", "failing_mp")):
        return "max_output_mp / failing_mp are not numbers"
    return "" if isinstance(lad.get("rungs", []), list) else "rungs is not a list"


def _quality_problem(quality: Any) -> str:
    if not isinstance(quality, dict):
        return "quality is not an object"
    for key, sets in quality.items():
        if problem := quality_problem(sets):
            return f"quality[{key!r}] {problem}"
    return ""


def _count(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and least <= value <= MAX_COUNT


def _config_problem(config: dict[str, Any]) -> str:
    bad = [k for k, least in CONFIG_COUNTS.items() if not _count(config.get(k), least)]
    if "large_runs" in config and not _count(config["large_runs"], 1):  # absent: ``runs`` at every size
        bad.append("large_runs")
    if bad:
        return f"config {', '.join(bad)} not whole numbers in range"
    ladder = config.get("ladder_targets_ms", [])
    if not (isinstance(ladder, list) and all(is_number(t) and t > 0 for t in ladder)):
        return f"config ladder_targets_ms {ladder!r} is not a list of positive numbers"
    return ""


def _machine_problem(machine: dict[str, Any]) -> str:
    bad = [k for k in MACHINE_TEXT if machine.get(k) is not None and not isinstance(machine[k], str)]
    if machine.get("cores") is not None and not _count(machine["cores"], 1):
        bad.append("cores")
    return f"machine {', '.join(bad)} of the wrong type" if bad else ""


def check_latency(bench: dict[str, Any], where: str) -> dict[str, Any]:
    """``bench`` if it is a latency file of ``make bench``, else an :class:`InputError` naming the entry."""
    targets = bench.get("targets_ms")
    if not (isinstance(bench.get("results"), list) and isinstance(targets, list)
            and isinstance(bench.get("machine"), dict) and isinstance(bench.get("config"), dict)):
        raise InputError(f"{where}: not a latency file of make bench (needs results, targets_ms, scale, machine, config)")
    if not _count(bench.get("scale"), 1) or bench["scale"] > MAX_SCALE:
        raise InputError(f"{where}: scale {bench.get('scale')!r} is not a whole number from 1 to {MAX_SCALE}")
    if not (all(is_number(t) and t > 0 for t in targets) and set(REPORT_TARGETS_MS) <= set(targets)):
        raise InputError(f"{where}: targets_ms {targets!r} must be positive and include {list(REPORT_TARGETS_MS)}")
    if problem := _config_problem(bench["config"]) or _machine_problem(bench["machine"]):
        raise InputError(f"{where}: {problem}")
    for i, r in enumerate(bench["results"]):
        if problem := _result_problem(r):
            raise InputError(f"{where}: results[{i}] {problem}")
    ladders = bench.get("ladders", [])
    if not isinstance(ladders, list):
        raise InputError(f"{where}: ladders is not a list")
    for i, lad in enumerate(ladders):
        if problem := _ladder_problem(lad):
            raise InputError(f"{where}: ladders[{i}] {problem}")
    if problem := _quality_problem(bench.get("quality", {})):
        raise InputError(f"{where}: {problem}")
    return bench


def read_latency(path: Any) -> dict[str, Any]:
    """Read and check a latency file (:func:`check_latency`)."""
    return check_latency(read_json_object(path), str(path))
