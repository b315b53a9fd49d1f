"""Fully sharded data parallel (PyTorch's FSDP2, `fully_shard`): each of N processes keeps 1/N of the
parameters, gradients and optimizer state, and gathers a block's full weights only while it computes.

    block 0 ... block L-1, then the rest (embeddings, final norm): each a unit that is gathered
    (all-gather) for its forward and backward and whose gradients are reduce-scattered back to shards

Checkpoints stay what a single process writes and reads: the full state dict is gathered to every
rank (on the CPU) and rank 0 writes one model.safetensors; the optimizer state is renumbered from
parameter names to the positions a one-process optimizer uses, so a sharded run resumes in one
process and the other way round.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn


def shard(model: nn.Module, units: Iterable[nn.Module], device: torch.device) -> nn.Module:
    """Shard each unit (a transformer block), then the root (what is left), over all processes on
    `device`'s type (named, or FSDP would pick CUDA whenever the machine has a GPU). In place."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on the CPU, on rank 0 (a collective: every rank calls it; the others get {})."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, names: list[str]) -> dict[str, Any]:
    """The whole optimizer state, keyed as a one-process optimizer keys it: parameter i of `names`
    (the order `build_optimizer` puts parameters in) is state[i]. A collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    full = get_optimizer_state_dict(model, optimizer, options=_options())
    if not full:  # ranks other than 0 get nothing back: rank 0 writes the checkpoint
        return full
    index = {name: i for i, name in enumerate(names)}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in full["param_groups"]]
    return {"state": {index[n]: s for n, s in full["state"].items()}, "param_groups": groups}


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, names: list[str],
                    model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any]) -> None:
    """Put a full (one-process) model and optimizer state into the sharded model and optimizer."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, model_state, options=_options())
    if not optimizer_state["state"]:
        return  # saved before the first step: nothing to load (and DCP would make state with a step of lr 0)
    state = {names[i]: s for i, s in optimizer_state["state"].items()}
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in optimizer_state["param_groups"]]
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups}, options=_options())
