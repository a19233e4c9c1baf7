"""The ``export`` stage: FP32 ONNX (rewritten and plain) and the TFLite variants of the baseline."""

from __future__ import annotations

from pathlib import Path

import torch

from compress.core.checkpoint import LoadedModel
from compress.core.data import load_pairs
from compress.core.default_data import split_paths
from compress.core.errors import InputError
from compress.core.evaluate import eval_sets
from compress.core.files import fresh_stage_folder, read_sidecar, write_sidecar
from compress.pipeline.contract import baseline, path_of, stage_dir
from export.runtimes import open_artifact, runtime


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
    sets = eval_sets(loaded.scale, extra_eval) if tflite else {}
    if tflite and (missing := runtime("tflite").absence()):  # found now, not after the ONNX and OpenVINO exports
        raise InputError(f"{run}: the TFLite export needs TensorFlow ({missing}): pip install -e '.[tflite]', "
                         "or pass --no-tflite")
    with fresh_stage_folder(stage_dir(run, "export")):  # every input read: a rerun keeps no old file
        # the rewritten graph is exported last: it is the ``out`` / ``par`` reported below and TFLite's folder
        for kind, rewrite in (("fp32_plain_onnx", False), ("fp32_onnx", True)):
            out, par = export_checked(loaded.model, path_of(run, kind), probe, narrow_tail=rewrite)
            write_sidecar(out, _onnx_record(loaded, base, par, onnx_op_counts(out), OPSET,
                                            recorded_rewrites(onnx.load(str(out)))), source=src)
        result: dict[str, object] = {"artifact": str(out), "parity_vs_pytorch": par.to_dict()}
        if runtime("openvino").present():
            result["openvino_ir"] = _export_ir(out, path_of(run, "openvino_ir"), probe.numpy(), loaded, base)
        if tflite:
            from compress.pipeline.tflite_stage import export_tflite

            result["tflite"] = export_tflite(loaded, src, out.parent, sets)
        return result


def _export_ir(onnx_path: Path, xml: Path, probe, loaded: LoadedModel, base: dict) -> str:  # noqa: ANN001
    """OpenVINO IR of the rewritten FP32 ONNX, with its parity against ONNX Runtime on the probe."""
    from export.onnx_export import parity, require_parity
    from export.openvino_ir import to_ir

    to_ir(onnx_path, xml)
    par = require_parity(parity(open_artifact(onnx_path, "ort").run(probe), open_artifact(xml, "openvino").run(probe)),
                         f"{xml}: OpenVINO IR output disagrees with ONNX Runtime", (xml, xml.with_suffix(".bin")))
    write_sidecar(xml, {"stage": "export", "format": "openvino-ir-fp32", "method": "fp32 OpenVINO IR",
                        "arch": loaded.arch, "scale": loaded.scale, "params": base.get("params"),
                        "macs_256x256": base.get("macs_256x256"), "weights_file": xml.with_suffix(".bin").name,
                        "parity_vs_onnx": par.to_dict()}, source=onnx_path)
    return str(xml)


def _onnx_record(loaded: LoadedModel, base: dict, par: object, ops: dict, opset: int,
                 rewrites: list) -> dict[str, object]:
    return {
        "stage": "export",
        "format": "onnx-fp32",
        "method": "fp32 (output conv rewritten)" if rewrites else "fp32 (graph as exported)",
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
