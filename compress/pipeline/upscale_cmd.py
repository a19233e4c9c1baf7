"""``python -m compress upscale IN... --out DIR``: upscale images and folders with a pipeline artifact.

The model is ``--artifact FILE`` (any runtime of :mod:`export.runtimes`), or the artifact a run's
report says meets ``--target`` at each image's size with the least loss (``--run``), or the shipped
default for ``--scale``. Large images run in tiles of one shape (no re-planning): the model's memory is
bounded by the tile, and the output is filled tile by tile in 8 bits (3 bytes per output pixel, not
a float32 image's 12). Every input is checked before the first inference (readable, within the
format's size, not overwritten by another's output), so a bad one leaves no partial batch behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from compress.core.data import IMAGE_SUFFIXES
from compress.core.errors import InputError, WriteError
from compress.core.files import require_regular, write_bytes_atomic
from compress.core.imaging import FORMATS, check_encodable, decode_file, encode, upscale_decoded
from compress.core.infer import TileConfig
from compress.pipeline.choose import choose, read_report
from compress.pipeline.defaults import default_checkpoint
from export.runtimes import open_artifact


@dataclasses.dataclass(frozen=True)
class UpscaleOptions:
    """What ``upscale`` was asked for."""

    out: Path
    artifact: Path | None = None
    run: Path | None = None
    target: str = "1000ms"
    max_loss_db: float = 0.1
    scale: int | None = None
    tile: int = 0
    threads: int = 0
    fmt: str = "png"
    quality: int = 95


def expand(inputs: list[str]) -> list[Path]:
    """Files as given, folders as their images (sorted)."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(require_regular(p, missing="no such file or folder"))
    if not files:
        raise InputError(f"{' '.join(inputs)}: no images found")
    return files


class _Models:
    """Opened artifacts, reused across images (one per (artifact, runtime))."""

    def __init__(self, opts: UpscaleOptions) -> None:
        self.opts, self.cache = opts, {}
        self.report, self.run_scale = read_report(opts.run) if opts.run is not None else (None, None)
        if opts.scale is not None and self.run_scale is not None and opts.scale != self.run_scale:
            raise InputError(f"{opts.run}: its report is for x{self.run_scale}, and --scale asks for x{opts.scale}")

    def for_image(self, out_mp_per_scale: float) -> tuple[object, int, str]:
        o = self.opts
        if o.run is not None:
            scale = self.run_scale
            pick = choose(o.run, out_mp_per_scale * scale * scale, o.target, o.max_loss_db, self.report)
            path, runtime, why = pick.artifact, pick.runtime, pick.why
        else:
            path = o.artifact or default_checkpoint(o.scale or 2)
            runtime, why = None, f"{path}"
            scale = o.scale
        key = (str(path), runtime)
        if key not in self.cache:
            opened = open_artifact(path, runtime, o.threads, scale, untrusted=True)
            self.cache[key] = (opened.run, opened.scale)
        fn, scale = self.cache[key]
        return fn, scale, why


@dataclasses.dataclass(frozen=True)
class _Job:
    """One image, checked: the model chosen for its size and where its output goes."""

    path: Path
    fn: object
    scale: int
    why: str
    target: Path


def _refuse_clashes(files: list[Path]) -> None:
    """Two inputs with one name would write one output: refuse before anything is written."""
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            raise InputError(f"{path}: has the same name as {seen[path.stem]}, and both would write "
                             f"{path.stem}_x*; upscale them into different --out folders")
        seen[path.stem] = path


def _prepare_out(out: Path) -> list[Path]:
    """Create ``out`` and prove it takes a file, before any model is opened; the folders it created,
    deepest first (a refused batch removes them again)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out must be a folder, and this is a file")
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        _remove(created)
        raise InputError(f"{out}: cannot write there ({exc.strerror or exc})") from None
    return created


def _remove(folders: list[Path]) -> None:
    """Remove the (empty) folders a refused command created, deepest first."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _check(path: Path, models: _Models, opts: UpscaleOptions, inputs: set[Path]) -> _Job:
    """Decode ``path`` (the whole file: a truncated one fails here), choose its model, check its output."""
    img = decode_file(path)
    h, w = img.rgb.shape[:2]
    fn, scale, why = models.for_image(h * w / 1e6)
    try:
        check_encodable(w * scale, h * scale, opts.fmt)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    suffix = "jpg" if opts.fmt in ("jpeg", "jpg") else opts.fmt
    target = opts.out / f"{path.stem}_x{scale}.{suffix}"
    for written in (target, _staged(target)):  # the output, and the name it waits under
        if written.resolve() in inputs:
            raise InputError(f"{written}: is one of the inputs, and {path}'s output would overwrite it; "
                             "choose another --out")
        if written.is_dir():
            raise InputError(f"{written}: a folder stands where {path}'s output goes")
    return _Job(path, fn, scale, why, target)


def upscale_files(inputs: list[str], opts: UpscaleOptions) -> list[dict[str, object]]:
    """Upscale every image into ``opts.out``; returns one record per image.

    Every input is decoded and checked first (its model, its output's size for the format, its output
    path), so a bad image or a clash ends the command before any output is written; a model whose
    output fails its checks on some image ends it too: outputs wait under temporary names and take
    their own only once every image has succeeded.
    """
    if opts.fmt not in FORMATS:
        raise InputError(f"--format must be one of {sorted(set(FORMATS))}, got {opts.fmt!r}")
    files = expand(inputs)
    _refuse_clashes(files)
    created = _prepare_out(opts.out)
    resolved, done = {f.resolve() for f in files}, []
    quiet = len(files) < 2 or None
    jobs: list[_Job] = []
    try:
        models = _Models(opts)
        jobs = [_check(path, models, opts, resolved) for path in tqdm(files, desc="check", unit="img", disable=quiet)]
        for job in tqdm(jobs, desc="upscale", unit="img", disable=quiet):
            done.append(_run(job, opts))
    except BaseException:  # a refused batch changes nothing: no output, no earlier file replaced, no folder made
        for job in jobs:
            with contextlib.suppress(OSError):  # the cleanup must not hide the error that stopped the batch
                _staged(job.target).unlink(missing_ok=True)
        _remove(created)
        raise
    for job in jobs:  # the whole batch succeeded: its outputs take their names
        os.replace(_staged(job.target), job.target)
    return done


def _staged(target: Path) -> Path:
    """Where an output waits until the whole batch has succeeded."""
    return target.with_name(f".{target.name}.pending")


def _run(job: _Job, opts: UpscaleOptions) -> dict[str, object]:
    """Upscale one checked image and write its output; its record."""
    try:
        out = upscale_decoded(job.fn, decode_file(job.path), job.scale, TileConfig(tile=opts.tile))
    except InputError as exc:  # the model's output failed its checks on this image
        raise InputError(f"{job.path}: {exc}") from None
    try:
        write_bytes_atomic(_staged(job.target), encode(out, opts.fmt, opts.quality))
    except WriteError as exc:  # named by the output, not by the name it waits under
        raise WriteError(job.target, exc.reason) from None
    tqdm.write(f"{job.path} -> {job.target} ({out.width}x{out.height}; {job.why})", file=sys.stdout)
    return {"input": str(job.path), "output": str(job.target), "size": [out.width, out.height], "model": job.why}
