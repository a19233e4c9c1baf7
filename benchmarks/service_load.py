"""End-to-end latency and a bounded load test of the HTTP service, on 127.0.0.1 only.

Starts ``python -m compress serve`` (its own process) with the given artifact, then for each output
size and concurrency sends ``--requests`` uploads (decode + inference + encode, as a client sees it),
after ``--warmup`` untimed ones, and prints p50 / p95 beside the service's own inference time
(``X-Inference-Ms``). ``--load N`` then sends N small requests at concurrency 4 and reports requests
served, errors and the service's resident memory (VmRSS) before and after::

    python -m benchmarks.service_load --artifact artifacts/default/edsr_baseline_x2.safetensors \\
        --outputs 512x512 1920x1080 --concurrency 1 4 --requests 6 --load 300
"""

from __future__ import annotations

import io
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str]) -> tuple[subprocess.Popen, str]:
    port = _port()
    proc = subprocess.Popen([sys.executable, "-m", "compress", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("error: the service did not start")


def _image(h: int, w: int) -> bytes:
    from compress.core.default_data import split_paths

    img = Image.open(split_paths("evaluation")[0]).convert("RGB").resize((w, h), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def scale_in_name(path: Path) -> int | None:
    """The scale an artifact's name carries (``edsr_baseline_x4.safetensors``: 4), or None."""
    m = re.search(r"_x([1-4])(?![0-9])", path.stem)
    return int(m.group(1)) if m else None


def _post(url: str, body: bytes, scale: int) -> tuple[int, float, float]:
    t0 = time.perf_counter()
    req = urllib.request.Request(f"{url}/v1/upscale?scale={scale}", data=body, method="POST",
                                 headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            r.read()
            return r.status, time.perf_counter() - t0, float(r.headers.get("X-Inference-Ms", "nan"))
    except urllib.error.HTTPError as exc:
        return exc.code, time.perf_counter() - t0, float("nan")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _round(url: str, body: bytes, scale: int, conc: int, n: int, warmup: int) -> dict:
    with ThreadPoolExecutor(conc) as pool:
        list(pool.map(lambda _: _post(url, body, scale), range(warmup)))
        res = list(pool.map(lambda _: _post(url, body, scale), range(n)))
    ok = [r for r in res if r[0] == 200]
    ms = sorted(r[1] * 1000 for r in ok)
    return {"ok": len(ok), "errors": len(res) - len(ok), "p50_ms": statistics.median(ms) if ms else float("nan"),
            "p95_ms": float(np.percentile(ms, 95)) if ms else float("nan"), "min_ms": ms[0] if ms else float("nan"),
            "inference_ms": statistics.median(r[2] for r in ok) if ok else float("nan")}


def main(argv: list[str] | None = None) -> int:
    from compress.core import options as opt
    from compress.core.cpu import host_cpu

    ap = opt.Parser(prog="python -m benchmarks.service_load", description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", required=True, type=opt.existing_file)
    ap.add_argument("--scale", type=opt.artifact_scale, default=None, help="default: read from the artifact name (_xS)")
    ap.add_argument("--outputs", type=opt.output_wh, nargs="+", default=[(512, 512), (1920, 1080)],
                    help="output WxH")
    ap.add_argument("--concurrency", type=opt.concurrency, nargs="+", default=[1, 4])
    ap.add_argument("--requests", type=opt.int_range("requests", 1, 10000), default=6)
    ap.add_argument("--warmup", type=opt.bench_warmup, default=2)
    ap.add_argument("--workers", type=opt.workers, default=2)
    ap.add_argument("--threads", type=opt.bench_threads, default=1, help="runtime threads per worker")
    ap.add_argument("--load", type=opt.int_range("load", 0, 100000), default=0, help="small requests for the load test (0: none)")
    a = ap.parse_args(argv)
    scale = a.scale or scale_in_name(a.artifact)
    if scale is None:
        ap.error(f"argument --scale: {a.artifact} does not name its scale (_x1 to _x4); give --scale")
    proc, url = _start(["--artifact", str(a.artifact.resolve()), "--workers", str(a.workers), "--queue", "64",
                        "--threads", str(a.threads), "--max-pixels", "20000000", "--max-upload-mb", "50"])
    try:
        print(f"# {a.artifact}, x{scale}, service workers {a.workers} x {a.threads} threads, {os.cpu_count()} cores, "
              f"{host_cpu().describe()}; latency = client-side decode+inference+encode+HTTP")
        print("| output | concurrency | ok / errors | p50 ms | min ms | p95 ms | service inference p50 ms |\n"
              "|---|---|---|---|---|---|---|")
        for w, h in a.outputs:
            body = _image(-(-h // scale), -(-w // scale))
            for conc in a.concurrency:
                r = _round(url, body, scale, conc, a.requests, a.warmup)
                print(f"| {w}x{h} | {conc} | {r['ok']} / {r['errors']} | {r['p50_ms']:.0f} | {r['min_ms']:.0f} | {r['p95_ms']:.0f} | "
                      f"{r['inference_ms']:.0f} |", flush=True)
        if a.load:
            small = _image(32, 32)
            rss0 = _rss_mb(proc.pid)
            r = _round(url, small, scale, 4, a.load, 0)
            print(f"load: {a.load} requests of 32x32 at concurrency 4: {r['ok']} served, {r['errors']} errors, "
                  f"p50 {r['p50_ms']:.0f} ms; service RSS {rss0:.0f} MB -> {_rss_mb(proc.pid):.0f} MB")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
