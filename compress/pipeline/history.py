"""A trained checkpoint's provenance, read from its sidecar's ``history``: one row per training run.

``python -m compress history --model artifacts/default/edsr_baseline_x4.safetensors`` prints the table
that ``artifacts/default/MODELS.md`` shows for each shipped model, so the model card is rendered from
the record the trainer wrote rather than retyped (``tests/compress/pipeline/test_history.py`` checks
that the two agree).
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

from compress.core.errors import InputError
from compress.core.files import MAX_PSNR_DB, is_number, is_psnr_db, read_sidecar, sidecar_path


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """One training run of a checkpoint's history.

    Attributes:
        recipe_file: the recipe it ran (as given on its command line; empty for a recipe built in code).
        hardware: the GPU's name on CUDA, else the CPU's name and vector features ("CPU (not recorded)"
            for runs older than that field).
        precision: ``bf16`` (autocast) or ``fp32`` ("not recorded" for runs older than that field).
        steps: optimizer steps taken.
        train_minutes: wall time of the training loop.
        start_val_psnr_y_db: validation PSNR-Y of the weights it continued from (None for a first run).
        val_psnr_y_db: validation PSNR-Y of the weights it wrote: the kept check's, else the last one's.
        kept_step: the step whose weights it wrote when it kept its best check (None: the last step's).
        finished_utc: when its training loop ended, UTC, as ``FINISHED_UTC_FORMAT`` (None for runs older than
            that field, session 34).
    """

    recipe_file: str
    hardware: str
    precision: str
    steps: int
    train_minutes: float
    start_val_psnr_y_db: float | None
    val_psnr_y_db: float | None
    kept_step: int | None
    finished_utc: str | None = None


FINISHED_UTC_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # the trainer's ``finished_utc``: ISO 8601, UTC, to the second
MAX_TRAIN_SECONDS = 365 * 24 * 3600  # one run's wall time; a figure past a year is no measurement


def _text(run: dict[str, object], key: str, where: str, empty_ok: bool = False) -> str:
    value = run.get(key)
    if not isinstance(value, str) or not (value or empty_ok):
        raise InputError(f"{where}: {key} must be a{'' if empty_ok else ' non-empty'} string, got {value!r}")
    if any(ord(c) < 32 for c in value):
        raise InputError(f"{where}: {key} holds control characters")
    return value


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _count(run: dict[str, object], key: str, where: str) -> int:
    value = run.get(key)
    if not _is_count(value):
        raise InputError(f"{where}: {key} must be a count (an int >= 0), got {value!r}")
    return value


def _checks(run: dict[str, object], where: str) -> list[tuple[int, float]]:
    """The run's validation checks in order, as (step, PSNR-Y dB): ``val_psnr_y_db``, a list of
    [step, dB] pairs with steps rising, as the trainer writes it."""
    checks = run.get("val_psnr_y_db", [])
    ok = isinstance(checks, list) and all(isinstance(c, list) and len(c) == 2 and _is_count(c[0]) and is_psnr_db(c[1])
                                          for c in checks)
    if not ok or any(a[0] >= b[0] for a, b in zip(checks, checks[1:])):
        raise InputError(f"{where}: val_psnr_y_db must be a list of [step, dB] pairs, steps rising, "
                         f"dB from 0 to {MAX_PSNR_DB}")
    return [(step, float(db)) for step, db in checks]


def _finished(run: dict[str, object], where: str) -> str | None:
    """When the run's training loop ended (``finished_utc``), None where the run predates the field."""
    if "finished_utc" not in run:
        return None
    value = run["finished_utc"]
    try:
        datetime.datetime.strptime(value, FINISHED_UTC_FORMAT)
    except (TypeError, ValueError):
        raise InputError(f"{where}: finished_utc must be a UTC time like 2026-12-05T16:10:00Z, got {value!r}") from None
    return value


def _start_db(run: dict[str, object], where: str) -> float | None:
    """Validation PSNR-Y of the weights the run continued from (``continued_from``), None for a first run."""
    if "continued_from" not in run:
        return None
    start = run["continued_from"]
    if not (isinstance(start, dict) and is_psnr_db(start.get("val_psnr_y_db"))):
        raise InputError(f"{where}: continued_from must be an object with a val_psnr_y_db from 0 to {MAX_PSNR_DB}")
    return float(start["val_psnr_y_db"])


def _segments(run: dict[str, object], where: str) -> list[dict[str, object]]:
    """The run's ``segments`` (steps, precision and hardware of each part of a resumed run), checked."""
    segments = run.get("segments", [])
    if not isinstance(segments, list) or not all(isinstance(s, dict) for s in segments):
        raise InputError(f"{where}: segments must be a list of objects")
    for i, seg in enumerate(segments):
        _text(seg, "precision", f"{where}: segments[{i}]")
        _text(seg, "hardware", f"{where}: segments[{i}]")
        _count(seg, "from_step", f"{where}: segments[{i}]")
        _count(seg, "to_step", f"{where}: segments[{i}]")
    return segments


def training_run(run: object, where: str) -> TrainingRun:
    """Parse one ``history`` entry (what the trainer's ``_summary`` writes).

    Args:
        run: the entry.
        where: names it in errors (the sidecar and the entry's index).

    Raises:
        InputError: a field is missing or malformed; the message names it.
    """
    if not isinstance(run, dict):
        raise InputError(f"{where}: a training run must be a JSON object, got {type(run).__name__}")
    seconds = run.get("train_seconds")
    if not (is_number(seconds) and 0 <= seconds <= MAX_TRAIN_SECONDS):
        raise InputError(f"{where}: train_seconds must be a number from 0 to {MAX_TRAIN_SECONDS}, got {seconds!r}")
    checks = _checks(run, where)
    kept = run.get("kept_step")
    if kept is not None and not (_is_count(kept) and (kept == 0 or kept in dict(checks))):
        raise InputError(f"{where}: kept_step {kept!r} is not one of its validation checks")
    kept = kept or None  # 0: no check kept
    if str(run.get("device", "")).startswith("cuda"):
        hardware = _text(run, "gpu", where)
    else:  # the first runs (session 1) recorded neither CPU nor precision
        hardware = _text(run, "cpu", where) if "cpu" in run else "CPU (not recorded)"
    precision = _text(run, "precision", where) if "precision" in run else "not recorded"
    if len(segments := _segments(run, where)) > 1:  # resumed, perhaps elsewhere: say which steps ran how
        hardware = " + ".join(dict.fromkeys(s["hardware"] for s in segments))
        precision = " + ".join(f"{s['precision']} (steps {s['from_step']}-{s['to_step']})" for s in segments)
    return TrainingRun(recipe_file=_text(run, "recipe_file", where, empty_ok=True), hardware=hardware,
                       precision=precision, steps=_count(run, "steps_done", where), train_minutes=seconds / 60,
                       start_val_psnr_y_db=_start_db(run, where),
                       val_psnr_y_db=dict(checks)[kept] if kept is not None else (checks[-1][1] if checks else None),
                       kept_step=kept, finished_utc=_finished(run, where))


def read_history(model: str | Path) -> tuple[TrainingRun, ...]:
    """The training runs recorded in ``model``'s sidecar, oldest first.

    Raises:
        InputError: the sidecar is missing, does not describe ``model`` (sha256), or holds no history
            (a first training's sidecar is its one run).
    """
    record = read_sidecar(model)
    history = record.get("history")
    if history is None and record.get("stage") == "train":
        history = [record]  # a first training: the trainer writes a history only when it continues one
    if not isinstance(history, list) or not history:
        raise InputError(f"{sidecar_path(model)}: no training history (not written by `compress train`)")
    return tuple(training_run(run, f"{sidecar_path(model)}: history[{i}]") for i, run in enumerate(history))


def _db(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _minutes(value: float) -> str:
    return f"{value:.1f}" if round(value, 1) < 10 else f"{value:.0f}"


def _when(value: str | None) -> str:
    return "-" if value is None else datetime.datetime.strptime(value, FINISHED_UTC_FORMAT).strftime("%Y-%m-%d %H:%M")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def history_markdown(runs: tuple[TrainingRun, ...]) -> str:
    """``runs`` as a Markdown table, one row per run, oldest first."""
    lines = ["| run | recipe | hardware | precision | steps | minutes | finished (UTC) "
             "| validation PSNR-Y dB, start -> written |",
             "|---|---|---|---|---|---|---|---|"]
    for i, run in enumerate(runs, 1):
        kept = f" (step {run.kept_step})" if run.kept_step is not None else ""
        name = Path(run.recipe_file).name
        recipe = f"`{_cell(name)}`" if name else "(in code)"
        lines.append(f"| {i} | {recipe} | {_cell(run.hardware)} | {_cell(run.precision)} | {run.steps} | "
                     f"{_minutes(run.train_minutes)} | {_when(run.finished_utc)} | "
                     f"{_db(run.start_val_psnr_y_db)} -> {_db(run.val_psnr_y_db)}{kept} |")
    return "\n".join(lines) + "\n"
