"""A run's state across processes: what a checkpoint holds besides the weights (optimizers, RNG, sampler,
counters, the evaluation history, the pending evaluation), writing one, and resuming from the latest
complete one, so a restarted job continues exactly where the last checkpoint left it. Pruning keeps the
best-scoring checkpoint, which model_selection best returns as the run's model.

A sharded policy's weights and optimizer state are gathered from every rank to write a checkpoint: rank 0
announces it with GATHER (GATHER_WEIGHTS for the final model) and the followers take part (launch.py).
"""

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.engine.callbacks import TrainerCallbacks
from worker.engine.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    prune,
    remove_incomplete,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from worker.engine.config import RunConfig
from worker.engine.critic import Critic
from worker.engine.data import PromptSampler
from worker.engine.distributed import GATHER, DistContext
from worker.engine.health import HealthMonitor
from worker.engine.optim import Optimizers
from worker.engine.selection import PASS_AT_1, best_step
from worker.engine.sharding import gather_optimizer_state, gather_weights, load_optimizer_state
from worker.engine.update import PPOUpdate
from worker.engine.vllm_rollout import VllmRollout


class RunState:
    """Checkpoint and resume, the part of `Trainer` (trainer.py) that saves and restores its state; the
    attributes below are the Trainer's."""

    config: RunConfig
    callbacks: TrainerCallbacks
    output_dir: Path
    dist: DistContext
    policy: nn.Module
    critic: Critic | None
    sharded: bool
    vllm: VllmRollout | None
    opt: Optimizers
    update: PPOUpdate
    sampler: PromptSampler
    health: HealthMonitor
    step: int
    started: float  # perf_counter() at the start of this attempt
    elapsed_before: float  # seconds spent in earlier attempts of this run (resume)
    counters: dict[str, float]
    evaluations: list[tuple[int, dict[str, float]]]  # (step, eval scores) of every evaluation, in order
    last_eval: dict[str, float]
    pending_eval: dict[str, float] | None  # metrics of a step whose evaluation is to run

    def trainer_state(self, actor_optimizer: dict[str, Any]) -> dict[str, Any]:
        return {
            "actor_optimizer": actor_optimizer,
            "critic_optimizer": self.opt.critic.state_dict() if self.opt.critic else None,
            "schedulers": [s.state_dict() for s in self.opt.schedulers],
            "rng": rng_state(),
            "sampler": self.sampler.state_dict(),
            "health": self.health.state_dict(),
            "counters": dict(self.counters),
            "elapsed_s": self.elapsed_before + time.perf_counter() - self.started,
            "evaluations": self.evaluations,
            "last_eval": self.last_eval,
            "micro_batch_tokens": self.update.micro_batch_tokens,
            "pending_eval": self.pending_eval,
        }

    def resume(self) -> None:
        remove_incomplete(self.output_dir)
        found = list_checkpoints(self.output_dir)
        if not found:
            return
        step, path = found[-1]
        critic_state, state = load_checkpoint(path, self.policy)
        if self.critic is not None and critic_state is not None:
            self.critic.load_state(critic_state)
        if self.sharded:
            load_optimizer_state(self.policy, self.opt.actor, state["actor_optimizer"])
        else:
            self.opt.actor.load_state_dict(state["actor_optimizer"])
        if self.opt.critic is not None:
            self.opt.critic.load_state_dict(state["critic_optimizer"])
        for scheduler, scheduler_state in zip(self.opt.schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(scheduler_state)
        self.sampler.load_state_dict(state["sampler"])
        self.health.load_state_dict(state["health"])
        self.counters, self.elapsed_before = state["counters"], state["elapsed_s"]
        self.last_eval = state["last_eval"]
        # a checkpoint written before the history was kept holds only its best evaluation
        best = state.get("best")
        self.evaluations = state.get("evaluations", [(best[0], {PASS_AT_1: best[1]})] if best else [])
        self.update.micro_batch_tokens = state["micro_batch_tokens"]
        self.pending_eval = state.get("pending_eval")
        set_rng_state(state["rng"])
        self.step = step
        if self.vllm is not None:
            self.vllm.sync(self.policy)
        if self.dist.is_main:  # rank 0 owns the run's files
            self._truncate_metrics(step)
        self.callbacks.on_event("info", f"resumed from checkpoint at step {step}", {"path": str(path)})

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines a crashed attempt wrote after its last checkpoint."""
        path = self.output_dir / "metrics.jsonl"
        if path.exists():
            lines = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
            path.write_text("".join(line + "\n" for line in lines))

    def policy_weights(self) -> dict[str, torch.Tensor] | None:
        """A sharded policy's full weights, gathered from every rank (a collective: rank 0 announces it
        with GATHER or GATHER_WEIGHTS; empty on the followers); None otherwise: the policy saves itself."""
        return gather_weights(self.policy) if self.sharded else None

    def full_state(self) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
        """(weights, actor optimizer state) for a checkpoint; gathered when sharded (GATHER)."""
        weights = self.policy_weights()
        if not self.sharded:
            return weights, self.opt.actor.state_dict()
        return weights, gather_optimizer_state(self.policy, self.opt.actor)

    def checkpoint(self, metrics: dict[str, float]) -> Path:
        if self.sharded:
            self.dist.command(GATHER)
        weights, actor_optimizer = self.full_state()
        critic_state = self.critic.state() if self.critic is not None else None
        state = self.trainer_state(actor_optimizer)
        path = save_checkpoint(self.output_dir, self.step, self.policy, critic_state, state, metrics, weights)
        prune(self.output_dir, self.config.keep_checkpoints, self.best_checkpoint())
        self.callbacks.on_checkpoint(self.step, path, metrics)
        return path

    def pass_history(self) -> list[tuple[int, float]]:
        """[(step, eval/pass@1)] of every evaluation, in order (step 0: the base model)."""
        return [(step, scores[PASS_AT_1]) for step, scores in self.evaluations]

    def best_checkpoint(self) -> int | None:
        """The step of the checkpoint on disk with the best validation pass@1 (the earlier on a tie):
        pruning keeps it, so it stays the best of those that remain until model_selection takes it."""
        return best_step(self.pass_history(), {step for step, _ in list_checkpoints(self.output_dir)})
