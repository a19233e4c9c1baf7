"""The upscaling service behind ``python -m compress serve`` (HTTP in :mod:`compress.pipeline.http`).

``POST /v1/upscale`` (raw image body or multipart ``file``; query ``scale``, ``tier``, ``format``,
``alpha``), ``GET /v1/models``, ``GET /healthz``, ``GET /metrics`` (Prometheus text) and ``GET /`` (the
page). Models load once at start-up; decoding, inference and encoding run on a bounded thread pool,
and a request that finds every worker and queue slot taken gets 503 with ``Retry-After`` at once.
Bad requests get a JSON ``{"error": ...}`` with a 4xx status: 413 over the upload or pixel limit, 415
content that is no supported image (sniffed from the bytes), 422 a corrupt image or a scale, tier or
alpha not served.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from compress.core.errors import BadModelOutput, ImageTooLarge
from compress.core.options import MAX_PIXELS, MAX_TIMEOUT_S, MAX_UPLOAD_MB
from compress.core.imaging import UnsupportedFormat, check_encodable, decode_bytes, encode, upscale_decoded
from compress.pipeline.metrics import Metrics
from compress.pipeline.models import ModelSet

PAGE = Path(__file__).with_name("static") / "index.html"
MEDIA = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Service settings (see ``python -m compress serve --help``)."""

    artifacts: tuple[Path, ...] = ()
    run: Path | None = None
    blend: tuple[Path, ...] = ()
    workers: int = 1
    queue: int = 4
    max_upload_mb: float = 20.0
    max_pixels: int = 8_000_000
    threads: int = 0
    upload_timeout_s: float = 30.0
    header_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if (self.workers < 1 or self.queue < 0 or not 0 < self.max_upload_mb <= MAX_UPLOAD_MB
                or not 1 <= self.max_pixels <= MAX_PIXELS
                or not 0 < self.upload_timeout_s <= MAX_TIMEOUT_S or not 0 < self.header_timeout_s <= MAX_TIMEOUT_S):
            raise ValueError(f"ServeConfig: workers >= 1, queue >= 0, max_upload_mb in (0, {MAX_UPLOAD_MB}], "
                             f"max_pixels in [1, {MAX_PIXELS}], timeouts in (0, {MAX_TIMEOUT_S}] s; got {self}")


class Busy(Exception):
    """Every worker and queue slot is taken."""


class Service:
    """The work behind the endpoints, free of HTTP: limits, the pool, the models, the metrics."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.models = ModelSet(cfg.artifacts, cfg.run, cfg.blend, cfg.threads)
        self.pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="upscale")
        self.slots = threading.BoundedSemaphore(cfg.workers + cfg.queue)
        self.metrics = Metrics()

    def _work(self, data: bytes, scale: int, tier: str, fmt: str, alpha: float | None) -> tuple[bytes, dict]:
        t0 = time.perf_counter()
        self.models.require_scale(scale)  # before decoding: a refused request costs no decode
        img = decode_bytes(data, "upload", self.cfg.max_pixels)
        h, w = img.rgb.shape[:2]
        served, why = self.models.pick(scale, tier, h * w * scale * scale / 1e6, alpha)
        check_encodable(w * served.scale, h * served.scale, fmt)  # before the inference, not after
        t1 = time.perf_counter()
        out = upscale_decoded(served.run, img, served.scale)
        t2 = time.perf_counter()
        body = encode(out, fmt)
        info = {"artifact": str(served.artifact), "runtime": served.runtime, "why": why, "scale": served.scale,
                "width": out.width, "height": out.height, "inference_ms": round((t2 - t1) * 1000, 1),
                "total_ms": round((time.perf_counter() - t0) * 1000, 1)}
        return body, info

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """One of ``workers + queue`` request slots, or :class:`Busy` at once."""
        if not self.slots.acquire(blocking=False):
            raise Busy()
        try:
            yield
        finally:
            self.slots.release()

    async def upscale(self, data: bytes, scale: int, tier: str, fmt: str, alpha: float | None) -> tuple[bytes, dict]:
        """Decode, infer and encode on the worker pool (call inside :meth:`slot`)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self._work, data, scale, tier, fmt, alpha)


def status_of(exc: Exception) -> int:
    """HTTP status of a refused request."""
    if isinstance(exc, BadModelOutput):  # the served model failed, not the request
        return 500
    if isinstance(exc, ImageTooLarge):
        return 413
    if isinstance(exc, UnsupportedFormat):
        return 415
    return 422
