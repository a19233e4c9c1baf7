"""The deployment commands: ``upscale``, ``serve`` and ``interpolate``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from compress.core.errors import InputError
from compress.core import options as opt
from compress.pipeline.choose import TARGETS_MS


def _cmd_upscale(args: argparse.Namespace) -> int:
    from compress.pipeline.upscale_cmd import UpscaleOptions, upscale_files

    if args.artifact and args.run:
        raise InputError("give --artifact or --run, not both")
    opts = UpscaleOptions(out=Path(args.out), artifact=Path(args.artifact) if args.artifact else None,
                          run=Path(args.run) if args.run else None, target=args.target, max_loss_db=args.max_loss_db,
                          scale=args.scale, tile=args.tile, threads=args.threads, fmt=args.format, quality=args.quality)
    upscale_files(args.inputs, opts)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from compress.pipeline.http import serve
    from compress.pipeline.service import ServeConfig

    cfg = ServeConfig(artifacts=tuple(Path(a) for a in args.artifact), run=Path(args.run) if args.run else None,
                      blend=tuple(Path(b) for b in args.blend), workers=args.workers, queue=args.queue,
                      max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels, threads=args.threads,
                      upload_timeout_s=args.upload_timeout_s, header_timeout_s=args.header_timeout_s)
    serve(cfg, args.host, args.port)
    return 0


def _cmd_interpolate(args: argparse.Namespace) -> int:
    from compress.core.checkpoint import interpolate, load_checkpoint, save_checkpoint
    from compress.core.files import removed_on_failure, source_block, write_sidecar

    out = Path(args.out)
    for given in (args.a, args.b):
        if Path(given).resolve() == out.resolve():
            raise InputError(f"{out}: is one of the inputs, and would be overwritten; choose another --out")
    a, b = load_checkpoint(args.a), load_checkpoint(args.b)
    model = interpolate(a, b, args.alpha)
    sources = source_block(args.a), source_block(args.b)  # hashed before anything is written
    out = save_checkpoint(model, a.config, out, metadata={"stage": "interpolate", "alpha": str(args.alpha)})
    with removed_on_failure(out):
        write_sidecar(out, {"stage": "interpolate", "method": "network interpolation (ESRGAN)", "alpha": args.alpha,
                            "b": sources[1]}, source=sources[0])
    print(json.dumps({"artifact": str(out), "alpha": args.alpha, "a": args.a, "b": args.b}))
    return 0


def add_deploy(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("upscale", help="upscale images or folders with a pipeline artifact")
    s.add_argument("inputs", nargs="+", help="image files and/or folders")
    s.add_argument("--out", required=True, type=opt.folder, help="output folder")
    s.add_argument("--artifact", help="checkpoint, .onnx, OpenVINO .xml, .tflite (any runtime the project benchmarks)")
    s.add_argument("--run", type=opt.folder, help="pick from this run's report the artifact meeting --target with the least loss")
    s.add_argument("--target", choices=list(TARGETS_MS), default="1000ms")
    s.add_argument("--max-loss-db", type=opt.positive_float, default=0.1)
    s.add_argument("--scale", type=opt.scale, help="without --artifact / --run: the shipped default for this scale")
    s.add_argument("--tile", type=opt.tile, default=0, help="LR tile side (0: automatic)")
    s.add_argument("--threads", type=opt.threads, default=0)
    s.add_argument("--format", choices=["png", "jpeg", "webp"], default="png")
    s.add_argument("--quality", type=opt.quality, default=95, help="JPEG / WebP quality, 1..100")
    s.set_defaults(func=_cmd_upscale)

    s = sub.add_parser("serve", help="HTTP service and web page (FastAPI + uvicorn)")
    s.add_argument("--artifact", action="append", default=[], help="artifact to serve (repeatable; one per scale)")
    s.add_argument("--run", type=opt.folder, help="serve the artifacts of this run's report, chosen per tier")
    s.add_argument("--blend", action="append", default=[],
                   help="with one --artifact: a second checkpoint of the same architecture for the alpha parameter")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=opt.port, default=8000)
    s.add_argument("--workers", type=opt.workers, default=1, help="inference threads (1..64)")
    s.add_argument("--queue", type=opt.queue, default=4, help="requests waiting beyond the workers before 503")
    s.add_argument("--max-upload-mb", type=opt.float_range("max-upload-mb", opt.MAX_UPLOAD_MB), default=20.0,
                   help=f"larger request bodies get 413 (at most {opt.MAX_UPLOAD_MB})")
    s.add_argument("--max-pixels", type=opt.int_range("max-pixels", 1, opt.MAX_PIXELS), default=8_000_000,
                   help="decoded input pixels (larger images get 413)")
    s.add_argument("--threads", type=opt.threads, default=0, help="runtime threads")
    s.add_argument("--upload-timeout-s", type=opt.float_range("upload-timeout-s", opt.MAX_TIMEOUT_S), default=30.0,
                   help="an upload not received within this time gets 408 and frees its slot")
    s.add_argument("--header-timeout-s", type=opt.float_range("header-timeout-s", opt.MAX_TIMEOUT_S), default=10.0,
                   help="a connection whose request headers are not complete within this time is closed")
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser("interpolate", help="ESRGAN network interpolation of two checkpoints")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--alpha", type=opt.unit_float, required=True, help="0 gives A, 1 gives B")
    s.add_argument("--out", required=True, type=opt.safetensors_out, help="output .safetensors")
    s.set_defaults(func=_cmd_interpolate)
