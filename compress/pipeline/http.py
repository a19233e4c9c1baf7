"""The HTTP face of :class:`~compress.pipeline.service.Service` (FastAPI), and ``serve`` (uvicorn)."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.datastructures import UploadFile

from compress.core.errors import InputError
from compress.pipeline.choose import TARGETS_MS
from compress.pipeline.service import MEDIA, PAGE, Busy, Service, status_of

MULTIPART_SLACK = 64 * 1024  # bytes of multipart framing allowed beyond the upload limit


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_upload(request: Request, limit: int) -> bytes:
    """The image bytes of a raw body or of a multipart ``file`` field, at most ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit + MULTIPART_SLACK:
        raise Refused(413, f"upload of {int(length)} bytes is over the {limit} byte limit")
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        if length is None:
            raise Refused(411, "a multipart upload needs a Content-Length")
        async with request.form(max_files=1, max_fields=8) as form:
            field = form.get("file")
            if not isinstance(field, UploadFile):
                raise Refused(422, "multipart upload needs a 'file' field")
            data = await field.read(limit + 1)
    else:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Refused(413, f"upload is over the {limit} byte limit")
            chunks.append(chunk)
        data = b"".join(chunks)
    if len(data) > limit:
        raise Refused(413, f"upload is over the {limit} byte limit")
    if not data:
        raise Refused(422, "empty upload")
    return data


def _header(text: str) -> str:
    return text.encode("latin-1", "replace").decode("latin-1").replace("\n", " ")[:300]


def build_app(service: Service) -> FastAPI:
    """The FastAPI application around one loaded :class:`Service`."""
    app = FastAPI(title="srcompress", description="Super-resolution with compressed artifacts")
    limit = int(service.cfg.max_upload_mb * 1024 * 1024)

    @app.exception_handler(RequestValidationError)
    async def _bad_params(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}"}, status_code=422)

    @app.post("/v1/upscale")
    async def upscale(request: Request, scale: int = 2, tier: str = "1000ms", format: str = "png",  # noqa: A002
                      alpha: float | None = None) -> Response:
        t0 = time.perf_counter()
        status = 200
        try:
            if format not in MEDIA:
                raise Refused(422, f"format must be one of {sorted(MEDIA)}, got {format!r}")
            if tier not in TARGETS_MS:
                raise Refused(422, f"tier must be one of {list(TARGETS_MS)}, got {tier!r}")
            with service.slot():  # taken before the upload is read: a busy service reads nothing
                body, info = await service.upscale(await read_upload(request, limit), scale, tier, format, alpha)
            headers = {"X-Artifact": _header(info["artifact"]), "X-Runtime": info["runtime"],
                       "X-Inference-Ms": str(info["inference_ms"]), "X-Total-Ms": str(info["total_ms"]),
                       "X-Scale": str(info["scale"]), "X-Model-Choice": _header(info["why"])}
            return Response(body, media_type=MEDIA[format], headers=headers)
        except Busy:
            status = 503
            return JSONResponse({"error": "busy: every worker is taken; retry shortly"}, status_code=503,
                                headers={"Retry-After": "1"})
        except Refused as exc:
            status = exc.status
            return JSONResponse({"error": str(exc)}, status_code=status)
        except InputError as exc:
            status = status_of(exc)
            return JSONResponse({"error": str(exc)}, status_code=status)
        except Exception as exc:  # noqa: BLE001 (a runtime failure: JSON and counted, not a bare 500 page)
            status = 500
            return JSONResponse({"error": f"internal error {type(exc).__name__}: {exc}"}, status_code=500)
        finally:
            service.metrics.observe(tier if tier in TARGETS_MS else "other", status, time.perf_counter() - t0)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"scales": service.models.scales(), "tiers": list(TARGETS_MS),
                "blend": service.models.blend is not None, "models": service.models.describe()}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/")
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    return app


def serve(cfg: object, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Load the models once, then serve until interrupted."""
    import uvicorn

    app = build_app(Service(cfg))
    print(f"serving on http://{host}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
