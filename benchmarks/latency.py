"""One latency measurement of one artifact on one runtime at one input size (run in its own process).

``python -m benchmarks.latency --artifact A --runtime ort --height H --width W --scale S --threads T``
prints one JSON object: p50 / p95 / min / mean milliseconds over ``runs`` timed calls after
``warmup`` untimed ones, and the process's peak resident memory. Large inputs run through the same
tiled inference the deployable runtime uses (``compress.core.infer.upscale``): the whole image up to
``WHOLE_IMAGE_MAX_LR_PIXELS`` (the 1080p-output sizes at x2, x3 and x4 included), tiles of one shape
beyond, so memory stays bounded; the result records which (``mode``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

from export.runtimes import RUNTIMES

#: Whole-image inference up to this many LR pixels (1 MP: about 256 MB per 64-channel FP32 activation of
#: EDSR-baseline, a few GB at peak on ONNX Runtime); larger inputs run in tiles of one shape.
WHOLE_IMAGE_MAX_LR_PIXELS = 1_000_000



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
    from compress.core.infer import TileConfig, upscale

    from export.runtimes import open_artifact

    opened = open_artifact(artifact, runtime, threads, scale)
    fn, sync = opened.run, opened.sync
    lr = np.random.default_rng(0).random((height, width, 3), dtype=np.float32)
    # as a deployer runs it: the whole image while it fits the memory budget, else tiles of one shape
    whole = height * width <= WHOLE_IMAGE_MAX_LR_PIXELS
    tiles = TileConfig(tile=0 if whole else tile)
    timing = time_calls(lambda: upscale(fn, lr, scale, tiles), warmup, runs, sync)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"artifact": str(artifact), "runtime": runtime, "lr_size": [height, width],
            "out_size": [height * scale, width * scale], "out_mp": round(height * width * scale * scale / 1e6, 4),
            "threads": threads, "tile": tiles.tile, "mode": "whole image" if whole else f"tiles of {tile} + overlap", **dataclasses.asdict(timing), "peak_rss_mb": round(peak_kib / 1024, 1),
            "pid": os.getpid()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.latency")
    p.add_argument("--artifact", required=True, type=Path)
    p.add_argument("--runtime", required=True, choices=[rt.name for rt in RUNTIMES])
    p.add_argument("--height", type=int, required=True)
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--scale", type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--tile", type=int, default=512, help="LR tile side for inputs over the whole-image budget")
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    print(json.dumps(measure(a.artifact, a.runtime, a.height, a.width, a.scale, a.threads, a.warmup, a.runs, a.tile)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
