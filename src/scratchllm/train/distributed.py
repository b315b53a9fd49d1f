"""Data parallel training under `torchrun`: one process per device, gradients averaged each step."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> DistInfo:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), world)
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info


def average(value: float, info: DistInfo, device: torch.device) -> float:
    """The mean of a float over all processes (for logging losses that match a 1-process run)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item() / info.world_size


def shutdown(info: DistInfo, wait_for_all: bool = False) -> None:
    """Leave the process group (a no-op once left). `wait_for_all`: first wait until every rank is
    done, so that none tears its connections down while a peer still talks through them (gloo
    aborts a process whose worker threads are still busy: "terminate called without an active
    exception", seen once in a few dozen 2-process runs)."""
    if info.enabled and dist.is_initialized():
        if wait_for_all:
            dist.barrier()
        dist.destroy_process_group()
