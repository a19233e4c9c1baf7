"""The HTTP service, started for real on 127.0.0.1 (see conftest.py): answers, limits, saturation."""

from __future__ import annotations

import io
import json
import re
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
from PIL import Image

from compress.core.errors import InputError
from tests.conftest import REPO


def png(size: tuple[int, int], mode: str = "RGB", seed: int = 0, smooth: bool = False) -> bytes:
    """A PNG of noise, or (``smooth``) of a gradient that compresses to a few KB at any size."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    if smooth:
        ramp = (np.arange(size[0]) % 256).astype(np.uint8)
        arr = np.broadcast_to(ramp[None, :, None], (size[1], size[0], channels)).copy()
    else:
        arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def post(url: str, body: bytes, query: str = "", headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(f"{url}/v1/upscale{query}", data=body, method="POST",
                                 headers=headers or {"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_raw_and_multipart_uploads_are_upscaled(service):
    url, _ = service
    status, headers, body = post(url, png((40, 30)))
    assert status == 200 and headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(body)).size == (80, 60)
    assert headers["x-scale"] == "2" and float(headers["x-inference-ms"]) > 0
    data, h = multipart("file", "x.png", png((20, 24), "RGBA"))
    status, headers, body = post(url, data, "?format=webp", h)
    out = Image.open(io.BytesIO(body))
    assert status == 200 and out.format == "WEBP" and out.size == (40, 48) and out.mode == "RGBA"


def test_models_health_and_metrics(service):
    url, _ = service
    with urllib.request.urlopen(url + "/v1/models") as r:
        models = json.loads(r.read())
    assert models["scales"] == [2] and models["blend"] is True
    from compress.core.cpu import host_cpu

    assert models["machine"] == {"cpu": host_cpu().describe()}  # no run: no latencies measured anywhere
    with urllib.request.urlopen(url + "/healthz") as r:
        assert json.loads(r.read()) == {"status": "ok"}
    post(url, png((16, 16)))
    with urllib.request.urlopen(url + "/metrics") as r:
        text = r.read().decode()
    assert 'srcompress_requests_total{tier="1000ms",status="200"}' in text
    assert 'srcompress_request_seconds_bucket{tier="1000ms",le="+Inf"}' in text


@pytest.mark.parametrize("make, query, status, message", [
    (lambda: png((1300, 1200), smooth=True), "", 413, "decoding limit"),
    (lambda: b"%PDF-1.4 not an image", "", 415, "not a supported image"),
    (lambda: png((40, 30))[:60], "", 422, "not a readable image"),
    (lambda: png((40, 30)), "?scale=3", 422, "scale 3 is not served"),
    (lambda: png((40, 30)), "?tier=5ms", 422, "tier must be one of"),
    (lambda: png((40, 30)), "?scale=abc", 422, "scale"),
    (lambda: png((40, 30)), "?alpha=2", 422, "alpha must be in [0, 1]"),
    (lambda: png((40, 30)), "?alpha=1.0004", 422, "alpha must be in [0, 1]"),  # rounds to 1.0, but is no alpha
    (lambda: b"", "", 422, "empty upload"),
    (lambda: (REPO / "tests/compress/core/data/strip_ascii.tiff").read_bytes(), "", 422, "not a readable image"),
    (lambda: b"\x89PNG\r\n\x1a\n", "", 422, "unknown or damaged format"),
    (lambda: b"\xff\xd8 a JPEG that would take long to decode", "?scale=3", 422, "scale 3 is not served"),
], ids=["decoded-pixels", "not-an-image", "corrupt", "scale-not-served", "bad-tier", "scale-not-int",
        "alpha-out-of-range", "alpha-just-over-1", "empty", "tiff-bad-tag-was-500", "png-signature-only", "scale-before-decoding"])
def test_bad_requests_get_their_status_and_a_json_error(service, make, query, status, message):
    url, _ = service
    code, headers, body = post(url, make(), query)
    assert code == status, body[:300]
    assert headers["content-type"].startswith("application/json")
    assert message in json.loads(body)["error"] and "SRCOMPRESS" not in json.loads(body)["error"]


def test_an_upload_over_the_byte_limit_is_refused_from_its_length_before_it_is_read(service):
    import http.client
    from urllib.parse import urlparse

    host = urlparse(service[0])
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
    conn.putrequest("POST", "/v1/upscale")
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Content-Length", str(5 * 1024 * 1024))  # announced; the service must not wait for it
    conn.endheaders()
    conn.send(b"\x89PNG\r\n\x1a\n")
    response = conn.getresponse()
    assert response.status == 413 and "byte limit" in json.loads(response.read())["error"]
    conn.close()


def test_a_client_that_sends_all_of_a_refused_upload_and_closes_after_gets_the_413(service):
    """The 413 is sent before the body is read; with ``Connection: close`` (urllib's default) closing
    the socket on 16 MB of unread bytes used to reset the connection, and the client saw no answer."""
    for connection in ("close", "keep-alive"):
        conn = _raw_connection(service)
        conn.request("POST", "/v1/upscale", body=bytes(16 * 1024 * 1024),
                     headers={"Content-Type": "application/octet-stream", "Connection": connection})
        response = conn.getresponse()
        assert response.status == 413 and "byte limit" in json.loads(response.read())["error"], connection
        conn.close()
    assert post(service[0], png((16, 16)))[0] == 200


def test_a_refused_upload_that_never_ends_is_dropped_after_the_upload_timeout(service):
    import socket
    from urllib.parse import urlparse

    host = urlparse(service[0])
    with socket.create_connection((host.hostname, host.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/upscale HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Type: application/octet-stream\r\nContent-Length: 900000000\r\n\r\n")
        answer = b""
        while b"byte limit" not in answer:
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 413")
        start, dropped = time.monotonic(), False
        while time.monotonic() - start < 15:  # the fixture's upload timeout, 3 s, bounds the lingering
            try:
                sock.sendall(bytes(4096))
            except OSError:
                dropped = True
                break
            time.sleep(0.1)
        elapsed_s = time.monotonic() - start  # the server's 3 s began a little before the 413 arrived here
        assert dropped and 1.5 < elapsed_s < 15, f"the lingering connection was closed after {elapsed_s:.1f} s"


def test_content_length_with_chunked_framing_is_refused_before_the_body_is_read(service):
    import http.client
    from urllib.parse import urlparse

    host = urlparse(service[0])
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
    conn.putrequest("POST", "/v1/upscale")
    conn.putheader("Content-Type", "multipart/form-data; boundary=BB")
    conn.putheader("Content-Length", "100")  # the limit checked this, while chunks carried hundreds of MB
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    conn.send(b"4\r\n--BB\r\n")  # one well-framed chunk: the rest never needs to come
    response = conn.getresponse()
    body = response.read()
    assert response.status == 400, (response.status, body[:200])
    assert "Transfer-Encoding together" in json.loads(body)["error"]
    conn.close()


def test_a_file_named_png_is_judged_by_its_content(service):
    url, _ = service
    data, h = multipart("file", "photo.png", b"GIF87a-but-broken")
    code, _, body = post(url, data, "", h)
    assert code == 422 and "not a readable image" in json.loads(body)["error"]


def test_saturation_answers_503_with_retry_after(service):
    url, _ = service
    conn = _raw_connection(service)
    conn.putrequest("POST", "/v1/upscale")
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Content-Length", "100")
    conn.endheaders()  # a stalled upload holds the only worker slot (queue 0) until the 3 s upload timeout
    deadline, busy = time.monotonic() + 2.5, None
    while busy is None and time.monotonic() < deadline:  # no race on timing: wait until the slot is taken
        answer = post(url, png((16, 16)))
        busy = answer if answer[0] == 503 else None
    conn.close()
    assert busy is not None, "the service never answered 503 while its only slot was held"
    assert busy[1]["retry-after"] == "1" and "busy" in json.loads(busy[2])["error"]
    deadline = time.monotonic() + 30
    while post(url, png((16, 16)))[0] != 200:  # the slot comes back
        assert time.monotonic() < deadline, "the slot was not freed"
        time.sleep(0.1)


def test_alpha_blends_the_two_networks(service, tiny_checkpoints):
    from compress.core.checkpoint import interpolate, load_checkpoint
    from compress.core.imaging import decode_bytes, upscale_decoded
    from compress.core.infer import torch_upscaler

    url, _ = service
    img = png((24, 24), seed=5)
    outs = {a: np.asarray(Image.open(io.BytesIO(post(url, img, f"?alpha={a}")[2]))) for a in (0.0, 0.5, 1.0)}
    a, b = (load_checkpoint(p) for p in tiny_checkpoints)
    for alpha, out in outs.items():  # each is the network (1 - alpha) * A + alpha * B, as ESRGAN interpolates
        blended = np.asarray(upscale_decoded(torch_upscaler(interpolate(a, b, alpha).eval()), decode_bytes(img), 2))
        assert np.abs(out.astype(int) - blended.astype(int)).max() <= 1, alpha
    assert not np.array_equal(outs[0.5], outs[0.0]) and not np.array_equal(outs[0.5], outs[1.0])


def _raw_connection(service, timeout=30):
    import http.client
    from urllib.parse import urlparse

    host = urlparse(service[0])
    return http.client.HTTPConnection(host.hostname, host.port, timeout=timeout)


def test_a_stalled_upload_gets_408_and_frees_its_slot(service):
    conn = _raw_connection(service)
    conn.putrequest("POST", "/v1/upscale")
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Content-Length", "100")
    conn.endheaders()  # and then nothing: the only worker slot is held until the upload timeout
    response = conn.getresponse()
    assert response.status == 408 and "not received within" in json.loads(response.read())["error"]
    conn.close()
    assert post(service[0], png((16, 16)))[0] == 200


def test_a_client_trickling_its_headers_is_disconnected(service):
    import socket
    from urllib.parse import urlparse

    host = urlparse(service[0])
    sock = socket.create_connection((host.hostname, host.port), timeout=0.5)
    sock.sendall(b"POST /v1/upscale HTTP/1.1\r\nHost: x\r\n")
    deadline, closed = time.monotonic() + 15, False  # the fixture's header deadline is 2 s
    while not closed and time.monotonic() < deadline:
        try:
            sock.sendall(b"X")  # one header byte at a time: each used to cancel every timer
            closed = sock.recv(1) == b""
        except TimeoutError:
            continue
        except OSError:  # reset by the peer
            closed = True
    sock.close()
    assert closed, "a connection still sending its headers was kept open"
    assert post(service[0], png((16, 16)))[0] == 200


def test_pipelined_and_keep_alive_requests_are_not_cut_by_the_header_deadline(service):
    import socket
    from urllib.parse import urlparse

    host = urlparse(service[0])
    with socket.create_connection((host.hostname, host.port), timeout=10) as sock:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(request * 2)  # two requests in one write: the second starts as the first ends
        answers = _read_answers(sock, 2)  # whole answers, bodies included
        assert answers.count(b"HTTP/1.1 200") == 2
        time.sleep(0.5)  # idle, well within the fixture's 2 s header deadline
        sock.sendall(request)
        assert _read_answers(sock, 1).startswith(b"HTTP/1.1 200")


def _read_answers(sock, count: int) -> bytes:
    """Bytes from ``sock`` until ``count`` /healthz answers, bodies included, have arrived."""
    received = b""
    while received.count(b'{"status":"ok"}') < count:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {received.count(b'HTTP/1.1 200')} answers"
        received += chunk
    return received


def test_malformed_multipart_is_400_not_500(service):
    url, _ = service
    code, _, body = post(url, png((16, 16)), "", {"Content-Type": "multipart/form-data"})  # no boundary
    assert code == 400 and "malformed multipart" in json.loads(body)["error"]


def test_head_probes_and_unknown_routes_answer_in_json(service):
    conn = _raw_connection(service)
    for route in ("/healthz", "/", "/metrics"):
        conn.request("HEAD", route)
        response = conn.getresponse()
        assert response.status == 200 and response.read() == b""
    conn.request("GET", "/nowhere")
    response = conn.getresponse()
    assert response.status == 404 and "error" in json.loads(response.read())
    conn.request("GET", "/openapi.json")
    schema = json.loads(conn.getresponse().read())
    operations = [op["operationId"] for path in schema["paths"].values() for op in path.values()]
    assert len(operations) == len(set(operations)) and "head" not in json.dumps(schema["paths"])
    conn.close()


def test_a_port_in_use_or_out_of_range_is_refused_before_models_load(tiny_checkpoints, capsys):
    import socket

    from compress.pipeline.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--artifact", str(tiny_checkpoints[0]), "--port", str(port)]) == 2
    assert "cannot listen there" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--artifact", str(tiny_checkpoints[0]), "--port", "99999"])
    assert exc.value.code == 2


def test_limits_no_host_holds_and_two_artifacts_for_one_scale_are_refused(tiny_checkpoints, capsys):
    """``--max-upload-mb 1e308`` overflowed only once every model had loaded, and a second artifact for
    a scale already served was loaded and then silently never served (a hostile-input probe of session 35)."""
    from compress.pipeline.cli import main
    from compress.pipeline.models import ModelSet

    for option, value in (("--max-upload-mb", "1e308"), ("--max-pixels", str(10**12)), ("--upload-timeout-s", "1e9")):
        with pytest.raises(SystemExit) as exc:
            main(["serve", "--artifact", str(tiny_checkpoints[0]), option, value])
        assert exc.value.code == 2 and f"{option[2:]} must be" in capsys.readouterr().err
    a, b = tiny_checkpoints
    with pytest.raises(InputError, match=f"{re.escape(str(b))}: scale 2 is already served by {re.escape(str(a))}"):
        ModelSet(artifacts=(a, b))


def test_the_port_is_held_from_the_check_to_serving():
    """The check's own sockets are the ones served on, so no other process can take the port in between."""
    import socket

    from compress.core.errors import InputError
    from compress.pipeline.http import _listen

    held = _listen("127.0.0.1", 0)
    try:
        port = held[0].getsockname()[1]
        with pytest.raises(InputError, match="cannot listen there"):
            _listen("127.0.0.1", port)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # already listening: connections queue until uvicorn accepts them
    finally:
        for sock in held:
            sock.close()


def test_a_host_that_resolves_to_one_address_twice_binds_it_once(monkeypatch):
    import socket

    from compress.pipeline import http

    real = socket.getaddrinfo
    monkeypatch.setattr(http.socket, "getaddrinfo", lambda *a, **k: real(*a, **k) * 2)
    held = http._listen("127.0.0.1", 0)
    try:
        assert len(held) == 1
    finally:
        for sock in held:
            sock.close()


def test_sigterm_shuts_the_service_down_cleanly(tiny_checkpoints, tmp_path):
    """A service manager's stop: uvicorn's graceful shutdown, then exit 0 with no error line."""
    import signal

    from tests.compress.pipeline.conftest import start_service

    log = tmp_path / "serve.log"
    proc, _ = start_service(["--artifact", str(tiny_checkpoints[0]), "--threads", "1"], log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()[-2000:]
    assert "error" not in log.read_text()
