"""The pipeline's stages in order, and the two that the foundation provides (model, export).

Each stage reads artifacts from earlier stages' folders under one run folder and writes a new
folder of its own; no stage edits its input. ``STAGES`` is the one place that lists them in order.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from compress.checkpoint import LoadedModel, count_params, load_checkpoint, save_checkpoint
from compress.data import ImagePair, list_images, load_pairs
from compress.default_data import split_paths
from compress.errors import InputError
from compress.evaluate import bicubic_upscaler, evaluate
from compress.files import read_sidecar, sha256_file, write_sidecar
from compress.infer import torch_upscaler

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "artifacts" / "default"
DEFAULT_MODELS = {("edsr", 2): "edsr_baseline_x2.safetensors", ("edsr", 3): "edsr_baseline_x3.safetensors",
                  ("edsr", 4): "edsr_baseline_x4.safetensors", ("rrdb", 4): "rrdb_compact_x4.safetensors"}
MAC_SIZE = 256  # MACs are reported for a 256x256 LR input


@dataclasses.dataclass(frozen=True)
class Stage:
    """One pipeline stage: its name (the make target) and the run subfolder it writes."""

    name: str
    folder: str
    issue: str


STAGES: tuple[Stage, ...] = (
    Stage("model", "00-model", "baseline FP32 checkpoint with metrics"),
    Stage("prune", "10-prune", "AGP magnitude and channel pruning"),
    Stage("quantize", "20-quantize", "INT8 PTQ and QAT"),
    Stage("export", "30-export", "ONNX / TFLite export with parity"),
    Stage("bench", "40-bench", "latency harness"),
    Stage("report", "50-report", "compression report"),
)


def stage_dir(run: Path, name: str) -> Path:
    for stage in STAGES:
        if stage.name == name:
            return run / stage.folder
    raise KeyError(name)


def count_macs(model: torch.nn.Module, size: int = MAC_SIZE) -> int:
    """Multiply-accumulates of one forward pass on a ``size`` x ``size`` LR input (torch-pruning's counter)."""
    import torch_pruning as tp

    macs, _ = tp.utils.count_ops_and_params(model, torch.rand(1, 3, size, size))
    return int(macs)


def default_checkpoint(scale: int, arch: str = "edsr") -> Path:
    """The shipped default weights for (``arch``, ``scale``) in ``artifacts/default/``."""
    if (arch, scale) not in DEFAULT_MODELS:
        raise InputError(f"no shipped default {arch} model for scale {scale}; shipped: "
                         + ", ".join(f"{a} x{s}" for a, s in DEFAULT_MODELS))
    path = DEFAULT_DIR / DEFAULT_MODELS[(arch, scale)]
    if not path.is_file():
        raise InputError(f"{path}: no shipped {arch} x{scale} weights here (see artifacts/default/MODELS.md); "
                         f"pass MODEL=your checkpoint, or train them with make train and copy them there")
    return path


def eval_sets(scale: int, extra: list[str] | None) -> dict[str, list[ImagePair]]:
    """The embedded evaluation split plus any extra folders, keyed by a short name."""
    sets = {"embedded": load_pairs(split_paths("evaluation"), scale)}
    for folder in extra or []:
        name = Path(folder).name if Path(folder).name != "HR" else Path(folder).parent.name
        sets[name] = load_pairs(list_images(folder), scale)
    return sets


def quality(fn, sets: dict[str, list[ImagePair]], scale: int) -> dict[str, dict[str, object]]:  # noqa: ANN001
    return {name: evaluate(fn, pairs, scale).to_dict() for name, pairs in sets.items()}


def stage_model(model: str | None, scale: int | None, run: Path, extra_eval: list[str] | None = None,
                arch: str = "edsr") -> dict[str, object]:
    """Take the input checkpoint (default: the shipped ``arch`` model) into ``run`` as the FP32 baseline."""
    src = Path(model) if model else default_checkpoint(scale or (4 if arch == "rrdb" else 2), arch)
    loaded: LoadedModel = load_checkpoint(src, scale)
    sets = eval_sets(loaded.scale, extra_eval)
    out = stage_dir(run, "model") / "model.safetensors"
    save_checkpoint(loaded.model, loaded.config, out, metadata={"stage": "model", "source": str(src)})
    record = {
        "stage": "model",
        "format": "pytorch-fp32",
        "source": {"path": str(src), "sha256": sha256_file(src), "layout": loaded.layout},
        **{k: v for k, v in loaded.describe().items() if k != "params"},
        "params": count_params(loaded.model),
        "macs_256x256": count_macs(loaded.model),
        "quality": quality(torch_upscaler(loaded.model), sets, loaded.scale),
        "bicubic": quality(bicubic_upscaler(loaded.scale), sets, loaded.scale),
    }
    write_sidecar(out, record)
    return {"artifact": str(out), "psnr_y_db": {k: v["psnr_y_db"] for k, v in record["quality"].items()}}


def baseline(run: Path) -> tuple[Path, LoadedModel]:
    path = stage_dir(run, "model") / "model.safetensors"
    if not path.is_file():
        raise InputError(f"{path}: no baseline in run {run}; run `make model` (python -m compress model) first")
    return path, load_checkpoint(path)


def stage_export(run: Path, tflite: bool = True, extra_eval: list[str] | None = None) -> dict[str, object]:
    """FP32 ONNX export of the run's baseline, with parity against PyTorch on a real image, and the
    TFLite variants (FP32, FP16, dynamic-range INT8, full-integer INT8) when ``tflite``.

    ``model_fp32.onnx`` carries the exact output-convolution rewrites of :mod:`export.onnx_tail` (the
    reference every INT8 speed-up is measured against); ``model_fp32_plain.onnx`` is the graph as
    PyTorch exports it, so the bench shows what the rewrite alone buys.
    """
    import onnx

    from export.onnx_export import OPSET, export_checked, onnx_op_counts
    from export.onnx_tail import recorded_rewrites

    src, loaded = baseline(run)
    pair = load_pairs(split_paths("evaluation")[:1], loaded.scale)[0]
    probe = torch.from_numpy(pair.lr[:128, :128].transpose(2, 0, 1)[None].copy())
    base = read_sidecar(src)
    # the rewritten graph is exported last: it is the ``out`` / ``par`` reported below and TFLite's folder
    for name, rewrite in (("model_fp32_plain.onnx", False), ("model_fp32.onnx", True)):
        out, par = export_checked(loaded.model, stage_dir(run, "export") / name, probe, narrow_tail=rewrite)
        write_sidecar(out, _onnx_record(src, loaded, base, par, onnx_op_counts(out), OPSET,
                                        recorded_rewrites(onnx.load(str(out)))))
    result: dict[str, object] = {"artifact": str(out), "parity_vs_pytorch": par.to_dict()}
    if tflite:
        from export.tflite_stage import export_tflite

        result["tflite"] = export_tflite(loaded, src, out.parent, extra_eval)
    return result


def _onnx_record(src: Path, loaded: LoadedModel, base: dict, par: object, ops: dict, opset: int,
                 rewrites: list) -> dict[str, object]:
    return {
        "stage": "export",
        "format": "onnx-fp32",
        "method": "fp32 (output conv rewritten)" if rewrites else "fp32 (graph as exported)",
        "source": {"path": str(src), "sha256": sha256_file(src)},
        "arch": loaded.arch,
        "scale": loaded.scale,
        "config": base.get("config"),
        "params": base.get("params"),
        "macs_256x256": base.get("macs_256x256"),
        "opset": opset,
        "dynamic_axes": ["height", "width"],
        "parity_vs_pytorch": par.to_dict(),
        "ops": ops,
        "tail_rewrites": rewrites,
    }
