"""Argument parsing for ``python -m compress``; every command reports bad input without a traceback."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import errno
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from compress.core.distributed import is_writer, rank0_value, ranks, release_process_group
from compress.core.errors import InputError, Terminated, error_line, first_line
from compress.core.files import read_stage_seconds, record_stage_seconds
from compress.core import options as opt
from compress.pipeline.deploy_cli import add_deploy
from compress.pipeline.eval_cli import add_eval
from compress.pipeline.contract import STAGES, inputs
from compress.pipeline.defaults import SHIPPED_ARCHS

if TYPE_CHECKING:
    from compress.pipeline.trainer import TrainRecipe

TIMED_STAGES = ("model", "prune", "quantize", "export", "bench")  # wall times go to <run>/stage_seconds.json
STAGE_NAMES = tuple(st.name for st in STAGES)


def _train_overrides(recipe: TrainRecipe, args: argparse.Namespace) -> TrainRecipe:
    """``recipe`` with the command line's ``--precision``, ``--max-minutes``, ``--lr``, ``--keep-best`` and
    ``--seed`` (the patch stream's and the optimizer's) in place of its own."""
    from compress.core.recipe import with_seed

    train = {k: v for k, v in (("precision", args.precision), ("max_minutes", args.max_minutes), ("lr", args.lr),
                               ("keep_best", args.keep_best)) if v is not None}
    if train:
        try:
            recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, **train))
        except ValueError as exc:  # e.g. --keep-best on a recipe that validates only at the end
            raise InputError(f"{args.recipe}: {exc}") from None
    return recipe if args.seed is None else with_seed(recipe, args.seed)


def _cmd_train(args: argparse.Namespace) -> int:
    from compress.core.recipe import load_recipe
    from compress.pipeline.trainer import TrainRecipe, dumps, train_model

    overrides = {"scale": args.scale, "data": args.data, "init_from": args.init_from}
    recipe = _train_overrides(load_recipe(TrainRecipe, args.recipe, overrides), args)
    record = train_model(recipe, Path(args.out), device=args.device, recipe_file=str(args.recipe),
                         continue_from=args.continue_from)
    print(dumps({k: record[k] for k in ("stage", "precision", "steps_done", "train_seconds", "val_psnr_y_db",
                                        "kept_step", "continued_from", "written") if k in record}))
    if not record["written"] and record.get("val_psnr_y_db"):
        print(f"kept {args.continue_from}: validation PSNR-Y {record['final_val_psnr_y_db']:.3f} dB is not better "
              f"than its {record['continued_from']['val_psnr_y_db']:.3f} dB; {args.out} not written", file=sys.stderr)
    return 0


def _cmd_model(args: argparse.Namespace) -> int:
    from compress.pipeline.model_stage import stage_model

    print(json.dumps(stage_model(args.model or None, args.scale, Path(args.run), args.eval or None, args.arch,
                                 args.expect_scale), indent=2, default=str))
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    from compress.core.recipe import load_recipe, with_seed
    from compress.pipeline.contract import baseline
    from compress.pipeline.prune_stage import run_prune
    from pruning.channel import check_widths
    from pruning.recipe import PruneRecipe

    recipes = {}  # every recipe is read before the first one runs; each writes 10-prune/<its stem>/
    model = baseline(Path(args.run))[1].model
    for path in args.recipe:
        if Path(path).stem in recipes:
            raise InputError(f"{path}: another --recipe is also named {Path(path).stem!r}; "
                             "both would write 10-prune/" + Path(path).stem)
        recipe = load_recipe(PruneRecipe, path, {"data": args.data})
        recipes[Path(path).stem] = recipe = recipe if args.seed is None else with_seed(recipe, args.seed)
        if recipe.method == "channel":
            try:
                check_widths(model, recipe.round_to, recipe.schedule.final_sparsity, recipe.inner_final_sparsity,
                             recipe.upsample_final_sparsity, global_pruning=recipe.scope != "layer")
            except ValueError as err:
                raise InputError(f"{path}: {err}") from None
    for name, recipe in recipes.items():
        print(json.dumps(run_prune(Path(args.run), recipe, name, args.eval or None), indent=2, default=str))
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    from compress.core.recipe import load_recipe, with_seed
    from quantization.recipe import QuantRecipe
    from compress.core.checkpoint import load_checkpoint
    from compress.pipeline.quantize_stage import auto_sources, checked_images, run_quantize, source_checkpoint

    recipe = load_recipe(QuantRecipe, args.recipe, {"data": args.data})
    pruned = load_recipe(QuantRecipe, args.pruned_recipe, {"data": args.data}) if args.pruned_recipe else recipe
    if args.seed is not None:
        recipe, pruned = with_seed(recipe, args.seed), with_seed(pruned, args.seed)
    sources = [s for name in (args.source or ["model"]) for s in (auto_sources(Path(args.run)) if name == "auto" else [name])]
    for source in sources:  # every source and image folder is checked before the first source runs
        scale = load_checkpoint(source_checkpoint(Path(args.run), source)).scale
        checked_images(pruned if source.startswith("prune/") else recipe, scale)
    for source in sources:
        chosen = pruned if source.startswith("prune/") else recipe
        print(json.dumps(run_quantize(Path(args.run), chosen, source, args.eval or None), indent=2, default=str))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from compress.pipeline.bench_stage import BenchConfig, run_bench
    from compress.pipeline.contract import baseline

    _, loaded = baseline(Path(args.run))
    sizes = tuple(tuple(int(v) for v in s.split("x")) if s != "1080p" else None for s in args.sizes)
    cfg = BenchConfig(sizes=sizes, threads=args.threads, runs=args.runs, large_runs=min(args.runs, 3), large=args.large,
                      ladder_targets_ms=tuple(dict.fromkeys(args.ladder)))  # a target given twice is laddered once
    print(run_bench(Path(args.run), loaded.scale, cfg, args.eval))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from compress.pipeline.report import write_report

    path = write_report(Path(args.run))
    print(path.read_text())
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from compress.pipeline.export_stage import stage_export

    print(json.dumps(stage_export(Path(args.run), not args.no_tflite, args.eval or None), indent=2, default=str))
    return 0


def _cmd_bars(args: argparse.Namespace) -> int:
    from compress.pipeline.bars import plan_named
    from compress.pipeline.bars_run import Campaign, dry_run, run_bars

    def absolute(path: str | None) -> str | None:  # the stages run in the repository, not in the caller's folder
        return str(Path(path).resolve()) if path and path != "default" else path

    campaign = Campaign(plan_named(args.plan), Path(args.out).resolve(), absolute(args.model) or "",
                        tuple(str(absolute(e)) for e in args.eval), absolute(args.data), tuple(args.only))
    if args.dry_run:
        print("\n".join(dry_run(campaign)))
        return 0
    print(run_bars(campaign).read_text())
    return 0


def _add_tools(sub: argparse._SubParsersAction) -> None:
    add_eval(sub)

    s = sub.add_parser("train", help="train a model from HR images per a TOML recipe")
    s.add_argument("--recipe", required=True)
    s.add_argument("--out", required=True, type=opt.safetensors_out, help="output .safetensors")
    s.add_argument("--scale", type=opt.scale, default=None, help="override the recipe's scale")
    s.add_argument("--data", default=None, help="override the recipe's data folder")
    s.add_argument("--init-from", default=None, help="checkpoint whose matching tensors initialise the model")
    s.add_argument("--continue-from", default=None,
                   help="warm-start every tensor from this checkpoint; --out is written only if it validates better")
    s.add_argument("--precision", choices=["auto", "bf16", "fp32"], default=None,
                   help="override the recipe's train.precision (auto: bf16 autocast where the CPU has AMX/AVX512-BF16)")
    s.add_argument("--max-minutes", type=opt.positive_float, default=None, help="override the recipe's wall-time budget")
    s.add_argument("--lr", type=opt.learning_rate, default=None, help="override the recipe's peak learning rate")
    s.add_argument("--seed", type=opt.seed, default=None,
                   help="override the recipe's seeds (patch sampling and training)")
    s.add_argument("--keep-best", action="store_const", const=True, default=None,
                   help="end with the weights of the best validation check, not the last step's (train.keep_best)")
    s.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("bars", help="re-measure every compression bar of a shipped model (README's results table)")
    s.add_argument("--plan", required=True, help="edsr-x2, edsr-x4 or rrdb-x4 (compress/pipeline/bars.py)")
    s.add_argument("--out", required=True, type=opt.folder, help="campaign folder (rerun to resume)")
    s.add_argument("--model", default="", help="checkpoint (default: the shipped model of the plan)")
    s.add_argument("--eval", action="append", default=[], help="extra evaluation folder(s), e.g. Set5 and Set14")
    s.add_argument("--data", default=None, help="training images for fine-tuning (default: embedded set)")
    s.add_argument("--only", action="append", default=[], help="run only this bar (repeatable; see --dry-run)")
    s.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    s.set_defaults(func=_cmd_bars)


def _add_stages(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("model", help="stage 1: take a checkpoint into a run as its FP32 baseline")
    s.add_argument("--model", default="", help="checkpoint (default: the shipped default for --arch and --scale)")
    s.add_argument("--arch", choices=SHIPPED_ARCHS, default="edsr", help="which shipped default (without --model)")
    s.add_argument("--scale", type=opt.scale, default=None)
    s.add_argument("--expect-scale", type=opt.scale, default=None,
                   help="without --scale: the scale the run is for (make's default SCALE); another is refused")
    s.add_argument("--run", type=opt.folder, required=True, help="run folder, e.g. artifacts/run-x2")
    s.add_argument("--eval", action="append", default=[], help="extra evaluation folder(s)")
    s.set_defaults(func=_cmd_model)

    s = sub.add_parser("prune", help="stage 2: AGP unstructured or channel pruning of a run's baseline")
    s.add_argument("--run", type=opt.folder, required=True)
    s.add_argument("--recipe", action="append", required=True, help="prune recipe TOML (repeatable)")
    s.add_argument("--data", default=None, help="training images for fine-tuning (default: embedded set)")
    s.add_argument("--seed", type=opt.seed, default=None,
                   help="override every seed of the recipe (patch sampling and fine-tuning): a seed spread")
    s.add_argument("--eval", action="append", default=[], help="extra evaluation folder(s)")
    s.set_defaults(func=_cmd_prune)

    s = sub.add_parser("quantize", help="stage 3: INT8 PTQ (ORT QDQ), mixed precision and QAT")
    s.add_argument("--run", type=opt.folder, required=True)
    s.add_argument("--recipe", required=True, help="quantize recipe TOML")
    s.add_argument("--source", action="append", default=[], help="'model' (default), 'prune/<name>', or 'auto' (model and every channel-pruned model; repeatable)")
    s.add_argument("--pruned-recipe", default=None, help="recipe for the pruned sources (default: --recipe)")
    s.add_argument("--data", default=None, help="training images for QAT (default: embedded set)")
    s.add_argument("--seed", type=opt.seed, default=None,
                   help="override every seed of the recipe (calibration patches, QAT patches and training; "
                        "ORT's and tfmot's QAT then draw the same patches)")
    s.add_argument("--eval", action="append", default=[], help="extra evaluation folder(s)")
    s.set_defaults(func=_cmd_quantize)

    s = sub.add_parser("export", help="stage 4: FP32 ONNX, OpenVINO IR and TFLite (FP32/FP16/INT8) exports with parity checks")
    s.add_argument("--run", type=opt.folder, required=True)
    s.add_argument("--no-tflite", action="store_true", help="ONNX and OpenVINO IR only")
    s.add_argument("--eval", action="append", default=[], help="extra evaluation folder(s)")
    s.set_defaults(func=_cmd_export)

    s = sub.add_parser("bench", help="stage 5: latency of every artifact, each configuration in its own process")
    s.add_argument("--run", type=opt.folder, required=True)
    s.add_argument("--sizes", nargs="+", type=opt.lr_size, default=["128x128", "256x256", "1080p"],
                   help="LR HxW sizes, or 1080p")
    s.add_argument("--threads", type=opt.bench_threads, default=2)
    s.add_argument("--runs", type=opt.bench_runs, default=10)
    s.add_argument("--large", choices=("pareto", "all"), default="pareto",
                   help="which artifacts to time at sizes over 0.1 LR MP: the FP32 reference and the Pareto front, or all")
    s.add_argument("--ladder", nargs="*", type=opt.positive_float, default=[300.0, 1000.0], metavar="MS",
                   help="latency targets (ms) whose largest admitted output is measured by a ladder of sizes "
                        "(default 300 1000; add 10000 for the print tier; none: no ladder)")
    s.add_argument("--eval", action="append", default=[],
                   help="extra evaluation folder(s) for the rows scored here: bf16 / FP16 runtimes, and "
                        "quantized graphs on a runtime other than the one that scored them")
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("report", help="stage 6: compression report (md, json, csv, html)")
    s.add_argument("--run", type=opt.folder, required=True)
    s.set_defaults(func=_cmd_report)


def build_parser() -> argparse.ArgumentParser:
    p = opt.Parser(prog="python -m compress", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    sub = p.add_subparsers(dest="command", required=True)
    _add_tools(sub)
    _add_stages(sub)
    add_deploy(sub)
    for sp in sub.choices.values():
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an internal error")
    return p


INTERNAL_ERROR = 3  # exit status of an unexpected failure (bad input is 2)
OOM_MESSAGES = ("can't allocate memory", "out of memory", "failed to allocate")  # torch's CPU / CUDA, ORT


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation that failed: Python's, the system's (ENOMEM), or a library's said in
    its message (torch raises RuntimeError, ONNX Runtime its own exception types)."""
    if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM):
        return True
    return isinstance(exc, Exception) and any(m in str(exc).lower() for m in OOM_MESSAGES)


def private_run(run: Path) -> Path:
    """Under torchrun, a rank other than 0 works on a private copy of the run folder: it computes what
    rank 0 computes (same weights, same data) and takes part in every training step, but only rank 0
    writes the real run folder, and no two processes touch one file."""
    scratch = Path(tempfile.mkdtemp(prefix=f"srcompress-rank{ranks().rank}-"))
    atexit.register(shutil.rmtree, scratch, True)
    shutil.copytree(run, scratch / "run", symlinks=True)
    return scratch / "run"


def _run(args: argparse.Namespace) -> int:
    if args.command in STAGE_NAMES:
        inputs(Path(args.run), args.command)  # refuse before writing anything
        if args.command in ("prune", "quantize") and ranks().distributed:
            if not is_writer():
                args.run = str(private_run(Path(args.run)))
            rank0_value(None)  # a barrier: rank 0 changes nothing before every other rank has its copy
        read_stage_seconds(args.run)  # a corrupt file is reported now, not after the stage has written
    start = time.perf_counter()
    code = int(args.func(args) or 0)
    if args.command in TIMED_STAGES and code == 0:
        record_stage_seconds(args.run, args.command, time.perf_counter() - start)
    return code


def warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 line: str | None = None) -> str:
    """A warning as the CLI prints it: ``warning: <message>``, one line (no source location)."""
    return error_line(f"warning: {message}") + "\n"


def _raise_terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process, unwound or not
    raise Terminated


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`~compress.core.errors.Terminated`; the earlier handler is back
    after it. Only the main thread may set a handler: elsewhere (a command run from a worker thread), or
    where SIGTERM is ignored, the block changes nothing."""
    earlier = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or earlier == signal.SIG_IGN:
        yield  # a process started with SIGTERM ignored (``trap '' TERM``) keeps it ignored, as Python does SIGINT
        return
    try:
        signal.signal(signal.SIGTERM, _raise_terminated)
        yield
    finally:
        signal.signal(signal.SIGTERM, earlier)


def main(argv: list[str] | None = None) -> int:
    """Run one command: bad input ends in ``error: <file>: <problem>`` and exit 2; anything unexpected
    in one ``error:`` line and exit 3, with the traceback only under ``--debug``."""
    for stream in (sys.stdout, sys.stderr):  # a file name with undecodable bytes must not end the run
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("default", category=UserWarning, module="compress")
    if not is_writer():  # under torchrun, rank 0 alone reports; every rank still says its errors
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    code = INTERNAL_ERROR
    try:
        with sigterm_as_interrupt():
            code = _run(args)
        return code
    except InputError as exc:
        print(f"error: {error_line(str(exc))}", file=sys.stderr)
        code = 2
        return code
    except Terminated:
        print("error: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the boundary: one line, not a traceback
        if args.debug:
            raise
        if isinstance(exc, OSError) and exc.filename is not None:  # a path it was given cannot be read or written
            print(error_line(f"error: {exc.filename}: {exc.strerror or exc}"), file=sys.stderr)
            code = 2
            return code
        if out_of_memory(exc):  # what was asked for is over this machine's memory: say which knobs lower it
            print(error_line(f"error: {args.command}: out of memory ({first_line(exc)}); lower the batch size, "
                             "patch or tile size, or the model's width"), file=sys.stderr)
            code = 2
            return code
        what = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(error_line(f"error: {args.command}: internal error {type(exc).__name__}: {what} (rerun with --debug "
                         "for the traceback)"), file=sys.stderr)
        return INTERNAL_ERROR
    finally:  # under torchrun: every rank leaves the Gloo / NCCL group before the interpreter exits
        release_process_group(wait=code == 0)
