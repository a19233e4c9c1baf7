"""Re-measuring the bars of :mod:`compress.pipeline.bars`: a campaign, each bar's outcome, the verdicts.

:func:`run_bars` runs each bar in a run folder of its own (the baseline's ``00-model`` copied in, so
bars never see each other's artifacts, except a bar declared ``after`` another, which continues in that
bar's folder), each stage command in its own process, then reads the artifact's sidecar and judges it
against the dense FP32 baseline of its run folder. ``bars.json`` records every bar run: a bar recorded
without a failure is not run again, so an interrupted campaign resumes where it stopped, and a bar that
runs again takes the bars ``after`` it along. ``bars.md`` is the table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
import tomllib
from collections.abc import Sequence
from pathlib import Path

from compress.core.cpu import host_cpu
from compress.core.errors import InputError, Terminated
from compress.core.evaluate import psnr_delta_db, set_name
from compress.core.files import (read_json_object, read_sidecar, sidecar_path, sidecar_quality, write_json_atomic,
                                 write_text_atomic)
from compress.pipeline.bars import BASE, REPO, Bar, Plan
from compress.pipeline.contract import path_of

STATE = "bars.json"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one bar's artifact measured.

    Attributes:
        loss_db: dB of PSNR-Y lost against the dense FP32 model, per evaluation set (negative: a gain);
            ``None`` when the artifact was not written (a QAT that did not beat its start, a failed step).
        macs_cut: fraction of the baseline's MACs at 256x256 removed (pruned artifacts; else ``None``).
        start_loss_db: a QAT's: what its PTQ start (named in its sidecar) lost, per set.
        failed: why the bar could not be measured (a failed step, an unreadable sidecar), if so.
        artifact: the artifact judged, relative to the run (the bar's own or one of its ``or_else``).
    """

    loss_db: dict[str, float] | None
    macs_cut: float | None = None
    start_loss_db: dict[str, float] | None = None
    failed: str | None = None
    artifact: str | None = None


def _quality(artifact: Path) -> dict[str, dict[str, float]]:
    return sidecar_quality(read_sidecar(artifact), sidecar_path(artifact))


def _loss_db(base: dict[str, dict[str, float]], artifact: Path) -> dict[str, float]:
    """dB of PSNR-Y the artifact's sidecar lost against the baseline's quality ``base``, per set both measured."""
    return {name: -delta for name, delta in psnr_delta_db(_quality(artifact), base).items()}


def read_outcome(bar: Bar, run: Path) -> Outcome:
    """The outcome of ``bar`` from its artifact's sidecar in ``run``, against that run's dense baseline."""
    artifact = next((run / a for a in (bar.artifact, *bar.or_else) if (run / a).is_file()), None)
    if artifact is None:
        return Outcome(None)
    try:
        side, base = read_sidecar(artifact), _quality(path_of(run, "baseline"))
        cut = None
        if side.get("macs_256x256") and side.get("macs_256x256_before"):
            cut = 1 - float(side["macs_256x256"]) / float(side["macs_256x256_before"])
        start = None
        verdict = side.get("against_ptq_start")
        if bar.qat and isinstance(verdict, dict) and verdict.get("ptq_start"):
            start = _loss_db(base, artifact.parent / str(verdict["ptq_start"]))
        return Outcome(_loss_db(base, artifact) or None, cut, start, artifact=artifact.relative_to(run).as_posix())
    except (InputError, KeyError, TypeError, ValueError) as exc:
        return Outcome(None, failed=f"unreadable sidecar of {artifact}: {exc}")


def judge(bar: Bar, outcome: Outcome, sets: Sequence[str]) -> str:
    """``met``, or ``not met: <why>``, for ``bar`` given what its artifact measured on ``sets``."""
    if outcome.failed:
        return f"not met: failed ({outcome.failed})"
    if outcome.loss_db is None:
        return "not met: no artifact" + (" (the QAT did not beat its PTQ start, or failed)" if bar.qat else "")
    loss, start = outcome.loss_db, outcome.start_loss_db
    why = [f"{name} not measured" for name in sets if name not in loss]
    why += [f"{name} loses {loss[name]:.3f} dB" for name in sets if name in loss and loss[name] > bar.max_loss_db]
    if bar.min_macs_cut and (outcome.macs_cut is None or outcome.macs_cut < bar.min_macs_cut):
        cut = "unknown" if outcome.macs_cut is None else f"{outcome.macs_cut:.1%}"
        why.append(f"MACs cut {cut} < {bar.min_macs_cut:.0%}")
    if bar.qat and start is None:
        why.append("its PTQ start is not known")
    elif bar.qat:
        why += [f"{name} worse than its PTQ start ({loss[name]:.3f} > {start[name]:.3f} dB)"
                for name in sets if name in loss and name in start and loss[name] > start[name]]
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
        recipes = ", ".join(f"`{Path(step.recipe).name}`" for step in bar.steps) or f"(of {bar.after})"
        cells = [bar.label, f"{bar.max_loss_db:g}", recipes, f"`{outcome.artifact or bar.artifact}`", *losses, macs,
                 "-" if minutes is None else f"{minutes:.1f}", judge(bar, outcome, sets)]
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
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"{self.out}: not a folder (--out names the campaign's folder)")
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
        """The run folder ``bar`` works in: its own, or that of the bar it runs after."""
        while bar.after:
            bar = next(b for b in self.plan.bars if b.key == bar.after)
        return self.out / bar.key

    def sets(self) -> list[str]:
        """The evaluation sets every artifact is judged on."""
        return ["embedded", *[set_name(e) for e in self.evals]]

    def identity(self) -> dict[str, object]:
        """What a resumed campaign must share with the one that wrote ``bars.json``."""
        return {"plan": self.plan.name, "model": self.model or "default", "evals": list(self.evals), "data": self.data}

    def base_argv(self) -> list[str]:
        """The command that takes the model into ``base/`` (after ``python -m compress``)."""
        args = ["model", "--run", str(self.out / BASE), "--scale", str(self.plan.scale)]
        args += ["--model", self.model] if self.model else ["--arch", self.plan.arch]
        return args + [a for e in self.evals for a in ("--eval", e)]

    def commands(self, bar: Bar) -> list[str]:
        """The command lines of ``bar``'s steps."""
        return [" ".join(["python -m compress", *step.argv(self.run_folder(bar), self.evals, self.data)])
                for step in bar.steps]


def dry_run(c: Campaign) -> list[str]:
    """Every command the campaign would run, one line each, ``python -m compress`` included."""
    return [" ".join(["python -m compress", *c.base_argv()])] + [line for bar in c.bars() for line in c.commands(bar)]


def _compress(argv: list[str], log: Path) -> str | None:
    """Run ``python -m compress ARGV`` in its own process in the repository, its output appended to ``log``;
    None, or the failure with the last line it wrote."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = log.stat().st_size if log.exists() else 0
    with open(log, "a") as fh:
        fh.write(f"$ python -m compress {' '.join(argv)}\n")
        fh.flush()
        proc = subprocess.Popen([sys.executable, "-m", "compress", *argv], cwd=REPO, stdout=fh,
                                stderr=subprocess.STDOUT)
        try:
            code = proc.wait()
        except BaseException as exc:  # the campaign interrupted: the command unwinds too, its stage folder with it
            _stop(proc, own_s=0.0 if isinstance(exc, Terminated) else 10.0)  # SIGTERM reached this process alone
            raise
    if code == 0:
        return None
    with open(log, errors="replace") as fh:
        fh.seek(start)
        tail = [line.strip() for line in fh.read().splitlines()[1:] if line.strip()]
    return f"exit {code}: {tail[-1] if tail else 'no message'}"


def _stop(proc: subprocess.Popen, own_s: float = 10.0, grace_s: float = 60.0) -> None:
    """End ``proc`` after the campaign was interrupted. Ctrl-C reaches the whole process group, so it may be
    unwinding already: if it is still there ``own_s`` later, SIGTERM (the CLI unwinds on it as on Ctrl-C),
    and SIGKILL ``grace_s`` after that."""
    for stop, wait_s in ((None, own_s), (proc.terminate, grace_s), (proc.kill, None)):
        if stop is not None:
            stop()
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def recipe_digests(bar: Bar) -> dict[str, str]:
    """sha256 of the settings of each recipe ``bar``'s steps name: of its parsed TOML, so that editing a
    comment changes nothing (of its bytes if it does not parse; ``missing`` if it is not there)."""
    digests = {}
    for step in bar.steps:
        path = REPO / step.recipe
        if not path.is_file():
            digests[step.recipe] = "missing"
            continue
        data = path.read_bytes()
        try:
            data = json.dumps(tomllib.loads(data.decode("utf-8")), sort_keys=True, default=str).encode()
        except (UnicodeDecodeError, tomllib.TOMLDecodeError):
            pass
        digests[step.recipe] = hashlib.sha256(data).hexdigest()
    return digests


def _declaration(c: Campaign, bar: Bar) -> dict[str, object]:
    """What ``bar`` runs now: its command lines and the digests of its recipes' settings."""
    return {"commands": c.commands(bar), "recipes": recipe_digests(bar)}


def _current(c: Campaign, bar: Bar, records: dict[str, dict]) -> dict | None:
    """``bar``'s record if it ran the commands declared now on the recipes as they are now and, for a bar
    run after another, on that bar's latest run (a changed declaration, an edited recipe or an earlier bar
    that ran again since, in this invocation or an earlier one, counts as not run; a record older than
    recipe digests is judged on its commands)."""
    record = records.get(bar.key)
    if not record:
        return None
    if bar.after and (records.get(bar.after) or {}).get("run_id") != record.get("after_run"):
        return None
    now = _declaration(c, bar)
    recorded = {"commands": record.get("commands"), "recipes": record.get("recipes", now["recipes"])}
    return record if recorded == now else None


def _write_results(c: Campaign, records: dict[str, dict]) -> Path:
    sets = c.sets()
    outcomes: dict[str, tuple[Outcome, float | None]] = {}
    for bar in c.plan.bars:
        record = _current(c, bar, records)
        if record:
            # what a failed step left behind is not its result: its sidecar is not read
            outcome = Outcome(None, failed=str(record["failed"])) if record.get("failed") else \
                read_outcome(bar, c.run_folder(bar))
            outcomes[bar.key] = (outcome, record.get("minutes"))
    cpu = host_cpu().describe()
    head = (f"# Bars of {c.plan.name} ({c.model or 'the shipped default'})\n\n"
            f"{hosts_line(records, list(outcomes), cpu)}, {os.cpu_count()} logical CPUs here; each command in its own "
            "process. PSNR-Y = Y of BT.601, "
            f"{c.plan.scale} px shaved, 8-bit rounded, LR by PIL bicubic; dB lost against the dense FP32 model "
            f"(negative: a gain). Commands and their output: `logs/`.\n\n")
    bars = {bar.key: bar for bar in c.plan.bars}
    write_json_atomic(c.out / STATE, {
        **c.identity(), "cpu": cpu, "records": records,
        "outcomes": {k: {**dataclasses.asdict(o), "minutes": m, "verdict": judge(bars[k], o, sets)}
                     for k, (o, m) in outcomes.items()}})
    return write_text_atomic(c.out / "bars.md", head + format_bars(c.plan, outcomes, sets))


def hosts_line(records: dict[str, dict], keys: list[str], here: str) -> str:
    """``Host: <cpu>`` when every bar of ``keys`` ran on this host; else each host with the bars it ran (a
    campaign resumed on another machine keeps the figures, and the minutes, of the first)."""
    hosts: dict[str, list[str]] = {}
    for key in keys:
        hosts.setdefault(str(records.get(key, {}).get("cpu", "not recorded")), []).append(key)
    if not hosts or list(hosts) == [here]:
        return f"Host: {here}"
    return "Hosts: " + "; ".join(f"{cpu} ({', '.join(bars)})" for cpu, bars in hosts.items()) + f"; this one is {here}"


def _records(c: Campaign) -> dict[str, dict]:
    """The bars a previous run of this campaign recorded; a different campaign's folder is refused."""
    state = c.out / STATE
    if not state.is_file():
        return {}
    saved = read_json_object(state)
    differs = [k for k, v in c.identity().items() if saved.get(k) != v]
    if differs:
        raise InputError(f"{state}: written by another campaign ({', '.join(f'{k} {saved.get(k)!r}' for k in differs)}); "
                         "choose another --out")
    records = saved.get("records", {})
    if not isinstance(records, dict) or not all(isinstance(r, dict) for r in records.values()):
        raise InputError(f"{state}: 'records' is not an object of objects")
    return dict(records)


def _run_bar(c: Campaign, bar: Bar, records: dict[str, dict]) -> dict:
    """Run ``bar``'s steps; its record (with an id of this run, and the id of the run of the bar it continues)."""
    parent = records.get(bar.after) if bar.after else None
    ids = {"run_id": uuid.uuid4().hex, **({"after_run": parent.get("run_id")} if parent is not None else {})}
    if parent is not None and parent.get("failed"):
        return {"minutes": 0.0, "failed": f"not run: {bar.after} failed", "cpu": host_cpu().describe(),
                **_declaration(c, bar), **ids}
    run = c.run_folder(bar)
    if run == c.out / bar.key:
        shutil.copytree(path_of(c.out / BASE, "baseline").parent, path_of(run, "baseline").parent, dirs_exist_ok=True)
    t0, failed = time.monotonic(), None
    for step in bar.steps:
        failed = _compress(step.argv(run, c.evals, c.data), c.out / "logs" / f"{bar.key}.log")
        if failed:
            break
    return {"minutes": round((time.monotonic() - t0) / 60, 2), "failed": failed, "cpu": host_cpu().describe(),
            **_declaration(c, bar), **ids}


def run_bars(c: Campaign) -> Path:
    """Run every bar of the campaign not run before; write ``bars.json`` and ``bars.md`` after each. Returns bars.md.

    A bar recorded as met or not met is skipped unless its declared commands changed since (a new
    recipe), a recipe it names has other settings, or it continues a bar that ran again after it (now or in
    an earlier invocation, e.g. with ``only``); a failed bar always runs again.
    """
    records = _records(c)
    if not path_of(c.out / BASE, "baseline").is_file():
        failed = _compress(c.base_argv(), c.out / "logs" / f"{BASE}.log")
        if failed:
            raise InputError(f"{c.out / 'logs' / (BASE + '.log')}: the baseline failed ({failed})")
    md = _write_results(c, records)  # the campaign's identity is on disk before any bar runs
    for bar in c.bars():
        record = _current(c, bar, records)
        if record and not record.get("failed"):
            continue
        records[bar.key] = _run_bar(c, bar, records)
        md = _write_results(c, records)
    return md
