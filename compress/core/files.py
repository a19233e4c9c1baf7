"""Atomic writes, hashing, JSON reading and the sidecars of every artifact the pipeline writes.

A sidecar (``<artifact>.json``) is built by :func:`write_sidecar` only: schema version, the file's
name, size and sha256, one ``source`` block (:func:`source_block`) and the stage's own fields.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from compress.core.cpu import host_cpu
from compress.core.errors import InputError, WriteError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it over ``path`` only on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # named by the file asked for, not by the temporary one
        raise WriteError(path, str(exc.strerror or exc)) from None
    os.close(fd)
    try:
        try:
            yield Path(tmp)
        except OSError as exc:
            if exc.filename not in (tmp, Path(tmp)):
                raise
            raise WriteError(path, str(exc.strerror or exc)) from None  # e.g. the disk filled up
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise WriteError(path, str(exc.strerror or exc)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | Path, obj: object) -> Path:
    """JSON with NaN / Infinity refused (they are not JSON): a ``ValueError`` before anything is written."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str, allow_nan=False) + "\n")


def fresh_folder(path: str | Path) -> Path:
    """Empty ``path`` (a stage's own output folder) and create it, so that a rerun keeps nothing of an
    earlier run's: a file the new run does not make would otherwise be found, timed and reported."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the block (a cleanup), so that a second Ctrl-C or a SIGTERM cannot cut
    it short; one that came meanwhile is raised again when the block ends.

    The Python handlers are swapped for one that notes the signal: a thread mask would not do, since the
    kernel hands a process's signal to any thread that does not block it (torch's, ONNX Runtime's) and
    Python then runs the handler on the main thread all the same. Off the main thread nothing is held.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    swapped: list[tuple[int, object]] = []
    try:
        for s in HELD_SIGNALS:
            handler = signal.getsignal(s)
            if handler is not None and handler is not signal.SIG_IGN:
                swapped.append((s, handler))  # noted first: a signal between the two lines still finds it restored
                signal.signal(s, lambda signum, frame: came.append(signum))
        yield
    finally:
        _each_in_finally([lambda s=s, h=h: signal.signal(s, h) for s, h in swapped]
                         + [lambda s=s: signal.raise_signal(s) for s in dict.fromkeys(came)])


def _each_in_finally(steps: list[Callable[[], object]]) -> None:
    """Run every step even if one raises (a restored handler may raise KeyboardInterrupt at once); the
    last exception raised is the one that propagates."""
    if steps:
        try:
            steps[0]()
        finally:
            _each_in_finally(steps[1:])


@contextlib.contextmanager
def fresh_stage_folder(path: str | Path) -> Iterator[Path]:
    """:func:`fresh_folder`, removed again if the block raises (an error, Ctrl-C): a stage that fails
    midway leaves no folder of some of its artifacts, which later stages would find and report as if
    the stage had run. Call it once every input is checked, as :func:`fresh_folder`."""
    folder = fresh_folder(path)
    try:
        yield folder
    except BaseException:
        with signals_held():
            shutil.rmtree(folder, ignore_errors=True)
        raise


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


SIDECAR_SCHEMA = 2


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: valid JSON syntax, but no float holds it
        raise ValueError(f"{text[:40]} is beyond a float's range")
    return value


MAX_JSON_BYTES = 64 << 20  # the largest report, latency file or sidecar is a few hundred KiB


def require_regular(path: str | Path, missing: str = "file not found") -> Path:
    """``path`` as a Path when it is a regular file (or a link to one).

    Raises:
        InputError: ``<path>: <missing>`` when nothing is there, ``not a regular file`` for a folder,
            FIFO or device.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {'not a regular file' if path.exists() else missing}")
    return path


def read_regular(path: str | Path, max_bytes: int, what: str) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``max_bytes``: a FIFO would block
    and ``/dev/zero`` never end. ``what`` names the file in the error (``recipe``, ``file``).

    Raises:
        InputError: missing, not a regular file, too large or unreadable.
    """
    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise InputError(f"{path}: the {what} is not a regular file")
        with path.open("rb") as fh:
            raw = fh.read(max_bytes + 1)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: {what} not found") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what} ({exc})") from exc
    if len(raw) > max_bytes:
        raise InputError(f"{path}: {what} is over {max_bytes // 1024} KiB")
    return raw


def read_json(path: str | Path) -> object:
    """Parse a JSON file the pipeline reads (a regular file of at most :data:`MAX_JSON_BYTES`); a
    missing, unreadable or invalid file is an :class:`InputError` that names it (NaN and Infinity are
    refused: they are not JSON; so are numbers beyond a float's range, and nesting deeper than
    Python's recursion limit)."""
    path = Path(path)
    raw = read_regular(path, MAX_JSON_BYTES, "file")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    except RecursionError:
        raise InputError(f"{path}: not usable JSON (nested too deeply)") from None


def read_json_object(path: str | Path) -> dict[str, object]:
    """:func:`read_json` for files that must hold a JSON object."""
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def source_block(path: str | Path, **extra: object) -> dict[str, object]:
    """The ``source`` block of a sidecar: the input file's path and sha256 (plus ``extra``)."""
    return {"path": str(path), "sha256": sha256_file(path), **extra}


def sidecar_path(artifact: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def write_sidecar(artifact: str | Path, record: dict[str, object],
                  source: str | Path | dict[str, object] | None = None) -> Path:
    """Write the JSON sidecar of an artifact.

    Args:
        artifact: the file described.
        record: the stage's fields (``stage``, ``format``, metrics, ...).
        source: the input it was made from: a path (see :func:`source_block`) or a ready block.
    """
    artifact = Path(artifact)
    return write_json_atomic(sidecar_path(artifact), _sidecar_record(artifact, artifact.name, record, source))


def _sidecar_record(data: Path, name: str, record: dict[str, object],
                    source: str | Path | dict[str, object] | None) -> dict[str, object]:
    """The sidecar of the bytes in ``data``, for the artifact named ``name``; ``cpu`` names the host whose
    figures it holds (a stage may say otherwise in ``record``)."""
    full: dict[str, object] = {"schema_version": SIDECAR_SCHEMA, "artifact": name,
                               "size_bytes": data.stat().st_size, "sha256": sha256_file(data),
                               "cpu": host_cpu().describe()}
    if source is not None:
        full["source"] = source if isinstance(source, dict) else source_block(source)
    full.update(record)
    return full


def replace_pair(staged: str | Path, artifact: str | Path, record: dict[str, object]) -> Path:
    """Move ``staged`` (a finished file in ``artifact``'s folder) over ``artifact`` together with its sidecar.

    The sidecar is made first (describing ``staged``'s bytes under ``artifact``'s name; NaN refused, as
    :func:`write_json_atomic` refuses it) and written beside ``staged``; then both are renamed with
    SIGINT and SIGTERM held. A failure or an interruption before that leaves the old pair as it was,
    which matters when a run writes over the very checkpoint it started from.
    """
    staged, artifact = Path(staged), Path(artifact)
    side = write_json_atomic(sidecar_path(staged), _sidecar_record(staged, artifact.name, record, None))
    with signals_held():
        try:
            os.replace(staged, artifact)
            os.replace(side, sidecar_path(artifact))
        except OSError as exc:
            raise WriteError(artifact, str(exc.strerror or exc)) from None
    return artifact


@contextlib.contextmanager
def removed_on_failure(*artifacts: str | Path) -> Iterator[None]:
    """Remove every artifact and its sidecar if the block raises: none is left without its sidecar.

    Only files are removed (a folder in a sidecar's place is the user's, and the reason for the error),
    and the block's own error is the one raised.
    """
    try:
        yield
    except BaseException:
        with signals_held():
            for artifact in artifacts:
                for path in (Path(artifact), sidecar_path(artifact)):
                    if path.is_file():
                        with contextlib.suppress(OSError):
                            path.unlink()
        raise


def read_sidecar(artifact: str | Path, verify: bool = True) -> dict[str, object]:
    """The sidecar of ``artifact`` (an :class:`InputError` naming the file if it is missing or corrupt).

    With ``verify``, a sidecar whose recorded sha256 is not the artifact's is refused: the file was
    replaced after the stage that described it.
    """
    record = read_json_object(sidecar_path(artifact))
    recorded = record.get("sha256")
    if verify and isinstance(recorded, str) and Path(artifact).is_file() and sha256_file(artifact) != recorded:
        raise InputError(f"{artifact}: the file is not the one its sidecar describes (sha256 differs); "
                         "rerun the stage that wrote it")
    return record


def is_number(value: object) -> bool:
    """A finite int or float that is not a bool (an int too large for a float is not a usable number)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= sys.float_info.max


MAX_PSNR_DB = 1000  # 8-bit images give 0 dB at the largest error; a figure past this is no measurement


def is_psnr_db(value: object) -> bool:
    """A PSNR figure a measurement can give: a number (:func:`is_number`) from 0 to ``MAX_PSNR_DB``."""
    return is_number(value) and 0 <= value <= MAX_PSNR_DB


def quality_problem(quality: object) -> str:
    """What is wrong with a ``quality`` entry (evaluation set -> metrics with a ``psnr_y_db`` from 0 to
    ``MAX_PSNR_DB``), or ''."""
    ok = isinstance(quality, dict) and all(isinstance(m, dict) and is_psnr_db(m.get("psnr_y_db"))
                                           for m in quality.values())
    return "" if ok else f"must map each evaluation set to its metrics with a psnr_y_db from 0 to {MAX_PSNR_DB}"


def sidecar_quality(record: dict[str, object], where: str | Path, field: str = "quality") -> dict[str, dict[str, float]]:
    """A sidecar's ``quality`` (or another ``field`` of that shape, such as ``bicubic``; ``{}`` if absent).

    Raises:
        InputError: naming ``where`` when the entry has another shape.
    """
    quality = record.get(field, {})
    if problem := quality_problem(quality):
        raise InputError(f"{where}: {field!r} {problem}; rerun the stage that wrote it")
    return {name: dict(metrics) for name, metrics in quality.items()}  # type: ignore[union-attr]


STAGE_SECONDS = "stage_seconds.json"  # each stage's wall time, in the run folder


def read_stage_seconds(run: str | Path) -> dict[str, float]:
    """``<run>/stage_seconds.json``: each stage's wall time (``{}`` before any stage ran)."""
    path = Path(run) / STAGE_SECONDS
    if (path.exists() or path.is_symlink()) and not path.is_file():
        raise InputError(f"{path}: not a file (it holds each stage's wall time); remove it")
    times = read_json_object(path) if path.is_file() else {}
    if not all(is_number(v) for v in times.values()):
        raise InputError(f"{path}: every stage's seconds must be a number")
    return times


def record_stage_seconds(run: str | Path, stage: str, seconds: float) -> Path:
    """Set ``stage``'s wall time in ``<run>/stage_seconds.json`` (the report sums them)."""
    path = Path(run) / STAGE_SECONDS
    times = read_stage_seconds(run)
    times[stage] = round(seconds, 1)
    return write_json_atomic(path, times)
