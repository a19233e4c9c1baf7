"""The ``model`` stage: the input checkpoint into the run folder as its FP32 baseline, with metrics."""

from __future__ import annotations

from pathlib import Path

from compress.core.checkpoint import LoadedModel, count_macs, count_params, load_checkpoint, save_checkpoint
from compress.core.evaluate import bicubic_upscaler, eval_sets, quality
from compress.core.files import source_block, write_sidecar
from compress.core.infer import torch_upscaler
from compress.pipeline.contract import path_of
from compress.pipeline.defaults import default_checkpoint


def stage_model(model: str | None, scale: int | None, run: Path, extra_eval: list[str] | None = None,
                arch: str = "edsr") -> dict[str, object]:
    """Take the input checkpoint (default: the shipped ``arch`` model) into ``run`` as the FP32 baseline."""
    src = Path(model) if model else default_checkpoint(scale or (4 if arch == "rrdb" else 2), arch)
    loaded: LoadedModel = load_checkpoint(src, scale)
    sets = eval_sets(loaded.scale, extra_eval)
    out = path_of(run, "baseline")
    save_checkpoint(loaded.model, loaded.config, out, metadata={"stage": "model", "source": str(src)})
    record = {
        "stage": "model",
        "format": "pytorch-fp32",
        **{k: v for k, v in loaded.describe().items() if k != "params"},
        "params": count_params(loaded.model),
        "macs_256x256": count_macs(loaded.model),
        "quality": quality(torch_upscaler(loaded.model), sets, loaded.scale),
        "bicubic": quality(bicubic_upscaler(loaded.scale), sets, loaded.scale),
    }
    write_sidecar(out, record, source_block(src, layout=loaded.layout))
    return {"artifact": str(out), "psnr_y_db": {k: v["psnr_y_db"] for k, v in record["quality"].items()}}
