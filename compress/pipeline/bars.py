"""The compression bars, the recipe that meets each on each shipped model, and a runner that re-measures them.

README's "Results against the bars" is what this module prints. :data:`PLANS` declares, per shipped
model, every bar (the most dB it may lose, and for channel pruning how many MACs it must remove) with
the stage commands that meet it and the artifact they write. :func:`run_bars` runs each bar in a run
folder of its own (the baseline's ``00-model`` copied in, so bars never see each other's artifacts,
except a bar declared ``after`` another, which continues in that bar's folder), each stage command in
its own process, then reads the artifact's sidecar and judges it. A bar already run (its ``bar.json``
exists) is not run again, so an interrupted campaign resumes where it stopped.

Usage: ``python -m compress bars --plan edsr-x2 --out artifacts/bars-x2 --eval <Set5> --eval <Set14>``
(``make bars``), or ``--dry-run`` to list the commands.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from compress.core.cpu import host_cpu
from compress.core.errors import InputError
from compress.core.files import read_json_object, read_sidecar, write_json_atomic, write_text_atomic
from compress.pipeline.contract import path_of, stage_dir

REPO = Path(__file__).resolve().parents[2]
BASE = "base"
BAR_RECORD = "bar.json"


@dataclasses.dataclass(frozen=True)
class Step:
    """One stage command: ``python -m compress <stage> --run R --recipe RECIPE [--source SOURCE]``.

    Attributes:
        stage: ``prune`` or ``quantize``.
        recipe: recipe path, relative to the repository.
        source: quantize only: ``model`` or ``prune/<recipe stem>``.
    """

    stage: str
    recipe: str
    source: str = "model"

    def __post_init__(self) -> None:
        if self.stage not in ("prune", "quantize"):
            raise ValueError(f"Step.stage must be prune or quantize, got {self.stage!r}")
        if self.source != "model" and self.stage != "quantize":
            raise ValueError(f"Step.source applies to quantize only, got {self.source!r} for {self.stage}")

    def argv(self, run: Path, evals: Sequence[str], data: str | None) -> list[str]:
        """The command line, after ``python -m compress``."""
        args = [self.stage, "--run", str(run), "--recipe", self.recipe]  # relative to the repository, the cwd
        if self.stage == "quantize":
            args += ["--source", self.source]
        args += [a for e in evals for a in ("--eval", e)]
        return args + (["--data", data] if data else [])


@dataclasses.dataclass(frozen=True)
class Bar:
    """One bar and how it is met.

    Attributes:
        key: short name; the run folder under the campaign's output.
        label: the bar in words.
        max_loss_db: the most PSNR-Y it may lose on any evaluation set, against the dense FP32 model.
        steps: the stage commands, in order.
        artifact: the artifact judged, relative to the run folder.
        min_macs_cut: channel pruning: the least fraction of MACs at 256x256 it must remove (0: none).
        qat: judged also on the QAT's own verdict: it must beat its PTQ start (else no artifact is written).
        after: key of an earlier bar whose run folder this one continues in (its artifacts as inputs).
    """

    key: str
    label: str
    max_loss_db: float
    steps: tuple[Step, ...]
    artifact: str
    min_macs_cut: float = 0.0
    qat: bool = False
    after: str = ""

    def __post_init__(self) -> None:
        if not self.key.replace("_", "").isalnum() or self.key == BASE:
            raise ValueError(f"Bar.key must be a plain name other than {BASE!r}, got {self.key!r}")
        if not self.max_loss_db > 0:
            raise ValueError(f"Bar.max_loss_db must be > 0, got {self.max_loss_db}")
        if not 0 <= self.min_macs_cut < 1:
            raise ValueError(f"Bar.min_macs_cut must be in [0, 1), got {self.min_macs_cut}")
        if not self.steps:
            raise ValueError(f"Bar {self.key}: no steps")


@dataclasses.dataclass(frozen=True)
class Plan:
    """The bars of one shipped model.

    Attributes:
        name: ``<arch>-x<scale>``, the ``--plan`` value.
        arch: ``edsr`` or ``rrdb`` (the shipped default read without ``--model``).
        scale: upscaling factor.
        bars: in run order; a bar ``after`` another comes later.
    """

    name: str
    arch: str
    scale: int
    bars: tuple[Bar, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for bar in self.bars:
            if bar.key in seen:
                raise ValueError(f"plan {self.name}: bar {bar.key!r} twice")
            if bar.after and bar.after not in seen:
                raise ValueError(f"plan {self.name}: bar {bar.key!r} runs after {bar.after!r}, which is not before it")
            seen.add(bar.key)


def _prune(key: str, label: str, max_db: float, recipe: str, macs: float = 0.0) -> Bar:
    artifact = path_of(Path(), "pruned", Path(recipe).stem)
    return Bar(key, label, max_db, (Step("prune", f"pruning/recipes/{recipe}"),), artifact.as_posix(), min_macs_cut=macs)


def _quant(key: str, label: str, max_db: float, recipe: str, artifact: str, *, qat: bool = False, after: str = "",
           source: str = "model") -> Bar:
    folder = stage_dir(Path(), "quantize") / source.replace("/", "-")  # as the quantize stage names it
    return Bar(key, label, max_db, (Step("quantize", f"quantization/recipes/{recipe}", source),),
               (folder / artifact).as_posix(), qat=qat, after=after)


# Channel widths are multiples of 8, so a cut lands within a few points of its target; the README's
# tables judge the 30% bars at 29% and the 50% bars at 45% (the RRDB's trunk stays whole: -46.0%).
CUT_30, CUT_50 = 0.29, 0.45
NNCF, NNCF_QAT, PERCENTILE, ORT_QAT = "model_int8_nncf.xml", "model_int8_nncf_qat.xml", "model_int8_percentile.onnx", \
    "model_int8_qat.onnx"


def _plan(name: str, arch: str, scale: int, r: dict[str, str], best_ptq: str, qat_artifact: str,
          default_qat: str) -> Plan:
    """One model's bars; ``r`` names its recipe per bar."""
    ch50 = Path(r["channel50"]).stem
    return Plan(name, arch, scale, (
        _quant("qat", "QAT, never worse than its PTQ start", 0.03, r["qat"], qat_artifact, qat=True),
        _quant("ptq", "PTQ", 0.08, "ptq.toml", best_ptq),
        _prune("channel30", "channel, 30% fewer MACs", 0.05, r["channel30"], CUT_30),
        _prune("channel50", "channel, 50% fewer MACs", 0.15, r["channel50"], CUT_50),
        _quant("channel50_int8", "channel 50% + INT8", 0.2, "ptq.toml", best_ptq, after="channel50",
               source=f"prune/{ch50}"),
        _prune("unstructured50", "unstructured 50%", 0.03, r["unstructured50"]),
        _prune("default_channel", "make all channel default, 2x of the 50% bar", 0.30, r["default_channel"], CUT_50),
        _prune("default_unstructured", "make all unstructured default, 2x", 0.06, "unstructured.toml"),
        _quant("default_quantize", "make all quantize default, 2x of the QAT bar", 0.06, "default.toml", default_qat,
               qat=True),
    ))


#: Every plan: the one explicit list ``--plan`` chooses from.
PLANS: tuple[Plan, ...] = (
    _plan("edsr-x2", "edsr", 2, {"qat": "nncf_qat_xlong.toml", "channel30": "channel30_long.toml",
                                 "channel50": "channel_long.toml", "unstructured50": "unstructured50_long.toml",
                                 "default_channel": "channel.toml"}, NNCF, NNCF_QAT, NNCF_QAT),
    _plan("edsr-x4", "edsr", 4, {"qat": "nncf_qat_long.toml", "channel30": "channel30_x4_long.toml",
                                 "channel50": "channel_x4_long.toml", "unstructured50": "unstructured_long.toml",
                                 "default_channel": "channel.toml"}, NNCF, NNCF_QAT, NNCF_QAT),
    _plan("rrdb-x4", "rrdb", 4, {"qat": "rrdb_x4.toml", "channel30": "channel30_rrdb_long.toml",
                                 "channel50": "channel_rrdb_long.toml", "unstructured50": "unstructured50_long.toml",
                                 "default_channel": "channel_rrdb.toml"}, PERCENTILE, ORT_QAT, ORT_QAT),
)


def plan_named(name: str) -> Plan:
    """The plan called ``name``; an unknown name lists the known ones."""
    for plan in PLANS:
        if plan.name == name:
            return plan
    raise InputError(f"{name}: unknown plan (known: {', '.join(p.name for p in PLANS)})")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one bar's artifact measured.

    Attributes:
        loss_db: dB of PSNR-Y lost against the dense FP32 model, per evaluation set (negative: a gain);
            ``None`` when the artifact was not written (a QAT that did not beat its start, a failed step).
        macs_cut: fraction of the baseline's MACs at 256x256 removed (pruned artifacts; else ``None``).
        qat_verdict: the QAT's own judgement against its PTQ start (``against_ptq_start``), if any.
        failed: the error of the step that failed, if one did.
    """

    loss_db: dict[str, float] | None
    macs_cut: float | None = None
    qat_verdict: dict | None = None
    failed: str | None = None


def read_outcome(bar: Bar, run: Path) -> Outcome:
    """The outcome of ``bar`` from its artifact's sidecar in ``run``."""
    artifact = run / bar.artifact
    if not artifact.is_file():
        return Outcome(None)
    side = read_sidecar(artifact)
    loss = {name: round(-float(delta), 4) for name, delta in dict(side.get("psnr_y_delta_db", {})).items()}
    cut = None
    if side.get("macs_256x256") and side.get("macs_256x256_before"):
        cut = 1 - float(side["macs_256x256"]) / float(side["macs_256x256_before"])
    verdict = side.get("against_ptq_start")
    return Outcome(loss or None, cut, verdict if isinstance(verdict, dict) else None)


def judge(bar: Bar, outcome: Outcome) -> str:
    """``met``, or ``not met: <why>``, for ``bar`` given what its artifact measured."""
    if outcome.failed:
        return f"not met: failed ({outcome.failed})"
    if outcome.loss_db is None:
        return "not met: no artifact" + (" (the QAT did not beat its PTQ start, or failed)" if bar.qat else "")
    why = [f"{name} loses {loss:.3f} dB" for name, loss in outcome.loss_db.items() if loss > bar.max_loss_db]
    if bar.min_macs_cut and (outcome.macs_cut is None or outcome.macs_cut < bar.min_macs_cut):
        cut = "unknown" if outcome.macs_cut is None else f"{outcome.macs_cut:.1%}"
        why.append(f"MACs cut {cut} < {bar.min_macs_cut:.0%}")
    if bar.qat and outcome.qat_verdict is not None and not outcome.qat_verdict.get("kept", False):
        why.append("worse than its PTQ start")
    return "met" if not why else "not met: " + "; ".join(why)


def format_bars(plan: Plan, outcomes: dict[str, tuple[Outcome, float | None]], sets: Sequence[str]) -> str:
    """The Markdown table of ``plan``'s bars: one row per bar, ``outcomes[key] = (outcome, minutes)``."""
    head = ["bar", "at most (dB lost)", "recipe", "artifact", *[f"{s} dB lost" for s in sets], "MACs", "minutes",
            "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for bar in plan.bars:
        if bar.key not in outcomes:
            continue
        outcome, minutes = outcomes[bar.key]
        losses = [("-" if outcome.loss_db is None or s not in outcome.loss_db else f"{outcome.loss_db[s]:.3f}")
                  for s in sets]
        macs = "-" if outcome.macs_cut is None else f"-{outcome.macs_cut:.1%}"
        recipes = ", ".join(f"`{Path(step.recipe).name}`" for step in bar.steps)
        cells = [bar.label, f"{bar.max_loss_db:g}", recipes, f"`{bar.artifact}`", *losses, macs,
                 "-" if minutes is None else f"{minutes:.1f}", judge(bar, outcome)]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class Campaign:
    """One re-measurement of a plan's bars.

    Attributes:
        plan: the bars.
        out: output folder: ``base/`` (the baseline), one run folder per bar, ``logs/``, ``bars.json``, ``bars.md``.
        model: checkpoint to measure ("": the shipped default of the plan's architecture and scale).
        evals: extra evaluation folders (Set5, Set14), passed to every stage.
        data: training images for fine-tuning (None: the embedded default set).
        only: keys of the bars to run (empty: all); a bar ``after`` another brings that one along.
    """

    plan: Plan
    out: Path
    model: str = ""
    evals: tuple[str, ...] = ()
    data: str | None = None
    only: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        keys = {bar.key for bar in self.plan.bars}
        unknown = [k for k in self.only if k not in keys]
        if unknown:
            raise InputError(f"{', '.join(unknown)}: no such bar in plan {self.plan.name} (bars: {', '.join(sorted(keys))})")

    def bars(self) -> list[Bar]:
        """The bars to run, in plan order."""
        wanted = set(self.only) or {bar.key for bar in self.plan.bars}
        for bar in reversed(self.plan.bars):
            if bar.key in wanted and bar.after:
                wanted.add(bar.after)
        return [bar for bar in self.plan.bars if bar.key in wanted]

    def run_folder(self, bar: Bar) -> Path:
        return self.out / (bar.after or bar.key)

    def base_argv(self) -> list[str]:
        args = ["model", "--run", str(self.out / BASE), "--scale", str(self.plan.scale)]
        args += ["--model", self.model] if self.model else ["--arch", self.plan.arch]
        return args + [a for e in self.evals for a in ("--eval", e)]


def dry_run(c: Campaign) -> list[str]:
    """Every command the campaign would run, one line each, ``python -m compress`` included."""
    lines = [" ".join(["python -m compress", *c.base_argv()])]
    for bar in c.bars():
        lines += _bar_commands(c, bar)
    return lines


def _bar_commands(c: Campaign, bar: Bar) -> list[str]:
    return [" ".join(["python -m compress", *step.argv(c.run_folder(bar), c.evals, c.data)]) for step in bar.steps]


def _compress(argv: list[str], log: Path) -> str | None:
    """Run ``python -m compress ARGV`` in its own process in the repository, output appended to ``log``; None or
    the error."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(f"$ python -m compress {' '.join(argv)}\n")
        fh.flush()
        done = subprocess.run([sys.executable, "-m", "compress", *argv], cwd=REPO, stdout=fh, stderr=subprocess.PIPE,
                              text=True, check=False)
        fh.write(done.stderr)
    if done.returncode == 0:
        return None
    tail = [line for line in done.stderr.splitlines() if line.strip()]
    return f"exit {done.returncode}: {tail[-1] if tail else 'no message'}"


def _write_results(c: Campaign, records: dict[str, dict]) -> Path:
    sets = ["embedded", *[Path(e).name for e in c.evals]]
    outcomes = {bar.key: (dataclasses.replace(read_outcome(bar, c.run_folder(bar)), failed=records[bar.key].get("failed")),
                          records[bar.key].get("minutes"))
                for bar in c.plan.bars if bar.key in records}
    cpu = host_cpu()
    head = (f"# Bars of {c.plan.name} ({c.model or 'the shipped default'})\n\n"
            f"Host: {cpu.describe()}, {os.cpu_count()} logical CPUs; each command in its own process. PSNR-Y = Y of BT.601, {c.plan.scale} px shaved, 8-bit rounded, LR by PIL "
            f"bicubic; dB lost against the dense FP32 model (negative: a gain). Commands: `logs/`.\n\n")
    md = head + format_bars(c.plan, outcomes, sets)
    write_json_atomic(c.out / "bars.json", {
        "plan": c.plan.name, "model": c.model or "default", "evals": list(c.evals), "cpu": cpu.describe(),
        "records": records,
        "outcomes": {k: {**dataclasses.asdict(o), "minutes": m, "verdict": judge(plan_bar(c.plan, k), o)}
                     for k, (o, m) in outcomes.items()}})
    return write_text_atomic(c.out / "bars.md", md)


def plan_bar(plan: Plan, key: str) -> Bar:
    return next(bar for bar in plan.bars if bar.key == key)


def run_bars(c: Campaign) -> Path:
    """Run every bar of the campaign not run before; write ``bars.json`` and ``bars.md`` after each. Returns bars.md."""
    base = c.out / BASE
    if not path_of(base, "baseline").is_file():
        failed = _compress(c.base_argv(), c.out / "logs" / f"{BASE}.log")
        if failed:
            raise InputError(f"{c.out / 'logs' / (BASE + '.log')}: the baseline failed ({failed})")
    state = c.out / "bars.json"
    records: dict[str, dict] = dict(read_json_object(state).get("records", {})) if state.is_file() else {}
    for bar in c.bars():
        if bar.key in records and not records[bar.key].get("failed"):
            continue
        run = c.run_folder(bar)
        if not bar.after:
            shutil.copytree(path_of(base, "baseline").parent, path_of(run, "baseline").parent, dirs_exist_ok=True)
        t0, failed = time.monotonic(), None
        for step in bar.steps:
            failed = _compress(step.argv(run, c.evals, c.data), c.out / "logs" / f"{bar.key}.log")
            if failed:
                break
        records[bar.key] = {"minutes": round((time.monotonic() - t0) / 60, 2), "failed": failed,
                            "commands": _bar_commands(c, bar)}
        _write_results(c, records)
    return _write_results(c, records)
