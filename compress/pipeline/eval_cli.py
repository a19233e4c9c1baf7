"""The read-only commands: ``inspect`` (what a checkpoint is), ``history`` (how it was trained) and ``eval``
(its PSNR-Y / SSIM-Y)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from compress.core import options as opt
from compress.core.default_data import NAMED_SETS, named_set
from compress.core.errors import InputError


def _cmd_inspect(args: argparse.Namespace) -> int:
    from compress.core.checkpoint import load_checkpoint
    from export.runtimes import suffixes

    suffix = Path(args.checkpoint).suffix.lower()
    if suffix in suffixes() and suffix not in (".pth", ".pt", ".safetensors"):
        raise InputError(f"{args.checkpoint}: inspect reads checkpoints (.pth, .pt, .safetensors); for a {suffix} "
                         "artifact use eval --model")
    info = load_checkpoint(args.checkpoint, args.scale).describe()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key in ("arch", "scale", "num_feat", "num_block", "num_grow_ch", "params", "layout"):
            if key in info:  # SRCNN has no blocks; only RRDB has a growth width
                print(f"{key:10s} {info[key]}")
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    from compress.pipeline.history import history_markdown, read_history

    runs = read_history(args.model)
    if args.json:
        print(json.dumps([dataclasses.asdict(run) for run in runs], indent=2))
    else:
        print(history_markdown(runs), end="")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from compress.core.data import load_pairs
    from compress.core.evaluate import bicubic_upscaler, evaluate
    from compress.core.infer import TileConfig
    from export.runtimes import open_artifact

    if args.run:
        if args.model:
            raise InputError("give --model or --run, not both")
        return _eval_run(args)
    if not args.model or not args.scale:
        raise InputError("eval needs --model and --scale (or --run)")
    pairs = load_pairs(_eval_images(args.data), args.scale)
    if args.model == "bicubic":
        fn, label = bicubic_upscaler(args.scale), "bicubic"
    else:
        fn, label = open_artifact(args.model, None, args.threads, args.scale, untrusted=True).run, args.model
    result = evaluate(fn, pairs, args.scale, TileConfig(tile=args.tile))
    out = {"model": label, "data": str(args.data), **result.to_dict()}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for img in out["images"]:
            print(f"{img['name']:20s} PSNR-Y {img['psnr_y_db']:.3f} dB  SSIM-Y {img['ssim_y']:.4f}  "
                  f"mean Y error {img['mean_error_y']:+.2f}")
        print(f"{'mean':20s} PSNR-Y {out['psnr_y_db']:.3f} dB  SSIM-Y {out['ssim_y']:.4f}  "
              f"mean Y error {out['mean_error_y']:+.2f}  ({out['convention']}; Y error in 8-bit levels, SR - HR)")
    return 0


def _eval_images(data: str) -> list[Path]:
    """The images of the named set ``data`` (:data:`~compress.core.default_data.NAMED_SETS`), else of
    the folder ``data``."""
    from compress.core.data import list_images

    named = named_set(data)
    return named if named is not None else list_images(data)


def _eval_run(args: argparse.Namespace) -> int:
    """PSNR-Y of every artifact of a run on ``--data``, and dB lost against the run's FP32 model."""
    from compress.pipeline.bench_stage import discover
    from compress.core.data import load_pairs
    from compress.core.evaluate import evaluate
    from compress.core.infer import TileConfig
    from compress.pipeline.contract import baseline
    from export.runtimes import open_artifact

    run = Path(args.run)
    _, loaded = baseline(run)
    if args.scale is not None and args.scale != loaded.scale:
        raise InputError(f"{run}: its model is x{loaded.scale}, and --scale asks for x{args.scale}")
    pairs = load_pairs(_eval_images(args.data), loaded.scale)
    rows, ref = [], None
    for artifact, rt in discover(run):  # the baseline checkpoint comes first: it is the reference
        psnr = evaluate(open_artifact(artifact, rt, args.threads, loaded.scale).run, pairs, loaded.scale,
                        TileConfig(tile=args.tile)).psnr_y_db
        ref = psnr if ref is None else ref
        rows.append({"artifact": str(artifact.relative_to(run)), "psnr_y_db": round(psnr, 4),
                     "db_lost": round(ref - psnr, 4)})
        if not args.json:
            print(f"{rows[-1]['artifact']:50s} PSNR-Y {psnr:.3f} dB  lost {ref - psnr:+.3f} dB", flush=True)
    if args.json:
        print(json.dumps({"run": str(run), "data": str(args.data), "scale": loaded.scale, "rows": rows}, indent=2))
    return 0


def add_eval(sub: argparse._SubParsersAction) -> None:
    """Register ``inspect``, ``history`` and ``eval``."""
    s = sub.add_parser("inspect", help="detect architecture, scale and hyperparameters of a checkpoint")
    s.add_argument("checkpoint")
    s.add_argument("--scale", type=opt.scale, default=None, help="required for SRCNN checkpoints")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_inspect)

    s = sub.add_parser("history", help="the training runs a checkpoint's sidecar records (a model card's table)")
    s.add_argument("--model", required=True, type=opt.existing_file, help="a checkpoint written by `compress train`")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_history)

    s = sub.add_parser("eval", help="PSNR-Y / SSIM-Y of a checkpoint, ONNX/TFLite artifact or bicubic")
    s.add_argument("--model", help="checkpoint, .onnx, OpenVINO .xml, .tflite, or 'bicubic'")
    s.add_argument("--run", type=opt.folder, help="instead of --model: every artifact of this run folder, with dB lost against its FP32 model")
    s.add_argument("--data", required=True, type=opt.folder, help=f"folder of HR images, or a named set: {' or '.join(NAMED_SETS)} "
                   "(the embedded evaluation split; the default data's checkpoint-choosing images); "
                   "./embedded for a folder of that name")
    s.add_argument("--scale", type=opt.scale, help="required with --model (with --run: must be the run's)")
    s.add_argument("--tile", type=opt.tile, default=0,
                   help="LR tile size for tiled inference (0: whole image, tiled automatically when large)")
    s.add_argument("--threads", type=opt.threads, default=0, help="runtime threads (0: library default)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_eval)
