"""Multi-process training under ``torchrun`` (PyTorch's DistributedDataParallel), and nothing of our own.

``torchrun --nproc-per-node N -m compress ...`` starts N processes with ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` set; :func:`ensure_process_group` joins them (Gloo on CPUs, NCCL on GPUs) the first time
a training loop needs it. One process (no ``WORLD_SIZE``, or 1) changes nothing. Every rank runs the
same command on the same data: each draws its own seeded, disjoint stream of patches (its share of the
recipe's global batch), gradients are averaged by DDP, and only rank 0 writes files (:func:`is_writer`).
Multi-node runs are torchrun's own ``--nnodes`` / ``--rdzv-endpoint``.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from compress.core.errors import InputError


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def ranks() -> Ranks:
    """Read from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Ranks()
    return Ranks(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def is_writer() -> bool:
    """Whether this process writes artifacts (rank 0, or the only process)."""
    return ranks().rank == 0


def ensure_process_group(device: str) -> Ranks:
    """Join torchrun's process group once (Gloo for ``cpu``, NCCL for ``cuda``); no-op for one process."""
    r = ranks()
    if r.distributed and not torch.distributed.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return r


def rank0_value(value: object, device: str = "cpu") -> object:
    """``value`` as rank 0 holds it, on every rank (``value`` itself in one process).

    For a decision every rank must take alike, such as which model to train next: each rank computes
    it, rank 0's copy wins, so floating-point ties broken differently cannot split the ranks.
    """
    r = ensure_process_group(device)
    if not r.distributed:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def release_process_group(wait: bool = True) -> None:
    """Leave torchrun's process group, if this process joined one: wait for every rank (``wait``), then
    destroy the group while the interpreter is still whole. A rank that exits with the group alive
    leaves Gloo's worker threads holding tensors that are freed during interpreter finalization, which
    aborts the process (SIGABRT) now and then (pytorch/pytorch#179291). Pass ``wait=False`` on an
    error path, where the other ranks may never reach the barrier; a barrier that fails because a peer
    died does not stop the group from being destroyed."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    try:
        if wait:
            torch.distributed.barrier()
    except RuntimeError:  # DistBackendError: a peer is gone; leave anyway
        pass
    finally:
        torch.distributed.destroy_process_group()


def rank_device(device: str) -> str:
    """``cuda`` becomes this rank's GPU (``cuda:LOCAL_RANK``) under torchrun."""
    if device == "cuda" and ranks().distributed:
        return f"cuda:{ranks().local_rank}"
    return device


def share_of_batch(batch_size: int) -> int:
    """This rank's part of a global batch; the global batch must split evenly over the ranks."""
    r = ranks()
    if batch_size % r.world:
        raise InputError(f"global batch_size {batch_size} does not split over {r.world} processes; "
                         f"use a multiple of {r.world}")
    return batch_size // r.world
