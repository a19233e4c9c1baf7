"""Seconds per training step of EDSR-baseline (or a given size) per precision and memory layout.

Variants: FP32 in NCHW, FP32 in channels_last and bf16 autocast in channels_last (the training loop's
layout on the CPU). Each runs in its own process (``--variant`` given) or, without it, every variant
is run side by side as subprocesses and a table is printed. Conditions (CPU and features, threads,
batch and patch size) are printed with the figures::

    python -m benchmarks.train_step --steps 12 --warmup 3 --threads 2
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from benchmarks.child import ChildFailed, run_child
from compress.core.errors import error_line


VARIANTS = {"fp32-nchw": ("fp32", False), "fp32-cl": ("fp32", True), "bf16-cl": ("bf16", True)}


def _one(variant: str, steps: int, warmup: int, batch: int, patch: int, scale: int) -> dict[str, object]:
    from compress.core.archs import EDSR, EDSRConfig

    model = EDSR(EDSRConfig(scale=scale))
    precision, channels_last = VARIANTS[variant]
    bf16 = precision == "bf16"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    lr = torch.rand(batch, 3, patch, patch, generator=gen).contiguous(memory_format=fmt)
    hr = torch.rand(batch, 3, patch * scale, patch * scale, generator=gen)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(lr)
        loss = torch.nn.functional.l1_loss(out.float(), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"variant": variant, "median_s": statistics.median(times), "min_s": min(times)}


def main(argv: list[str] | None = None) -> int:
    from compress.core import options as opt
    from compress.core.cpu import host_cpu

    ap = opt.Parser(prog="python -m benchmarks.train_step", description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=list(VARIANTS), help="run one variant in this process")
    ap.add_argument("--steps", type=opt.int_range("steps", 1, 10000), default=10, help="timed steps")
    ap.add_argument("--warmup", type=opt.bench_warmup, default=3)
    ap.add_argument("--threads", type=opt.bench_threads, default=2)
    ap.add_argument("--batch", type=opt.positive_int, default=16)
    ap.add_argument("--patch", type=opt.positive_int, default=48, help="LR patch side")
    ap.add_argument("--scale", type=opt.scale, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(_one(args.variant, args.steps, args.warmup, args.batch, args.patch, args.scale)))
        return 0
    rows = []
    for variant in VARIANTS:
        cmd = [sys.executable, "-m", "benchmarks.train_step", "--variant", variant] + [
            f"--{k}={v}" for k, v in vars(args).items() if k != "variant"]
        try:
            rows.append(json.loads(run_child(cmd, f"benchmarks.train_step --variant {variant}")))
        except ChildFailed as exc:
            print(error_line(f"error: {exc}"), file=sys.stderr)
            return 2
    print(f"# EDSR-baseline x{args.scale} training step, batch {args.batch} x {args.patch}x{args.patch} LR, "
          f"{args.threads} threads, torch {torch.__version__}, {host_cpu().describe()}")
    for r in rows:
        print(f"{r['variant']:9s} median {r['median_s']:.3f} s  min {r['min_s']:.3f} s  "
              f"({rows[0]['median_s'] / r['median_s']:.2f}x FP32 NCHW)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
