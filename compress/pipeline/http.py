"""The HTTP face of :class:`~compress.pipeline.service.Service` (FastAPI), and ``serve`` (uvicorn)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import traceback
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

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
    if length is not None and "transfer-encoding" in request.headers:  # the body is framed by chunks, so the
        raise Refused(400, "Content-Length and Transfer-Encoding together; send one")  # length would check nothing
    if length is not None and length.isdigit() and int(length) > limit + MULTIPART_SLACK:
        raise Refused(413, f"upload of {int(length)} bytes is over the {limit} byte limit")
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        if length is None:
            raise Refused(411, "a multipart upload needs a Content-Length")
        try:
            async with request.form(max_files=1, max_fields=8) as form:
                field = form.get("file")
                if not isinstance(field, UploadFile):
                    raise Refused(422, "multipart upload needs a 'file' field")
                data = await field.read(limit + 1)
        except StarletteHTTPException as exc:  # malformed multipart: no boundary, too many parts
            raise Refused(400, f"malformed multipart upload: {exc.detail}") from exc
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


async def _read_in_time(request: Request, limit: int, timeout_s: float) -> bytes:
    """:func:`read_upload` within ``timeout_s``: a stalled or trickling upload must not hold a slot."""
    try:
        return await asyncio.wait_for(read_upload(request, limit), timeout_s)
    except TimeoutError:
        raise Refused(408, f"upload not received within {timeout_s:g} s") from None


def _header(text: str) -> str:
    return text.encode("latin-1", "replace").decode("latin-1").replace("\n", " ")[:300]


def build_app(service: Service) -> FastAPI:
    """The FastAPI application around one loaded :class:`Service`."""
    app = FastAPI(title="srcompress", description="Super-resolution with compressed artifacts")
    limit = int(service.cfg.max_upload_mb * 1024 * 1024)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

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
                data = await _read_in_time(request, limit, service.cfg.upload_timeout_s)
                body, info = await service.upscale(data, scale, tier, format, alpha)
            headers = {"X-Artifact": _header(info["artifact"]), "X-Runtime": info["runtime"],
                       "X-Inference-Ms": str(info["inference_ms"]), "X-Total-Ms": str(info["total_ms"]),
                       "X-Scale": str(info["scale"]), "X-Model-Choice": _header(info["why"])}
            return Response(body, media_type=MEDIA[format], headers=headers)
        except ClientDisconnect:
            status = 499  # nginx's code for a client that hung up: no answer can reach it
            return Response(status_code=499)
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
            traceback.print_exc()  # the operator's log gets the cause; the client gets one line
            return JSONResponse({"error": f"internal error {type(exc).__name__}: {exc}"}, status_code=500)
        finally:
            service.metrics.observe(tier if tier in TARGETS_MS else "other", status, time.perf_counter() - t0)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"scales": service.models.scales(), "tiers": list(TARGETS_MS),
                "blend": service.models.blend is not None, "machine": service.models.machine(),
                "models": service.models.describe()}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/")
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    for route in list(app.routes):  # HEAD for probes, kept out of the OpenAPI schema (one operation per GET)
        if "GET" in getattr(route, "methods", ()) and getattr(route, "include_in_schema", False):
            app.add_api_route(route.path, route.endpoint, methods=["HEAD"], include_in_schema=False)
    return app


SHUTDOWN_GRACE_S = 30  # on SIGTERM or Ctrl-C, requests in progress get this long to finish


def serve(cfg: object, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Bind the port, load the models once, then serve on the bound sockets until interrupted."""
    import uvicorn

    from compress.pipeline.h11_protocol import protocol_class

    sockets = _listen(host, port)
    try:
        app = build_app(Service(cfg))
        print(f"serving on http://{host}:{port}/", flush=True)
        # connections beyond workers + queue and a margin get 503 from uvicorn; idle keep-alives close in
        # 5 s, and a connection whose request headers are late in header_timeout_s
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_keep_alive=5,
                                limit_concurrency=cfg.workers + cfg.queue + 32,
                                http=protocol_class(cfg.header_timeout_s, cfg.upload_timeout_s),
                                timeout_graceful_shutdown=SHUTDOWN_GRACE_S, ws="none")  # no WebSocket routes
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a service stops, as in uvicorn.run
            uvicorn.Server(config).run(sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()


def _listen(host: str, port: int) -> list[socket.socket]:
    """Bind and listen on every address ``host`` resolves to, before any model loads.

    Binds as asyncio's server would (all interfaces for ``""``, IPv6 sockets v6-only), and the
    sockets are handed to uvicorn, so no other process can take the port between this check and serving
    (connections made while the models load wait in the listen queue).

    Raises:
        InputError: the port is taken, or ``host`` is not an address of this machine.
    """
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(infos):  # asyncio binds each address once
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(2048)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise InputError(f"{host}:{port}: cannot listen there ({exc.strerror or exc})") from None
    return sockets
