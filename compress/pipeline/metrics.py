"""Prometheus-style counters and latency histograms of the service (text exposition format 0.0.4)."""

from __future__ import annotations

import threading
from collections import defaultdict

BUCKETS_S = (0.05, 0.1, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class Metrics:
    """Request counts per (tier, status) and request-latency histograms per tier; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * len(BUCKETS_S))
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def observe(self, tier: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(tier, status)] += 1
            if status == 200:
                for i, bound in enumerate(BUCKETS_S):
                    if seconds <= bound:
                        self.buckets[tier][i] += 1
                self.sums[tier] += seconds
                self.counts[tier] += 1

    def render(self) -> str:
        with self._lock:
            lines = ["# HELP srcompress_requests_total Upscale requests by tier and HTTP status.",
                     "# TYPE srcompress_requests_total counter"]
            lines += [f'srcompress_requests_total{{tier="{t}",status="{s}"}} {n}'
                      for (t, s), n in sorted(self.requests.items())]
            lines += ["# HELP srcompress_request_seconds Latency of successful upscale requests (decode, "
                      "inference, encode).", "# TYPE srcompress_request_seconds histogram"]
            for tier in sorted(self.counts):
                for bound, n in zip(BUCKETS_S, self.buckets[tier]):
                    lines.append(f'srcompress_request_seconds_bucket{{tier="{tier}",le="{bound}"}} {n}')
                lines.append(f'srcompress_request_seconds_bucket{{tier="{tier}",le="+Inf"}} {self.counts[tier]}')
                lines.append(f'srcompress_request_seconds_sum{{tier="{tier}"}} {self.sums[tier]:.6f}')
                lines.append(f'srcompress_request_seconds_count{{tier="{tier}"}} {self.counts[tier]}')
        return "\n".join(lines) + "\n"
