"""One latency measurement of one artifact on one runtime at one input size (run in its own process).

``python -m benchmarks.latency --artifact A --runtime ort --height H --width W --scale S --threads T``
prints one JSON object: p50 / p95 / min / mean milliseconds over ``runs`` timed calls after
``warmup`` untimed ones, the process's peak resident memory, and the CPU with its features. Large
inputs run through the same tiled inference the deployable runtime uses (``compress.core.infer.upscale`` with ``auto_tiles``, as
``upscale`` and ``serve`` run it): the whole image up to 4 output megapixels (1 LR megapixel at x2,
0.25 at x4; the 1080p-output sizes at x2, x3 and x4 included), tiles of one shape beyond; the result
records which (``mode``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

from compress.core import options as opt
from compress.core.infer import TileConfig, auto_tiles
from export.runtimes import RUNTIMES



@dataclasses.dataclass(frozen=True)
class Timing:
    """Latency statistics in milliseconds."""

    p50_ms: float
    p95_ms: float
    min_ms: float
    mean_ms: float
    runs: int

    @classmethod
    def of(cls, seconds: list[float]) -> Timing:
        ms = np.asarray(seconds) * 1000.0
        return cls(round(float(np.percentile(ms, 50)), 3), round(float(np.percentile(ms, 95)), 3),
                   round(float(ms.min()), 3), round(float(ms.mean()), 3), len(ms))


def time_calls(fn, warmup: int, runs: int, sync=None) -> Timing:  # noqa: ANN001
    """Warm up, then time ``runs`` calls of ``fn`` (``sync`` waits for a GPU before reading the clock)."""
    if warmup < 2 or runs < 1:
        raise ValueError(f"warmup must be >= 2 and runs >= 1, got warmup={warmup}, runs={runs}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return Timing.of(times)


def measure(artifact: Path, runtime: str, height: int, width: int, scale: int, threads: int,
            warmup: int, runs: int, tile: int) -> dict[str, object]:
    from compress.core.cpu import host_cpu
    from compress.core.infer import upscale
    from export.runtimes import open_artifact

    opened = open_artifact(artifact, runtime, threads, scale)
    opened_mib = _rss_now_mib()  # the library and the model loaded, nothing run yet
    fn, sync = opened.run, opened.sync
    lr = np.random.default_rng(0).random((height, width, 3), dtype=np.float32)
    # as a deployer runs it (upscale, serve): the policy of compress.core.infer.auto_tiles
    tiles = auto_tiles((height, width), TileConfig(tile=tile), scale)
    whole = tiles.tile == 0 or (height <= tiles.tile and width <= tiles.tile)
    mode = "whole image" if whole else f"tiles of {tiles.tile} + {tiles.overlap} overlap"
    timing = time_calls(lambda: upscale(fn, lr, scale, tiles), warmup, runs, sync)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"artifact": str(artifact), "runtime": runtime, "lr_size": [height, width],
            "out_size": [height * scale, width * scale], "out_mp": round(height * width * scale * scale / 1e6, 4),
            "threads": threads, "tile": tiles.tile, "mode": mode, **dataclasses.asdict(timing),
            "peak_rss_mb": round(peak_kib / 1024, 1), "rss_opened_mb": opened_mib,
            "pid": os.getpid(), "cpu": host_cpu().describe()}


def _rss_now_mib() -> float | None:
    """This process's resident memory now, in MiB (Linux ``/proc``; None elsewhere).

    ``peak_rss_mb`` less this is what running added on top of the runtime library and the model: the
    inference, and the work a runtime does on its first call (OpenVINO compiles for the input shape
    then, TFLite allocates its tensors; ONNX Runtime did its graph work when the session opened).
    """
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def main(argv: list[str] | None = None) -> int:
    p = opt.Parser(prog="python -m benchmarks.latency")
    p.add_argument("--artifact", required=True, type=opt.existing_file)
    p.add_argument("--runtime", required=True, choices=[rt.name for rt in RUNTIMES])
    p.add_argument("--height", type=opt.positive_int, required=True)
    p.add_argument("--width", type=opt.positive_int, required=True)
    p.add_argument("--scale", type=opt.artifact_scale, required=True)
    p.add_argument("--threads", type=opt.bench_threads, default=2)
    p.add_argument("--warmup", type=opt.bench_warmup, default=2)
    p.add_argument("--runs", type=opt.bench_runs, default=10)
    p.add_argument("--tile", type=opt.tile, default=0, help="LR tile side (0: the deployment policy, auto_tiles)")
    a = p.parse_args(argv)
    print(json.dumps(measure(a.artifact, a.runtime, a.height, a.width, a.scale, a.threads, a.warmup, a.runs, a.tile)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
