"""A/B of ONNX Runtime's two INT8 convolution paths on this host, on the same QDQ graph.

``python -m benchmarks.ort_conv_path --artifact RUN/20-quantize/model/model_int8_percentile.onnx --scale 2``
writes the zero-point-shifted twin to a temporary folder
(:func:`quantization.ort_conv_path.shift_weight_zero_points`: same outputs, bit for bit, checked here; on a
CPU without VNNI full-range weights make them differ, and it refuses in one line), then times the original
(MLAS's symmetric convolution) and the twin (im2col + MLAS's quantized GEMM, the path with an AMX-INT8
kernel) with ``benchmarks.latency``, each configuration in its own process, alternating for ``--rounds``
rounds, and prints p50 and min per form and the twin's speed-up over the original, with the CPU's features.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from benchmarks.child import ChildFailed, run_child
from compress.core import options as opt
from compress.core.cpu import host_cpu
from compress.core.errors import error_line
from quantization.ptq import cpu_has_vnni
from quantization.ort_conv_path import shift_weight_zero_points


def _time(artifact: Path, size: tuple[int, int], scale: int, threads: int, runs: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "benchmarks.latency", "--artifact", str(artifact.resolve()), "--runtime", "ort",
           "--height", str(size[0]), "--width", str(size[1]), "--scale", str(scale), "--threads", str(threads),
           "--runs", str(runs)]
    try:
        out = run_child(cmd, f"{artifact}: benchmarks.latency", cwd=Path(__file__).resolve().parents[1])
    except ChildFailed as exc:  # the caller prints ValueErrors as its one error line
        raise ValueError(str(exc)) from None
    return json.loads(out.strip().splitlines()[-1])


def same_outputs(a: Path, b: Path, scale: int) -> float:
    """Largest absolute difference between the two models' outputs on one random 32x32 LR input."""
    from export.runtimes import open_artifact

    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    return float(np.abs(open_artifact(a, "ort", 1, scale).run(x) - open_artifact(b, "ort", 1, scale).run(x)).max())


def not_exact(artifact: Path, diff: float, vnni: bool | None = None) -> str:
    """Why the A/B cannot run: the twin's outputs differ by ``diff``, and what that means on this host.

    Without VNNI, MLAS multiplies U8 x S8 with VPMADDUBSW, whose int16 pair sums saturate with full-range
    8-bit weights, and its two convolution paths do not saturate alike: on session 41's AVX2-only AMD EPYC a
    tiny EDSR's twin differed by 0.0078 with full-range weights and by 0 with the same weights halved to
    7 bits. The pipeline's ``weight_range = "auto"`` writes 7-bit weights on such a host.
    """
    vnni = cpu_has_vnni() if vnni is None else vnni
    why = ("this CPU has no VNNI, and ONNX Runtime's two INT8 convolution paths saturate full-range 8-bit weights "
           "differently there: time 7-bit weights (weight_range = \"reduced\") or run on a host with VNNI"
           if not vnni else "the rewrite is not exact")
    return f"{artifact}: the zero-point-shifted twin's outputs differ by {diff:g}; {why}"


def compare(artifact: Path, size: tuple[int, int], scale: int, threads: int, runs: int, rounds: int) -> dict:
    """Time the original and its shifted twin (in a temporary folder) side by side."""
    p50s: dict[str, list[float]] = {"symmetric conv": [], "im2col + QGEMM": []}
    mins: dict[str, list[float]] = {k: [] for k in p50s}
    with tempfile.TemporaryDirectory(prefix="ort-conv-path-") as tmp:  # not beside the artifact: a run's stages
        twin = Path(tmp) / (artifact.stem + "_qgemm.onnx")              # would take it for one of theirs
        shift_weight_zero_points(artifact, twin)
        diff = same_outputs(artifact, twin, scale)
        if diff != 0.0:
            raise ValueError(not_exact(artifact, diff))
        for _ in range(rounds):
            for name, path in zip(p50s, (artifact, twin)):
                t = _time(path, size, scale, threads, runs)
                p50s[name].append(t["p50_ms"])
                mins[name].append(t["min_ms"])
    med = {k: statistics.median(v) for k, v in p50s.items()}
    return {"cpu": host_cpu().describe(), "artifact": str(artifact), "max_abs_diff": diff,
            "lr_size": list(size), "scale": scale, "threads": threads, "runs": runs, "rounds": rounds,
            "p50_ms": p50s, "min_ms": {k: min(v) for k, v in mins.items()},
            "qgemm_speedup": round(med["symmetric conv"] / med["im2col + QGEMM"], 3)}


def main(argv: list[str] | None = None) -> int:
    p = opt.Parser(prog="python -m benchmarks.ort_conv_path", description=__doc__.split("\n")[0])
    p.add_argument("--artifact", required=True, type=opt.existing_file,
                   help="an INT8 QDQ ONNX model with symmetric S8 weights")
    p.add_argument("--scale", type=opt.artifact_scale, required=True)
    p.add_argument("--size", type=opt.size_hw, default=(256, 256), help="LR size HxW")
    p.add_argument("--threads", type=opt.bench_threads, default=2)
    p.add_argument("--runs", type=opt.bench_runs, default=5)
    p.add_argument("--rounds", type=opt.int_range("rounds", 1, 100), default=2)
    a = p.parse_args(argv)
    try:
        onnx.load(str(a.artifact), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and kin: not a model file
        print(error_line(f"error: {a.artifact}: not an ONNX model ({type(exc).__name__})"), file=sys.stderr)
        return 2
    try:
        r = compare(a.artifact, a.size, a.scale, a.threads, a.runs, a.rounds)
    except ValueError as exc:  # nothing to shift, or a twin that is not exact here; the message names the file
        print(error_line(f"error: {exc}"), file=sys.stderr)
        return 2
    print(f"{r['cpu']}; ORT, {a.threads} threads, LR {a.size[0]}x{a.size[1]}, x{a.scale}, p50 of {a.runs} per process, "
          f"{a.rounds} rounds; outputs differ by {r['max_abs_diff']:g}")
    for name in r["p50_ms"]:
        print(f"  {name:16s} p50 {' / '.join(f'{v:.1f}' for v in r['p50_ms'][name])} ms, min {r['min_ms'][name]:.1f} ms")
    print(f"  im2col + QGEMM speed-up over the symmetric conv: {r['qgemm_speedup']:.2f}x")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
