"""PyTorch runtimes: the canonical checkpoint in FP32 on the CPU, and FP16 on a CUDA GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.core.infer import torch_upscaler
from export.runtimes.base import Opened, Runtime

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")


def _open_cpu(path: Path, threads: int, scale: int | None) -> Opened:
    import torch

    from compress.core.checkpoint import load_checkpoint

    if threads:
        torch.set_num_threads(threads)
    return Opened(torch_upscaler(load_checkpoint(path, scale).model))


def _open_cuda_fp16(path: Path, threads: int, scale: int | None) -> Opened:
    import torch

    from compress.core.checkpoint import load_checkpoint

    model = load_checkpoint(path, scale).model.half().cuda().eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x).cuda().half()).float().cpu().numpy()

    return Opened(run, torch.cuda.synchronize)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


PYTORCH = Runtime("pytorch", CHECKPOINT_SUFFIXES, "torch", "cpu", _open_cpu, primary=True,
                  note="PyTorch eager, FP32")
PYTORCH_CUDA_FP16 = Runtime("pytorch-cuda-fp16", CHECKPOINT_SUFFIXES, "torch", "cuda", _open_cuda_fp16,
                            bench_extra=True, available=_cuda, note="PyTorch eager on a CUDA GPU, FP16")
