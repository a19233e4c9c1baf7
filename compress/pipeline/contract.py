"""The stage contract: every stage, the artifacts it reads and writes, and every artifact's name.

This module is the one place that spells stage folders and the artifacts one stage finds of another's
(a stage names the files inside its own folder itself). A stage is declared once in
:data:`STAGES` (name = make target, folder, inputs, outputs, the function that runs it); an artifact
kind once in :data:`ARTIFACTS` (a glob under the run folder and the runtime that opens it). Stages
find their inputs with :func:`inputs`, which refuses a stage whose required inputs are missing with
the stage and the file named, before the stage writes anything.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from compress.core.checkpoint import LoadedModel, load_checkpoint
from compress.core.errors import InputError
from compress.core.registry import by_name


@dataclasses.dataclass(frozen=True)
class ArtifactKind:
    """One kind of artifact in a run folder.

    Attributes:
        key: short name used by :data:`STAGES`.
        pattern: glob relative to the run folder (``*`` stands for a recipe or source name).
        runtime: runtime (see :mod:`export.runtimes`) the bench times it with; empty if not timed.
    """

    key: str
    pattern: str
    runtime: str = ""


ARTIFACTS: tuple[ArtifactKind, ...] = (
    ArtifactKind("baseline", "00-model/model.safetensors", "pytorch"),
    ArtifactKind("pruned", "10-prune/*/model.safetensors"),
    ArtifactKind("pruned_onnx", "10-prune/*/model.onnx", "ort"),
    ArtifactKind("int8_onnx", "20-quantize/*/model_int8_*.onnx", "ort"),
    ArtifactKind("int8_nncf_ir", "20-quantize/*/model_int8_nncf*.xml", "openvino"),
    ArtifactKind("tfmot_tflite", "20-quantize/*/*.tflite", "tflite"),
    ArtifactKind("fp32_onnx", "30-export/model_fp32.onnx", "ort"),
    ArtifactKind("fp32_plain_onnx", "30-export/model_fp32_plain.onnx", "ort"),
    ArtifactKind("openvino_ir", "30-export/model_fp32.xml", "openvino"),
    ArtifactKind("tflite", "30-export/*.tflite", "tflite"),
    ArtifactKind("latency", "40-bench/latency.json"),
    ArtifactKind("report", "50-report/report.json"),
)
#: The order the bench discovers (and the report lists) timed artifacts in.
BENCH_ORDER = ("baseline", "fp32_onnx", "fp32_plain_onnx", "openvino_ir", "pruned_onnx", "int8_onnx", "int8_nncf_ir",
               "tfmot_tflite", "tflite")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One pipeline stage.

    Attributes:
        name: the make target and CLI command.
        folder: the run subfolder it writes (it never writes elsewhere, nor edits its inputs).
        what: one line for humans.
        reads: artifact kinds it needs (refused without them).
        reads_if_present: artifact kinds it consumes when earlier optional stages made them.
        writes: artifact kinds it makes.
        function: ``module:function`` that runs it (resolved by :meth:`load`, so this declaration
            imports no stage module).
    """

    name: str
    folder: str
    what: str
    reads: tuple[str, ...]
    reads_if_present: tuple[str, ...]
    writes: tuple[str, ...]
    function: str

    def load(self) -> Callable[..., object]:
        module, _, attr = self.function.partition(":")
        return getattr(importlib.import_module(module), attr)


STAGES: tuple[Stage, ...] = (
    Stage("model", "00-model", "baseline FP32 checkpoint with metrics", (), (), ("baseline",),
          "compress.pipeline.model_stage:stage_model"),
    Stage("prune", "10-prune", "AGP magnitude and channel pruning", ("baseline",), (), ("pruned", "pruned_onnx"),
          "compress.pipeline.prune_stage:run_prune"),
    Stage("quantize", "20-quantize", "INT8 PTQ and QAT of the baseline and every channel-pruned model",
          ("baseline",), ("pruned",), ("int8_onnx", "int8_nncf_ir", "tfmot_tflite"), "compress.pipeline.quantize_stage:run_quantize"),
    Stage("export", "30-export", "ONNX / TFLite export with parity", ("baseline",), (),
          ("fp32_onnx", "fp32_plain_onnx", "openvino_ir", "tflite"), "compress.pipeline.export_stage:stage_export"),
    Stage("bench", "40-bench", "latency harness", ("baseline",),
          ("fp32_onnx", "fp32_plain_onnx", "openvino_ir", "pruned_onnx", "int8_onnx", "int8_nncf_ir", "tfmot_tflite",
           "tflite"),
          ("latency",),
          "compress.pipeline.bench_stage:run_bench"),
    Stage("report", "50-report", "compression report", ("baseline", "latency"), (), ("report",),
          "compress.pipeline.report:write_report"),
)


def stage(name: str) -> Stage:
    return by_name(STAGES, name, "stage")


def artifact_kind(key: str) -> ArtifactKind:
    return by_name(ARTIFACTS, key, "artifact kind", key=lambda k: k.key)


def stage_dir(run: Path, name: str) -> Path:
    """The folder stage ``name`` writes in ``run``."""
    return Path(run) / stage(name).folder


def path_of(run: Path, key: str, name: str = "") -> Path:
    """The path of one artifact of kind ``key``; ``name`` fills the ``*`` of its pattern."""
    pattern = artifact_kind(key).pattern
    if "*" in pattern and not name:
        raise ValueError(f"artifact kind {key!r} ({pattern}) needs a name")
    return Path(run) / pattern.replace("*", name, 1)


def quantize_dir(run: Path, source: str) -> Path:
    """The folder the quantize stage writes for ``source``: ``model`` (the baseline) gives
    ``20-quantize/model``, ``prune/<name>`` gives ``20-quantize/prune-<name>``."""
    return stage_dir(run, "quantize") / source.replace("/", "-")


QUANTIZED_KINDS = ("int8_onnx", "int8_nncf_ir", "tfmot_tflite")


def kind_of(rel: str | Path) -> str:
    """The key of the artifact kind a run-relative path is (the first that matches), '' for none."""
    path = PurePosixPath(rel)
    for kind in ARTIFACTS:
        pattern = PurePosixPath(kind.pattern)
        if len(path.parts) == len(pattern.parts) and path.match(kind.pattern):
            return kind.key
    return ""


def quantized_from(rel: str | Path) -> str:
    """The quantize folder a quantized artifact (run-relative) sits in (``model``, ``prune-<name>``), '' if
    it is no quantized artifact."""
    return PurePosixPath(rel).parts[1] if kind_of(rel) in QUANTIZED_KINDS else ""


def from_pruned(rel: str | Path) -> bool:
    """Whether an artifact (run-relative) is a pruned model or was quantized from one."""
    return kind_of(rel) in ("pruned", "pruned_onnx") or quantized_from(rel).startswith("prune-")


def find(run: Path, key: str) -> list[Path]:
    """Existing artifacts of kind ``key`` in ``run``, sorted."""
    return sorted(p for p in Path(run).glob(artifact_kind(key).pattern) if p.is_file())


def inputs(run: Path, name: str) -> dict[str, list[Path]]:
    """Stage ``name``'s inputs in ``run``: every required kind present, optional kinds as found.

    Raises:
        InputError: naming the stage, the missing file and the stage that makes it.
    """
    st = stage(name)
    for folder in (Path(run), Path(run) / st.folder):
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{folder}: is a file, not a run folder; choose another RUN")
    found = {}
    for key in st.reads:
        found[key] = find(run, key)
        if not found[key]:
            maker = next((s.name for s in STAGES if key in s.writes), "?")
            raise InputError(f"{Path(run) / artifact_kind(key).pattern}: stage {name!r} needs this input "
                             f"({key}); run `make {maker} RUN={run}` first")
    for key in st.reads_if_present:
        found[key] = find(run, key)
    return found


def baseline(run: Path) -> tuple[Path, LoadedModel]:
    path = path_of(run, "baseline")
    if not path.is_file():
        raise InputError(f"{path}: no baseline in run {run}; run `make model` (python -m compress model) first")
    return path, load_checkpoint(path)
