"""The compression bars and the recipe judged against each on each shipped model: one declaration per model.

README's "Compression bars" is what :mod:`compress.pipeline.bars_run` measures from these.
:data:`PLANS` declares, per shipped model, every bar (the most dB it may lose against the dense FP32
model on every evaluation set, and for channel pruning how many MACs it must remove) with the stage
commands judged against it and the artifact judged.

Usage: ``python -m compress bars --plan edsr-x2 --out artifacts/bars-edsr-x2 --eval <Set5> --eval <Set14>``
(``make bars``), or ``--dry-run`` to list the commands.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from compress.core.errors import InputError
from compress.pipeline.contract import path_of, quantize_dir

REPO = Path(__file__).resolve().parents[2]
BASE = "base"


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
        args = [self.stage, "--run", str(run), "--recipe", str(REPO / self.recipe)]
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
        steps: the stage commands, in order (none: it judges another artifact of its ``after`` bar's run).
        artifact: the artifact judged, relative to the run folder.
        min_macs_cut: channel pruning: the least fraction of MACs at 256x256 it must remove (0: none).
        qat: a QAT: it must also lose no more than its PTQ start on any set (the start its sidecar names).
        after: key of an earlier bar whose run folder this one continues in (its artifacts as inputs).
        or_else: artifacts judged instead, the first present, when ``artifact`` is not: a recipe that chooses
            as it runs which one it writes (``qat_from = "best"``).
    """

    key: str
    label: str
    max_loss_db: float
    steps: tuple[Step, ...]
    artifact: str
    min_macs_cut: float = 0.0
    qat: bool = False
    after: str = ""
    or_else: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.key.replace("_", "").isalnum() or self.key == BASE:
            raise ValueError(f"Bar.key must be a plain name other than {BASE!r}, got {self.key!r}")
        if not self.max_loss_db > 0:
            raise ValueError(f"Bar.max_loss_db must be > 0, got {self.max_loss_db}")
        if not 0 <= self.min_macs_cut < 1:
            raise ValueError(f"Bar.min_macs_cut must be in [0, 1), got {self.min_macs_cut}")
        if not self.steps and not self.after:
            raise ValueError(f"Bar {self.key}: no steps and no earlier bar whose run it judges")


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


def _quantized(artifact: str, source: str = "model") -> str:
    """An artifact of the quantize stage, in the folder it names after its source."""
    return (quantize_dir(Path(), source) / artifact).as_posix()


def _quant(key: str, label: str, max_db: float, recipe: str, artifact: str, *, qat: bool = False, after: str = "",
           source: str = "model", or_else: tuple[str, ...] = ()) -> Bar:
    return Bar(key, label, max_db, (Step("quantize", f"quantization/recipes/{recipe}", source),),
               _quantized(artifact, source), qat=qat, after=after,
               or_else=tuple(_quantized(other, source) for other in or_else))


# Channel widths are multiples of 8, so a cut lands within a few points of its target: a 30% bar is met
# from 29% fewer MACs and a 50% bar from 45% (the RRDB's trunk stays whole: -46.0%); README says so.
CUT_30, CUT_50 = 0.29, 0.45
NNCF, NNCF_QAT, PERCENTILE, ORT_QAT = "model_int8_nncf.xml", "model_int8_nncf_qat.xml", "model_int8_percentile.onnx", \
    "model_int8_qat.onnx"


@dataclasses.dataclass(frozen=True)
class ModelRecipes:
    """What meets each bar on one model: recipe file names and the INT8 artifacts judged.

    Attributes:
        qat: quantize recipe of the QAT bar.
        channel30: prune recipe of the 30% channel bar.
        channel50: prune recipe of the 50% channel bar (its model is then quantized with ``ptq``).
        unstructured50: prune recipe of the 50% unstructured bar.
        default_channel: ``make all``'s channel recipe for this architecture.
        best_ptq: the PTQ artifact that loses least on this model (NNCF's IR or ORT's Percentile graph).
        qat_artifact: the QAT artifact the QAT bar's recipe writes (``make all``'s ``default.toml`` writes
            NNCF's or ORT's, from whichever PTQ start its ``qat_from = "best"`` chooses: both are looked for).
        ptq: quantize recipe of the PTQ bar and of the 50% channel cut's INT8 bar.
    """

    qat: str
    channel30: str
    channel50: str
    unstructured50: str
    default_channel: str
    best_ptq: str
    qat_artifact: str
    ptq: str = "ptq.toml"


def _plan(name: str, arch: str, scale: int, r: ModelRecipes) -> Plan:
    """One model's bars."""
    ch50 = f"prune/{Path(r.channel50).stem}"
    return Plan(name, arch, scale, (
        _quant("qat", "QAT, never worse than its PTQ start", 0.03, r.qat, r.qat_artifact, qat=True),
        _quant("ptq", "PTQ", 0.08, r.ptq, r.best_ptq),
        _prune("channel30", "channel, 30% fewer MACs", 0.05, r.channel30, CUT_30),
        _prune("channel50", "channel, 50% fewer MACs", 0.15, r.channel50, CUT_50),
        _quant("channel50_int8", "channel 50% + INT8", 0.2, r.ptq, r.best_ptq, after="channel50", source=ch50),
        _prune("unstructured50", "unstructured 50%", 0.03, r.unstructured50),
        _prune("default_channel", "make all channel default, 2x of the 50% bar", 0.30, r.default_channel, CUT_50),
        _prune("default_unstructured", "make all unstructured default, 2x", 0.06, "unstructured.toml"),
        _quant("default_quantize", "make all quantize default: its QAT, 2x", 0.06, "default.toml", NNCF_QAT,
               qat=True, or_else=(ORT_QAT,)),
        Bar("default_quantize_ptq", "make all quantize default: its best PTQ, 2x", 0.16, (), _quantized(r.best_ptq),
            after="default_quantize"),
    ))


#: Every plan: the one explicit list ``--plan`` chooses from.
PLANS: tuple[Plan, ...] = (
    _plan("edsr-x2", "edsr", 2, ModelRecipes("nncf_qat_xlong.toml", "channel30_xlong.toml", "channel50_xlong.toml",
                                             "unstructured50_long.toml", "channel.toml", NNCF, NNCF_QAT)),
    _plan("edsr-x4", "edsr", 4, ModelRecipes("nncf_qat_long.toml", "channel30_x4_xlong.toml", "channel50_x4_xlong.toml",
                                             "unstructured50_long.toml", "channel.toml", NNCF, NNCF_QAT)),
    _plan("rrdb-x4", "rrdb", 4, ModelRecipes("rrdb_x4.toml", "channel30_rrdb_long.toml", "channel_rrdb_long.toml",
                                             "unstructured50_long.toml", "channel_rrdb.toml", PERCENTILE, ORT_QAT,
                                             ptq="ptq_rrdb.toml")),
)


def plan_named(name: str) -> Plan:
    """The plan called ``name``; an unknown name lists the known ones."""
    for plan in PLANS:
        if plan.name == name:
            return plan
    raise InputError(f"{name}: unknown plan (known: {', '.join(p.name for p in PLANS)})")
