"""Quantization-aware training with NNCF's PyTorch backend, deployed as OpenVINO INT8 IR.

NNCF's QAT (Kozlov et al., "Neural Network Compression Framework for fast model inference",
arXiv:2002.08679) is post-training quantization of the PyTorch model followed by ordinary
fine-tuning. :func:`prepare_nncf_qat` runs ``nncf.quantize`` on the ``torch.nn.Module`` with the
settings of the IR's PTQ (:class:`quantization.nncf_ptq.NNCFConfig`: preset, range estimator, fast bias
correction, float convolutions), which inserts FakeQuantize operations whose ranges are trainable
parameters (with the ``mixed`` preset, ``input_low`` / ``input_range`` of each activation and a
per-channel scale of each weight, learned in the linear domain). Fine-tuning then learns the ranges
together with the weights, the gradient passing straight through the rounding, as learned-range
schemes such as LSQ do (Esser et al., "Learned Step Size Quantization", ICLR 2020; NNCF has no LSQ
gradient scaling). :func:`qat_ir` converts the trained model with ``openvino.convert_model``: each
FakeQuantize stays a FakeQuantize of the IR, which OpenVINO's CPU plugin runs as integer kernels, as
it runs NNCF's PTQ IR.

NNCF compiles its CPU FakeQuantize kernels (a PyTorch C++ extension) on first use and falls back on
PyTorch operations where it cannot (no compiler or ``ninja``). Its PyTorch backend has no full bias
correction and ignores the overflow fix (its quantizers always use the full 8-bit range).
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.openvino_ir import save_ir
from quantization.nncf_ptq import NNCFConfig, describe, pick_roles, run_nncf
from quantization.ptq import cpu_has_vnni

#: Seconds NNCF may spend compiling its CPU extension before giving up (its default, 60 s, is too short
#: for a busy 2-core machine).
EXTENSION_BUILD_S = "900"


def float_node_names(model: nn.Module, roles: tuple[str, ...]) -> list[str]:
    """NNCF graph names of the ``first`` / ``last`` convolution of a PyTorch ``model`` (module order).

    NNCF names the call of a module's ``conv2d`` as ``<module path with "/">/conv2d/0``.
    """
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return [f"{name.replace('.', '/')}/conv2d/0" for name in pick_roles(convs, roles)]


def prepare_nncf_qat(model: nn.Module, patches: list[np.ndarray], cfg: NNCFConfig,
                     has_vnni: bool | None = None) -> tuple[nn.Module, dict]:
    """NNCF's PTQ of a copy of ``model``: the FP32 network with trainable FakeQuantize operations.

    Args:
        model: canonical FP32 (or pruned) model; left untouched.
        patches: calibration LR patches (NCHW float32, batch 1), the ones the IR's PTQ uses.
        cfg: the NNCF settings shared with :func:`quantization.nncf_ptq.nncf_quantize`.
        has_vnni: the VNNI of the CPU the model will run on (``overflow_fix = auto``; default: this one).

    Returns:
        The quantized model, ready for :func:`compress.core.train.fit`, and a record for the sidecar.
    """
    if not patches:
        raise ValueError("prepare_nncf_qat: no calibration patches")
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", EXTENSION_BUILD_S)
    t0 = time.perf_counter()
    student = copy.deepcopy(model).eval().float()  # nncf.quantize copies too; the source keeps its mode
    floats = float_node_names(student, cfg.float_convs)
    has_vnni = cpu_has_vnni() if has_vnni is None else has_vnni
    quantized = run_nncf(student, [torch.from_numpy(p) for p in patches], cfg, has_vnni, floats)
    ranges = sum(p.numel() for n, p in quantized.named_parameters() if n.endswith(("input_low", "_param_storage")))
    return quantized, {**describe(cfg, has_vnni), "float_convs": floats, "samples": len(patches),
                       "trainable_range_values": ranges, "ptq_seconds": round(time.perf_counter() - t0, 1)}


def qat_ir(model: nn.Module, out_xml: Path, lr_side: int = 32) -> Path:
    """Convert the (trained) NNCF model to OpenVINO IR with FakeQuantize, any input size; atomic write."""
    import openvino as ov

    model.eval()
    example = torch.zeros(1, 3, lr_side, lr_side)
    with torch.no_grad():
        converted = ov.convert_model(model, example_input=example, input=[(1, 3, -1, -1)])
    return save_ir(converted, out_xml)
