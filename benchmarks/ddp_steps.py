"""Training throughput: 1 process x T threads against N torchrun processes x T/N threads.

Each configuration runs ``compress.core.train.fit`` on EDSR-baseline x2 with the default training
recipe's global batch (16 patches of 48x48 LR) in its own process group, after warm-up steps, and
prints steps per second side by side with the CPU and its features::

    python -m benchmarks.ddp_steps --steps 12 --warmup 3 --threads 2 --nproc 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.child import ChildFailed, run_child
from compress.core.errors import error_line


def _worker(steps: int, warmup: int, batch: int, patch: int, precision: str, out: Path) -> None:
    from compress.core.archs import EDSR, EDSRConfig
    from compress.core.distributed import ranks, share_of_batch
    from compress.core.train import fit
    from compress.core.train_config import TrainConfig

    model = EDSR(EDSRConfig(scale=2))
    rng = np.random.default_rng(ranks().rank)
    local = share_of_batch(batch)

    def batches():  # noqa: ANN202
        while True:
            yield (rng.random((local, 3, patch, patch), dtype=np.float32),
                   rng.random((local, 3, 2 * patch, 2 * patch), dtype=np.float32))

    marks: dict[int, float] = {}

    def clock(step: int) -> None:  # after each optimizer step (1, 2, ...)
        if step in (warmup, warmup + steps):
            marks[step] = time.perf_counter()

    # one run, timed from the end of the warm-up steps: the DDP wrapper's first-step bucket rebuild, the
    # optimizer's state and the progress bar are set up inside the warm-up, not the timed steps
    fit(model, batches(), TrainConfig(steps=warmup + steps, precision=precision), 2, hooks=[clock])
    seconds = marks[warmup + steps] - marks[warmup]
    if ranks().rank == 0:
        out.write_text(json.dumps({"steps_per_s": steps / seconds, "world": ranks().world}))


def _launch(nproc: int, threads: int, args: argparse.Namespace, out: Path) -> dict:
    worker = ["--worker", str(out), f"--steps={args.steps}", f"--warmup={args.warmup}", f"--batch={args.batch}",
              f"--patch={args.patch}", f"--precision={args.precision}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    if nproc == 1:
        cmd = [sys.executable, "-m", "benchmarks.ddp_steps", *worker]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "benchmarks.ddp_steps", *worker]
    run_child(cmd, f"benchmarks.ddp_steps, {nproc} process{'es' if nproc > 1 else ''}", env=env)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    from compress.core import options as opt

    ap = opt.Parser(prog="python -m benchmarks.ddp_steps", description=__doc__.splitlines()[0])
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=opt.int_range("steps", 1, 10000), default=12, help="timed steps")
    ap.add_argument("--warmup", type=opt.bench_warmup, default=3)
    ap.add_argument("--threads", type=opt.bench_threads, default=2, help="threads in all")
    ap.add_argument("--nproc", type=opt.int_range("nproc", 1, 256), default=2, help="torchrun processes")
    ap.add_argument("--batch", type=opt.positive_int, default=16, help="global batch")
    ap.add_argument("--patch", type=opt.positive_int, default=48)
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    args = ap.parse_args(argv)
    if args.worker:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        _worker(args.steps, args.warmup, args.batch, args.patch, args.precision, args.worker)
        return 0
    from compress.core.cpu import host_cpu
    from compress.core.train_config import resolve_precision

    if args.batch % args.nproc:
        ap.error(f"argument --batch: the global batch {args.batch} does not split over {args.nproc} processes")
    with tempfile.TemporaryDirectory(prefix="ddp-steps-") as tmp:  # two runs at once do not share result files
        try:
            one = _launch(1, args.threads, args, Path(tmp) / "one.json")
            many = _launch(args.nproc, max(args.threads // args.nproc, 1), args, Path(tmp) / "many.json")
        except ChildFailed as exc:
            print(error_line(f"error: {exc}"), file=sys.stderr)
            return 2
    print(f"# EDSR-baseline x2, global batch {args.batch} x {args.patch}x{args.patch} LR, "
          f"{resolve_precision(args.precision, 'cpu')}, {args.steps} steps after {args.warmup}, {host_cpu().describe()}")
    print(f"1 process x {args.threads} threads: {one['steps_per_s']:.3f} steps/s")
    print(f"{args.nproc} processes x {max(args.threads // args.nproc, 1)} thread(s) (DDP, Gloo): "
          f"{many['steps_per_s']:.3f} steps/s ({many['steps_per_s'] / one['steps_per_s']:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
