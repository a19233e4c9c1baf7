"""Atomic writes, hashing and JSON sidecars for every artifact the pipeline writes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it over ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | Path, obj: object) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sidecar_path(artifact: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def write_sidecar(artifact: str | Path, record: dict[str, object]) -> Path:
    """Write the JSON sidecar of an artifact, adding its size and sha256."""
    artifact = Path(artifact)
    full = {"artifact": artifact.name, "size_bytes": artifact.stat().st_size, "sha256": sha256_file(artifact)}
    full.update(record)
    return write_json_atomic(sidecar_path(artifact), full)


def read_sidecar(artifact: str | Path) -> dict[str, object]:
    return json.loads(sidecar_path(artifact).read_text())


def record_stage_seconds(run: str | Path, stage: str, seconds: float) -> Path:
    """Set ``stage``'s wall time in ``<run>/stage_seconds.json`` (the report sums them)."""
    path = Path(run) / "stage_seconds.json"
    times = json.loads(path.read_text()) if path.is_file() else {}
    times[stage] = round(seconds, 1)
    return write_json_atomic(path, times)
