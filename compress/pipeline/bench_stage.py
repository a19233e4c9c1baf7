"""The ``bench`` stage: time every artifact of a run, each configuration in its own process.

Configurations are interleaved (sizes outer, artifacts inner) so that drift of a shared machine
hits every variant alike, and the results land in ``<run>/40-bench/latency.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from compress.core.cpu import host_cpu
from compress.core.errors import InputError
from compress.core.files import sidecar_path, sidecar_quality, write_json_atomic
from compress.pipeline.contract import BENCH_ORDER, artifact_kind, find, path_of
from compress.pipeline.ladder import climb, first_guess_mp
from compress.pipeline.latency_file import LARGE_LR_PIXELS
from compress.core.evaluate import eval_sets, quality
from export.runtimes import available, is_float_graph, open_artifact, runtime

TARGETS_MS = (300.0, 1000.0)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What to time.

    Attributes:
        sizes: LR input sizes (height, width); ``None`` entries mean "the LR size whose output is 1920x1080".
        threads: runtime threads.
        warmup: untimed calls first (at least 2).
        runs: timed calls per configuration (large inputs use ``large_runs``).
        large_runs: timed calls for inputs over ``LARGE_LR_PIXELS`` (0.1 LR megapixels).
        tile: LR tile side (0: the deployment policy of ``compress.core.infer.auto_tiles``).
        gpu: also time the CUDA runtimes when a GPU is present.
        large: ``all`` times every artifact at the large sizes; ``pareto`` only the FP32 ONNX reference
            and the artifacts on the Pareto front of (latency at the largest small size, PSNR loss on
            the embedded set, ignoring loss differences under ``LARGE_LOSS_TOL_DB``), which is what a
            user picks from, at a fraction of the time.
        ladder_targets_ms: targets whose largest admitted output is measured by a ladder of sizes
            (:mod:`compress.pipeline.ladder`) for the FP32 ONNX reference and the Pareto front at the
            largest size timed (see :func:`large_subset`); empty: none.
        timeout_s: wall time one configuration's process may take (warm-ups, runs and loading); past
            it the process is killed and its row records the timeout, so one hung runtime cannot
            stall the whole bench.
    """

    sizes: tuple[tuple[int, int] | None, ...] = ((128, 128), (256, 256), None)
    threads: int = 2
    warmup: int = 2
    runs: int = 10
    large_runs: int = 3
    tile: int = 0
    gpu: bool = True
    large: str = "pareto"
    ladder_targets_ms: tuple[float, ...] = TARGETS_MS
    timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if any(not t > 0 for t in self.ladder_targets_ms):
            raise ValueError(f"ladder_targets_ms must be positive, got {list(self.ladder_targets_ms)}")
        if self.large not in ("all", "pareto"):
            raise ValueError(f"large must be 'all' or 'pareto', got {self.large!r}")
        if self.warmup < 2 or self.runs < 1 or self.large_runs < 1:
            raise ValueError(f"need warmup >= 2 and runs, large_runs >= 1; got {self.warmup}, {self.runs}, {self.large_runs}")


def full_hd_lr(scale: int) -> tuple[int, int]:
    """LR size whose x``scale`` output is 1920x1080 (rounded up)."""
    return (-(-1080 // scale), -(-1920 // scale))


def discover(run: Path) -> list[tuple[Path, str]]:
    """(artifact, runtime) pairs of a run, in pipeline order (:data:`contract.BENCH_ORDER`)."""
    found = [(p, artifact_kind(key).runtime) for key in BENCH_ORDER for p in find(run, key)]
    if not found:
        raise InputError(f"{run}: no artifacts to benchmark; run make model / export first")
    return found


def extra_runtimes(pairs: list[tuple[Path, str]], gpu: bool) -> list[tuple[Path, str]]:
    """The same artifacts on every present ``bench_extra`` runtime of the runtime table (OpenVINO, and
    the GPU variants when ``gpu``), where the runtime applies to the file."""
    extra = []
    for rt in available():
        if rt.bench_extra and (rt.device == "cpu" or gpu):
            extra += [(a, rt.name) for a, r in pairs if a.suffix in rt.suffixes and runtime(r).primary
                      and (rt.applies is None or rt.applies(a))]
    return extra


def gpu_present() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


LARGE_LOSS_TOL_DB = 0.02  # at large sizes, a slower artifact is timed only if it loses this much less


def is_large(size: tuple[int, int]) -> bool:
    return size[0] * size[1] > LARGE_LR_PIXELS


def run_one(artifact: Path, runtime: str, size: tuple[int, int], scale: int, cfg: BenchConfig) -> dict[str, object]:
    runs = cfg.large_runs if is_large(size) else cfg.runs
    cmd = [sys.executable, "-m", "benchmarks.latency", "--artifact", str(artifact.resolve()), "--runtime", runtime,
           "--height", str(size[0]), "--width", str(size[1]), "--scale", str(scale), "--threads", str(cfg.threads),
           "--warmup", str(cfg.warmup), "--runs", str(runs), "--tile", str(cfg.tile)]
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg.threads), "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[2],
                              timeout=cfg.timeout_s)
    except subprocess.TimeoutExpired:
        return {"artifact": str(artifact), "runtime": runtime, "lr_size": list(size),
                "error": f"timed out after {cfg.timeout_s:g} s (killed)"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"artifact": str(artifact), "runtime": runtime, "lr_size": list(size), "error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict[str, object]:
    """The host, named with the CPU features that decide kernels and precisions."""
    cpu = host_cpu()
    info: dict[str, object] = {"cpu": cpu.model_name, "cpu_features": list(cpu.features()),
                               "cpu_description": cpu.describe(), "cores": os.cpu_count(),
                               "platform": platform.platform(), "python": platform.python_version()}
    if gpu_present():
        import torch

        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def large_subset(run: Path, pairs: list[tuple[Path, str]], results: list[dict],
                 own: dict[str, dict] | None = None) -> list[tuple[Path, str]]:
    """The FP32 ONNX reference plus the Pareto front of the last timed size (see ``BenchConfig.large``).

    ``own`` is :func:`own_quality`: a runtime with numerics of its own (bf16) is placed at the loss it
    measured, not at its artifact's sidecar's (FP32) figure.
    """
    from compress.pipeline.report import pareto_front, quality_record

    timed = [r for r in results if "error" not in r]
    if not timed:
        return pairs
    last = max((tuple(r["lr_size"]) for r in timed), key=lambda s: s[0] * s[1])
    base = path_of(run, "baseline")
    ref = sidecar_quality(quality_record(run, base), sidecar_path(base)).get("embedded", {})
    points = {}
    for r in timed:
        if tuple(r["lr_size"]) != last:
            continue
        q = (own or {}).get(f"{r['artifact']}|{r['runtime']}") or sidecar_quality(
            quality_record(run, run / r["artifact"]), f"{run / r['artifact']} (its quality record)")
        q = q.get("embedded", {})
        if "psnr_y_db" in q and "psnr_y_db" in ref:
            points[(r["artifact"], r["runtime"])] = (r["p50_ms"], ref["psnr_y_db"] - q["psnr_y_db"])
    keep = pareto_front(points, LARGE_LOSS_TOL_DB) | {(artifact_kind("fp32_onnx").pattern, "ort")}
    return [(a, rt) for a, rt in pairs if (str(a.relative_to(run)), rt) in keep]


def run_bench(run: Path, scale: int, cfg: BenchConfig = BenchConfig(), extra_eval: list[str] | None = None) -> Path:
    """Time every artifact of ``run`` at every size; write ``40-bench/latency.json``.

    A runtime with numerics of its own (bf16, FP16) is scored on the embedded split and ``extra_eval``
    (the folders the other stages were given), so its rows carry the sets every other row carries.
    """
    pairs = discover(run)
    extras = extra_runtimes(pairs, cfg.gpu)
    pairs += extras
    sizes = list(dict.fromkeys(s if s is not None else full_hd_lr(scale) for s in cfg.sizes))  # 1080p may be a given HxW
    sizes.sort(key=lambda s: s[0] * s[1])
    quality = own_quality(run, pairs, scale, cfg.threads, extra_eval, extras)  # first: the front places bf16 by its own loss
    results: list[dict] = []
    for size in sizes:
        chosen = pairs if cfg.large == "all" or not is_large(size) else large_subset(run, pairs, results, quality)
        for artifact, rt_name in chosen:
            row = {**run_one(artifact, rt_name, size, scale, cfg), "artifact": str(artifact.relative_to(run))}
            results.append(row)
            status = row.get("error") or f"p50 {row['p50_ms']:.1f} ms"
            print(f"[bench] {row['artifact']:45s} {rt_name:8s} {size[0]}x{size[1]}: {status}", flush=True)
    out = path_of(run, "latency")
    if results and all("error" in r for r in results):
        raise InputError(f"{run}: every configuration failed (first: {results[0]['error']}); "
                         f"{out} is left as it was")
    front = large_subset(run, pairs, results, quality)  # the reference and the Pareto front at the largest size
    ladders = [lad for a, rt in front for lad in ladder(run, a, rt, results, scale, cfg)]
    write_json_atomic(out, {"machine": machine(), "config": dataclasses.asdict(cfg), "scale": scale,
                            "targets_ms": list(TARGETS_MS), "results": results, "ladders": ladders,
                            "quality": quality})
    return out


def ladder(run: Path, artifact: Path, rt_name: str, results: list[dict], scale: int, cfg: BenchConfig) -> list[dict]:
    """The measured ladder (:func:`compress.pipeline.ladder.climb`) of one artifact for every target."""
    rel = str(artifact.relative_to(run))
    points = [(r["out_mp"], r["p50_ms"]) for r in results
              if r["artifact"] == rel and r["runtime"] == rt_name and "error" not in r]
    found = []
    for target in cfg.ladder_targets_ms:
        start = first_guess_mp(points, target)
        if start is None:
            continue

        def time_at(size: tuple[int, int]) -> float | None:
            row = run_one(artifact, rt_name, size, scale, dataclasses.replace(cfg, runs=cfg.large_runs))
            status = row.get("error") or f"p50 {row['p50_ms']:.1f} ms"
            print(f"[bench] ladder {target:g} ms {rel:38s} {rt_name:8s} {size[0]}x{size[1]}: {status}", flush=True)
            return row.get("p50_ms")

        found.append({"artifact": rel, "runtime": rt_name, **climb(time_at, start, target, scale)})
    return found


def own_quality(run: Path, pairs: list[tuple[Path, str]], scale: int, threads: int,
                extra_eval: list[str] | None = None, extras: Sequence[tuple[Path, str]] = ()) -> dict[str, dict]:
    """PSNR-Y on the embedded evaluation split and ``extra_eval`` of every (artifact, runtime) the
    artifact's sidecar does not hold for, keyed ``artifact|runtime``: a runtime that computes in a
    precision of its own (bf16, FP16 inference), a quantized graph on any runtime of ``extras``
    (OpenVINO running ORT's INT8 QDQ graph uses its own integer kernels, whose rounding differs from
    ORT's, which scored the sidecar), and a file its runtime's ``host_check`` says may compute otherwise
    on this host than where it was scored (full-range INT8 weights without VNNI)."""
    sets = None
    out = {}
    for artifact, name in pairs:
        rt = runtime(name)
        if rt.own_numerics or ((artifact, name) in extras and not is_float_graph(artifact)) or (
                rt.host_check is not None and rt.host_check(artifact)):
            sets = sets or eval_sets(scale, extra_eval)
            fn = open_artifact(artifact, name, threads, scale).run
            out[f"{artifact.relative_to(run)}|{name}"] = quality(fn, sets, scale)
            print(f"[bench] {artifact.relative_to(run)} on {name}: PSNR-Y embedded "
                  f"{out[f'{artifact.relative_to(run)}|{name}']['embedded']['psnr_y_db']:.3f} dB", flush=True)
    return out
