"""PyTorch runtimes: the canonical checkpoint in FP32 on the CPU, in bf16 autocast on a CPU that runs
bf16 natively (AMX-BF16 or AVX512-BF16), and in FP16 on a CUDA GPU."""

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


def _open_cpu_bf16(path: Path, threads: int, scale: int | None) -> Opened:
    import torch

    from compress.core.checkpoint import load_checkpoint

    if threads:
        torch.set_num_threads(threads)
    model = load_checkpoint(path, scale).model.eval().to(memory_format=torch.channels_last)

    def run(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(t).float().contiguous().numpy()

    return Opened(run)


def _native_bf16() -> bool:
    from compress.core.cpu import host_cpu

    return host_cpu().native_bf16


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
PYTORCH_BF16 = Runtime("pytorch-bf16", CHECKPOINT_SUFFIXES, "torch", "cpu", _open_cpu_bf16, bench_extra=True,
                       available=_native_bf16, own_numerics=True,
                       note="PyTorch eager, bf16 autocast and channels_last (CPUs with native bf16)")
PYTORCH_CUDA_FP16 = Runtime("pytorch-cuda-fp16", CHECKPOINT_SUFFIXES, "torch", "cuda", _open_cuda_fp16,
                            bench_extra=True, available=_cuda, own_numerics=True,
                            note="PyTorch eager on a CUDA GPU, FP16")
