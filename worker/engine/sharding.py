"""Fully sharded data parallel (FSDP2) for full fine-tuning on several ranks.

A fully fine-tuned policy replicated on every rank costs each device 12-16 bytes per parameter (weights,
gradients, Adam's two moments): ~110 GB for a 7B policy, more than one GPU holds. With `use_lora: false`
and n_devices > 1, `torch.distributed.fsdp.fully_shard` splits every transformer block's parameters (and
the root's: embeddings, final norm, head) across the ranks; a block's weights are all-gathered just
before its forward or backward and freed after, gradients arrive reduce-scattered, and each rank keeps
1/N of weights, gradients and optimizer state. A LoRA policy stays replicated (distributed.py): its
frozen base is read-only and its adapter is small.

Every forward and backward of a sharded model is a collective, which the rest of the engine honours:
- all ranks run the same number of forwards and backwards in the same order: rollout chunks and update
  micro-batches are cut by the widest rank's row width, `generate` runs with `synced_gpus` (a rank whose
  rows are done keeps stepping until every rank's are) and with the weights kept gathered (`gathered`),
  the ranks share an evaluation's items (rank 0 sends EVALUATE), and a checkpoint gathers the full state
  to rank 0 (GATHER; GATHER_WEIGHTS for the final model);
- FSDP averages gradients over ranks while the engine's loss weights already make their *sum* the global
  minibatch's token-mean, so the policy loss is scaled by the world size (`set_gradient_divide_factor(1)`
  would say it directly, but needs the PREMUL_SUM reduction, which gloo lacks);
- checkpoints hold the full weights and the optimizer state in `Optimizer.state_dict()`'s layout, the same
  files a single process writes, so a run resumes on any number of ranks.
The critic stays replicated: a prompt-only critic is small next to the policy (the paper: 1.5B beside 7B).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

# gathered to rank 0 only, on the CPU: the full state never has to fit on one device twice
GATHER_TO_RANK0 = StateDictOptions(full_state_dict=True, cpu_offload=True)
# optimizer state: every rank passes the full state (memory-mapped from the checkpoint) and keeps its shard
FROM_FULL = StateDictOptions(full_state_dict=True, strict=False)
# weights: rank 0 alone reads them and broadcasts, one host copy instead of one per rank
FROM_RANK0 = StateDictOptions(full_state_dict=True, strict=False, broadcast_from_rank0=True)


def shard_model(model: nn.Module, compute_dtype: torch.dtype = torch.float32) -> None:
    """fully_shard each transformer block (HF lists their classes in `_no_split_modules`), then the root.

    With a bf16 `compute_dtype` the float32 shards (the optimizer's master weights) are all-gathered as
    bf16, and gradients reduce-scattered in float32 into float32 shards (precision.py).
    """
    policy = MixedPrecisionPolicy()  # float32: no casts at all
    if compute_dtype != torch.float32:
        policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


@contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """A sharded model keeps each block's full weights from its first forward to the end of the block
    (generation): one all-gather per block instead of one per block per generated token, for the
    memory of one full copy of the weights while it lasts. Other models are left as they are."""
    if not isinstance(model, FSDPModule):  # is_sharded, in the form that narrows the type
        yield
        return
    model.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()
        model.set_reshard_after_forward(True)
        # FSDP's own default for the root: backward needs its weights again right after the forward
        model.set_reshard_after_forward(False, recurse=False)


def full_value(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor: a DTensor's full value (e.g. the norm clip_grad_norm_ returns for sharded grads)."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def local_part(value: torch.Tensor) -> torch.Tensor:
    """The values this rank holds: a DTensor's local shard, any other tensor itself."""
    return value.to_local() if isinstance(value, DTensor) else value


def sum_over_shards(rows: torch.Tensor, parameters: list[nn.Parameter]) -> torch.Tensor:
    """Per-parameter sums (N, k) computed on local shards, completed over ranks for the sharded rows."""
    sharded = [i for i, p in enumerate(parameters) if isinstance(p, DTensor)]
    if not sharded:
        return rows
    part = rows[sharded].to(local_part(parameters[sharded[0]]).device)
    dist.all_reduce(part)
    rows[sharded] = part.to(rows.device)
    return rows


def gather_weights(model: nn.Module) -> dict[str, Any]:
    """Collective (every rank calls it): the full weights on rank 0's CPU, an empty dict elsewhere."""
    weights = get_model_state_dict(model, options=GATHER_TO_RANK0)
    # a tied weight (the head sharing the embeddings) is saved once, under its first name, as
    # save_pretrained does for an unsharded model: the gathered copies no longer share storage
    tied = tied_names(model)
    return {name: tensor for name, tensor in weights.items() if name not in tied}


def gather_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Collective: the full optimizer state in `optimizer.state_dict()`'s layout on rank 0's CPU, an empty
    dict elsewhere."""
    by_name = get_optimizer_state_dict(model, optimizer, options=GATHER_TO_RANK0)
    return _by_index(by_name, _parameter_names(model, optimizer)) if by_name else {}


def tied_names(model: nn.Module) -> set[str]:
    """Names under which a parameter appears a second time (a head tied to the embeddings)."""
    once = dict(model.named_parameters()).keys()
    return {name for name, _ in model.named_parameters(remove_duplicate=False)} - once


def load_weights(model: nn.Module, weights: dict[str, Any]) -> Any:
    """Collective: rank 0 passes the full weights (the others an empty dict), every rank keeps its shard.
    Returns the missing and unexpected keys."""
    return set_model_state_dict(model, weights, options=FROM_RANK0)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Collective: each rank passes the full state in `optimizer.state_dict()`'s layout, keeps its shard."""
    by_name = _by_name(state, _parameter_names(model, optimizer))
    set_optimizer_state_dict(model, optimizer, by_name, options=FROM_FULL)


def _parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The optimizer's parameters by name, in its order (what Optimizer.state_dict() numbers them by)."""
    name_of = {parameter: name for name, parameter in model.named_parameters()}
    return [name_of[parameter] for group in optimizer.param_groups for parameter in group["params"]]


def _by_index(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """torch.distributed.checkpoint's name-keyed optimizer state -> Optimizer.state_dict()'s index keys."""
    index = {name: i for i, name in enumerate(names)}
    return {
        "state": {index[name]: value for name, value in state["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]],
    }


def _by_name(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The inverse of _by_index."""
    return {
        "state": {names[i]: value for i, value in state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
    }
