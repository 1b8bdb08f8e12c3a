"""Multi-process training under ``torchrun``: gloo on CPU, NCCL on CUDA (one GPU per process); one process is the
default."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from qkv.devices import resolve_device

__all__ = ["DistributedContext", "setup_distributed"]


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def rows(self, batch_size: int) -> slice:
        """This process's rows of a global batch of ``batch_size``."""
        per_rank = batch_size // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(device: str | torch.device = "auto") -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK, ...).

    The backend follows the device the run trains on (``train.device``): NCCL when it is a GPU, each process on its
    ``LOCAL_RANK`` GPU, and gloo on the CPU (also on a machine that has GPUs but trains on its CPU).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    resolved = resolve_device(device, what="train.device")
    if not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size())
