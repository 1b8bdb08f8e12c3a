"""Fully sharded data parallel training (``train.parallel = "fsdp"``) with PyTorch's own FSDP2 (``fully_shard``).

Each process holds 1/N of every parameter, gradient and optimizer state; a layer's full weights exist only while
that layer runs. Checkpoints stay the same device- and world-size-independent files as every other run's:
``torch.distributed.checkpoint``'s state-dict API gathers the full model and optimizer state onto rank 0's CPU,
which writes them with the usual atomic protocol, and every process reads them back into its shards on resume. So
an FSDP run resumes bit-exactly, with FSDP, DDP or one process, and its checkpoints generate on any machine.
(Gathering needs the full state to fit in rank 0's host memory, not in one device's: the case FSDP is for.)
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

__all__ = ["full_state", "load_full_state", "shard"]


def shard(model: nn.Module) -> nn.Module:
    """Shard ``model`` in place across the default process group: each layer of every ``nn.ModuleList`` (a GPT's
    blocks, a Transformer's encoder and decoder layers) is one unit, the rest (embeddings, head) the root's."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch 2.5 keeps FSDP2 under its first name
        from torch.distributed._composable.fsdp import fully_shard

    for module in list(model.modules()):
        if isinstance(module, nn.ModuleList):
            for layer in module:
                fully_shard(layer)
    fully_shard(model)
    return model


def _options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _parameter_names(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[str]:
    """The name of each of the optimizer's parameters, in the order ``optimizer.state_dict()`` numbers them."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The full (unsharded) model state and optimizer state, on rank 0's CPU; every process must call it (it
    gathers), and the others get empty dicts. The optimizer state is numbered like ``optimizer.state_dict()``'s."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    # (DCP types its values as a recursive union; these are a model's tensors and an optimizer's state)
    model_state = cast(dict[str, Tensor], get_model_state_dict(model, options=_options()))
    by_name = cast(dict[str, Any], get_optimizer_state_dict(model, optimizer, options=_options()))
    if not by_name:  # not rank 0
        return model_state, {}
    index = {name: i for i, name in enumerate(_parameter_names(optimizer, model))}
    state = {index[name]: values for name, values in by_name["state"].items()}
    groups = [{**g, "params": [index[name] for name in g["params"]]} for g in by_name["param_groups"]]
    return model_state, {"state": state, "param_groups": groups}


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict[str, Tensor], optimizer_state: dict[str, Any]
) -> None:
    """Load full states (as :func:`full_state` returns them, on every process) into the sharded model and
    optimizer: each process keeps its own shard."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, cast(dict[str, Any], model_state), options=_options())
    names = _parameter_names(optimizer, model)
    by_name = {
        "state": {names[i]: values for i, values in optimizer_state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in optimizer_state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, cast(Any, by_name), options=_options())
