"""pytest-benchmark suite for a run's key artifacts (``make bench-pytest RUN=...``).

Pedantic mode with fixed rounds and warm-up; one 256x256 LR input; 2 threads. Separate from the
unit tests (``make test`` does not collect this folder).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from compress.core.cpu import host_cpu
from export.runtimes import ort_upscaler

RUN = Path(os.environ.get("RUN", "artifacts/run-x2"))
KEY = ["30-export/model_fp32.onnx", "10-prune/channel/model.onnx", "20-quantize/model/model_int8_minmax.onnx",
       "20-quantize/model/model_int8_qat.onnx"]


@pytest.mark.parametrize("rel", KEY)
def test_ort_latency_256(benchmark, rel):
    path = RUN / rel
    if not path.is_file():
        pytest.skip(f"{path} not produced in this run")
    run = ort_upscaler(path, threads=2)
    x = np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)
    benchmark.extra_info.update(cpu=host_cpu().describe(), threads=2, runtime="ort", lr_size="256x256")
    out = benchmark.pedantic(run, args=(x,), rounds=10, iterations=1, warmup_rounds=2)
    assert out.shape[-2] > 256
