"""Multi-process training under ``torchrun``: gloo on CPU, NCCL on CUDA; one process is the default."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

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


def setup_distributed() -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE, RANK, MASTER_ADDR...)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size())
