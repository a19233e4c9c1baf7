"""Peak memory and time of ONNX Runtime calibration, in one ``collect_data`` call or in chunks.

``python -m benchmarks.calibration_memory --onnx RUN/20-quantize/model/model_fp32_pre.onnx --scale 4
--patches-per-image 8 24 --chunk 16 0`` calibrates the graph on the default calibration split with every
pair of patch count and chunk size (0: all patches in one call, as ORT's own ``quantize_static`` does),
each in a process of its own, and prints the peak resident memory (``getrusage``) and the seconds of
:func:`quantization.ptq.calibrate`, with the CPU's features.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

from compress.core import options as opt
from compress.core.cpu import host_cpu
from compress.core.errors import InputError, error_line
from quantization.ptq import Calibration, calibrate



def measure_once(model: Path, scale: int, patches_per_image: int, chunk: int, method: str, percentile: float) -> dict:
    """Calibrate in this process; its peak RSS afterwards is the calibration's (the process does nothing else)."""
    from compress.core.default_data import split_paths
    from quantization.calibration import CalibrationConfig, PatchCalibrationReader

    reader = PatchCalibrationReader(split_paths("calibration"), scale,
                                    CalibrationConfig(lr_patch=64, patches_per_image=patches_per_image))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="calib-mem-") as tmp:  # chunk 0: every patch in one call
        calibrate(model, reader, Calibration(method), Path(tmp) / "cache.json", percentile, chunk or sys.maxsize)
    return {"patches": reader.count, "chunk": chunk, "seconds": round(time.perf_counter() - start, 1),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def _child(args: list[str]) -> dict:
    """One measurement in a process of its own (run from the repository root, so paths are absolute)."""
    cmd = [sys.executable, "-m", "benchmarks.calibration_memory", "--one", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}"
        raise InputError(last.removeprefix("error: "))
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        raise InputError(f"a measurement printed no result: {lines[-1][:80]!r}") from None


def main(argv: list[str] | None = None) -> int:
    p = opt.Parser(prog="python -m benchmarks.calibration_memory", description=__doc__.split("\n")[0])
    p.add_argument("--onnx", required=True, type=opt.existing_file, help="a pre-processed FP32 ONNX model")
    p.add_argument("--scale", type=opt.artifact_scale, required=True)
    p.add_argument("--patches-per-image", type=opt.int_range("--patches-per-image", 1, 4096), nargs="+", default=[8])
    p.add_argument("--chunk", type=opt.int_range("--chunk", 0, 1 << 20), nargs="+", default=[16, 0],
                   help="patches per collect_data call (0: one call)")
    p.add_argument("--method", choices=[m.value for m in Calibration], default="percentile")
    p.add_argument("--percentile", type=opt.float_range("--percentile", 100.0), default=99.995)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child process: one measurement
    a = p.parse_args(argv)
    try:
        onnx.checker.check_model(str(a.onnx))
    except Exception as exc:  # protobuf's DecodeError, the checker's ValidationError: not a model file
        print(error_line(f"error: {a.onnx}: not an ONNX model ({type(exc).__name__})"), file=sys.stderr)
        return 2
    try:
        if a.one:
            try:
                r = measure_once(a.onnx, a.scale, a.patches_per_image[0], a.chunk[0], a.method, a.percentile)
            except (RuntimeError, ValueError) as exc:  # ORT's Fail / InvalidArgument, inputs the graph lacks
                raise InputError(f"{a.onnx}: cannot calibrate it as an SR model ({type(exc).__name__}: {exc})") from None
            print(json.dumps(r))
            return 0
        print(f"{host_cpu().describe()}; ORT {a.method} calibration of {a.onnx}, 64 px LR patches at x{a.scale}, "
              "each row in its own process")
        for n in a.patches_per_image:
            for chunk in a.chunk:
                r = _child([f"--onnx={a.onnx.resolve()}", "--scale", str(a.scale), "--patches-per-image", str(n),
                            "--chunk", str(chunk), "--method", a.method, "--percentile", str(a.percentile)])
                calls = "one call" if chunk == 0 else f"calls of {chunk}"
                print(f"  {r['patches']:5d} patches, {calls:14s} peak {r['peak_rss_mb']:6d} MB, {r['seconds']:6.1f} s")
    except InputError as exc:
        print(error_line(f"error: {exc}"), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
