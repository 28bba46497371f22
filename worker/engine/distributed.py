"""Data-parallel training over the devices of one host: the rank's place in the job and its collectives.

`torchrun` (torch.distributed.run, started by `launch.py`) runs one process per device; every rank holds
a full replica of the critic and of a LoRA policy (a fully fine-tuned policy is sharded: sharding.py).
A step's prompts are split into contiguous, equal shards, one per rank (whole prompts, so a GRPO group
of N samples never spans two ranks); each rank samples and grades its shard. Everything an advantage
estimator reads (rewards, response masks, group indices, critic values) is all-gathered first, so SPPO,
GRPO, PPO-GAE and REINFORCE compute on the global batch exactly as one process would, and each rank
keeps its own rows. In the update, each rank runs its share of every minibatch and the gradients are
summed across ranks before clipping:

    grad = Σ_ranks Σ_local tokens ∇ℓ_t / N_tokens(global minibatch)

i.e. the token-mean over the global minibatch (sample-mean for the sequence critic), the same loss one
process would take. That is DistributedDataParallel's all-reduce, written out: DDP's wrapper would hide
the PeftModel from `generate` and `save_pretrained`, and its bucketed overlap buys little for a LoRA
adapter's few megabytes of gradients. A sharded policy's gradients are reduce-scattered by FSDP instead.

Rank 0 drives the run (callbacks, evaluation, checkpoints, metrics.jsonl); the other ranks ("followers")
only train: before each step rank 0 broadcasts a command, STEP or STOP. Evaluating and checkpointing a
sharded policy are collectives, so rank 0 then also sends EVALUATE and GATHER (GATHER_WEIGHTS for the
final model). Followers re-seed their sampling RNG from (seed, step, rank) at every step, so a run
resumed on the same number of ranks continues exactly without saving their RNG; rank 0's RNG is in the
checkpoint as in a single-process run.
"""

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

# Followers wait in a collective while rank 0 evaluates and checkpoints alone, so the timeout must cover
# that. A rank that dies is noticed sooner: torchrun's agent sees its exit and stops the other ranks.
PROCESS_GROUP_TIMEOUT = timedelta(minutes=30)
STOP, STEP, EVALUATE, GATHER, GATHER_WEIGHTS = 0, 1, 2, 3, 4
FOLLOWER_SEED_STRIDE = 1_000_003  # a prime: (seed, step, rank) map to distinct seeds for any sane run
EVAL_STREAM = 1
CPU = torch.device("cpu")


@dataclass(frozen=True)
class DistContext:
    """This process's rank among `world_size`; with world_size 1 every collective is the identity."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = CPU

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list[int]) -> list[int]:
        """This rank's contiguous share of a step's prompts (the batch size divides by world_size)."""
        size = len(items) // self.world_size
        return items[self.rank * size : (self.rank + 1) * size]

    def command(self, command: int) -> int:
        """Rank 0's `command` (STOP, STEP, EVALUATE, GATHER, GATHER_WEIGHTS), as every rank receives it;
        the followers' argument is unused."""
        if not self.active:
            return command
        value = torch.tensor([command], device=self.device)
        dist.broadcast(value, src=0)
        return int(value.item())

    def reseed(self, seed: int, step: int, stream: int = 0) -> None:
        """Followers sample from a stream fixed by (seed, step, rank, stream), so a resume needs no saved
        state; stream 0 is a step's rollouts, EVAL_STREAM the evaluation after it (a sharded policy)."""
        if self.active and not self.is_main:
            position = (seed * FOLLOWER_SEED_STRIDE + step) * self.world_size + self.rank
            torch.manual_seed(position + stream * FOLLOWER_SEED_STRIDE**2)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """Σ over ranks of a tensor (a copy; the input is left as it is)."""
        if not self.active:
            return value
        total = value.detach().clone()
        dist.all_reduce(total)
        return total

    def sum_scalars(self, values: dict[str, float]) -> dict[str, float]:
        """Σ over ranks of each value, in one all-reduce (every rank passes the same names)."""
        if not self.active:
            return values
        names = sorted(values)
        totals = self.sum(torch.tensor([values[n] for n in names], dtype=torch.float64, device=self.device))
        return dict(zip(names, totals.tolist(), strict=True))

    def reduce_gradients(self, params: list[nn.Parameter]) -> None:
        """Sum the gradients of `params` over ranks in one flat all-reduce (a missing gradient counts 0)."""
        if not self.active or not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for param in params:
            size = param.numel()
            param.grad = flat[offset : offset + size].view_as(param).clone()
            offset += size

    def broadcast_parameters(self, params: list[nn.Parameter]) -> None:
        """Rank 0's values of `params` on every rank: replicas start identical (GPU init may not be)."""
        if not self.active:
            return
        with torch.no_grad():
            for param in params:
                dist.broadcast(param.data, src=0)

    def gather_rows(self, value: torch.Tensor) -> torch.Tensor:
        """Every rank's rows in rank order, (world_size * b, ...); dimension 1 (response columns, which
        differ per rank) is right-padded with zeros to the widest rank's."""
        if not self.active:
            return value
        width = value.shape[1] if value.dim() > 1 else 0
        widest = self.max_int(width)
        if value.dim() > 1 and width < widest:
            pad = value.new_zeros((value.shape[0], widest - width, *value.shape[2:]))
            value = torch.cat([value, pad], dim=1)
        parts = [torch.empty_like(value) for _ in range(self.world_size)]
        dist.all_gather(parts, value.contiguous())
        return torch.cat(parts)

    def gather_groups(self, group_index: torch.Tensor) -> torch.Tensor:
        """Global group ids (B,): each rank's local ids offset by the groups of the ranks before it."""
        if not self.active:
            return group_index
        groups_per_rank = int(group_index.max().item()) + 1
        return self.gather_rows(group_index + self.rank * groups_per_rank)

    def local_rows(self, value: torch.Tensor, width: int) -> torch.Tensor:
        """This rank's rows of a gathered tensor, cut back to its own `width` response columns."""
        if not self.active:
            return value
        rows = value.shape[0] // self.world_size
        mine = value[self.rank * rows : (self.rank + 1) * rows]
        return mine[:, :width] if mine.dim() > 1 else mine

    def max_int(self, value: int) -> int:
        """The largest `value` over ranks."""
        return max_over_ranks(value, self.device) if self.active else value


def max_over_ranks(value: int, device: torch.device) -> int:
    """The largest `value` over the ranks of the process group (collective; nccl wants `device` a GPU)."""
    top = torch.tensor([value], device=device)
    dist.all_reduce(top, op=dist.ReduceOp.MAX)
    return int(top.item())


def setup(device: torch.device) -> tuple[DistContext, torch.device]:
    """This process's DistContext and device. Under torchrun (WORLD_SIZE > 1) it joins the process
    group (gloo on CPU, nccl on CUDA) and takes the CUDA device of its local rank."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistContext(device=device), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=PROCESS_GROUP_TIMEOUT)
    return DistContext(rank=rank, world_size=world_size, device=device), device


def in_launched_rank() -> bool:
    """True inside a process torchrun started (it sets TORCHELASTIC_RUN_ID for every rank)."""
    return "TORCHELASTIC_RUN_ID" in os.environ
