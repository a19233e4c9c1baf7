"""The ``model`` stage: the input checkpoint into the run folder as its FP32 baseline, with metrics."""

from __future__ import annotations

from pathlib import Path

from compress.core.checkpoint import LoadedModel, count_macs, count_params, load_checkpoint, save_checkpoint
from compress.core.evaluate import bicubic_upscaler, eval_sets, quality
from compress.core.errors import InputError
from compress.core.files import (read_sidecar, removed_on_failure, sha256_file, sidecar_path, source_block,
                                 write_sidecar)
from compress.core.infer import torch_upscaler
from compress.pipeline.contract import STAGES, path_of
from compress.pipeline.defaults import default_checkpoint, default_scale


def refuse_another_baseline(run: Path, src: Path) -> None:
    """Refuse a run folder whose baseline came from another input file while later stages' artifacts are
    there: they were made from that other model, and the bench and report would score them against this
    one. Re-running the stage on the same input (say, with more evaluation sets) is allowed."""
    old = path_of(run, "baseline")
    if not sidecar_path(old).is_file():
        return
    before = read_sidecar(old).get("source", {})
    if not isinstance(before, dict) or before.get("sha256") == sha256_file(src):
        return
    later = [st.folder for st in STAGES if st.name != "model" and (run / st.folder).is_dir()]
    if later:
        raise InputError(f"{run}: holds {', '.join(later)} made from another baseline ({before.get('path')}, "
                         f"sha256 {str(before.get('sha256'))[:12]}); choose another run folder (RUN=) or delete it")


def stage_model(model: str | None, scale: int | None, run: Path, extra_eval: list[str] | None = None,
                arch: str = "edsr", expect_scale: int | None = None) -> dict[str, object]:
    """Take the input checkpoint (default: the shipped ``arch`` model) into ``run`` as the FP32 baseline.

    Args:
        scale: the scale asked for (a checkpoint that does not record its scale, SRCNN's, is read at it).
        expect_scale: without ``scale``, the scale the run is named for (``make``'s default ``SCALE``): a
            checkpoint of another scale is refused, and one that does not record its scale needs ``scale``.

    Raises:
        InputError: ``run`` holds later stages' artifacts of another baseline (:func:`refuse_another_baseline`),
            or the checkpoint is not of ``expect_scale``.
    """
    src = Path(model) if model else default_checkpoint(scale or expect_scale or default_scale(arch), arch)
    loaded: LoadedModel = load_checkpoint(src, scale)
    if scale is None and expect_scale is not None and loaded.scale != expect_scale:
        raise InputError(f"{src}: checkpoint is a x{loaded.scale} {loaded.arch} model, but the run is for the default "
                         f"scale x{expect_scale}; give SCALE={loaded.scale} (--scale {loaded.scale})")
    refuse_another_baseline(run, src)
    sets = eval_sets(loaded.scale, extra_eval)
    out = path_of(run, "baseline")
    record = {  # measured before anything is written: an interrupted stage leaves no baseline without its sidecar
        "stage": "model",
        "format": "pytorch-fp32",
        **{k: v for k, v in loaded.describe().items() if k != "params"},
        "params": count_params(loaded.model),
        "macs_256x256": count_macs(loaded.model),
        "quality": quality(torch_upscaler(loaded.model), sets, loaded.scale),
        "bicubic": quality(bicubic_upscaler(loaded.scale), sets, loaded.scale),
    }
    with removed_on_failure(out):  # never a baseline without its sidecar, nor beside an old one
        save_checkpoint(loaded.model, loaded.config, out, metadata={"stage": "model", "source": str(src)})
        write_sidecar(out, record, source_block(src, layout=loaded.layout))
    return {"artifact": str(out), "psnr_y_db": {k: v["psnr_y_db"] for k, v in record["quality"].items()}}
