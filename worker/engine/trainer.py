"""The training loop: rollout -> rewards -> advantages -> PPO epochs -> metrics -> evaluation -> checkpoint.

`run_training` (run.py) builds a `Trainer` and calls `run`. The step itself is `TrainingStep`'s (step.py),
checkpoint and resume `RunState`'s (run_state.py), the PPO update `PPOUpdate`'s (update.py) and the SPPO
critic's fit `SequenceCriticFit`'s (critic.py).

A run with a validation file scores the base model first (step 0), then every `eval_interval` steps and
at the end. An evaluation belongs to the step it follows: a pause that arrives during it checkpoints the
finished step with the evaluation still pending (and the RNG as it was before the evaluation), so the
resumed run evaluates from the same state and writes the same metrics line as an uninterrupted one.
A finished evaluation is checkpointed with its step (one checkpoint when the step's periodic one is due
too), so every evaluated model exists on disk until pruning, which keeps the best; with
`model_selection: best` the run's model (final/) is that best checkpoint (selection.py), and
`early_stopping_patience` ends a run whose validation score has stalled.
"""

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worker.engine.algorithms import get_algorithm
from worker.engine.callbacks import StartInfo, TrainerCallbacks, TrainingResult
from worker.engine.checkpoint import (
    checkpoint_path,
    copy_policy,
    list_checkpoints,
    rng_state,
    save_policy,
    set_rng_state,
)
from worker.engine.config import RunConfig
from worker.engine.context import check_context
from worker.engine.critic import SequenceCriticFit, build_critic
from worker.engine.data import PromptSampler, encode_prompts, load_items, load_validation_items
from worker.engine.distributed import EVAL_STREAM, EVALUATE, GATHER_WEIGHTS, STEP
from worker.engine.distributed import setup as setup_distributed
from worker.engine.evaluate import evaluate_policy, summed_over_ranks, validation_share
from worker.engine.graders import build_grader
from worker.engine.health import HealthMonitor
from worker.engine.optim import build_optimizers
from worker.engine.policy import load_policy, load_tokenizer, resolve_device, trainable_parameters
from worker.engine.precision import enable_tf32, resolve_precision
from worker.engine.rollout import GenerationInterrupted
from worker.engine.run_state import RunState
from worker.engine.samples import Sample
from worker.engine.selection import evaluations_without_improvement
from worker.engine.sharding import shard_model
from worker.engine.step import TrainingStep
from worker.engine.update import PPOUpdate
from worker.engine.vllm_rollout import VllmRollout

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer(TrainingStep, RunState):
    def __init__(self, config: RunConfig, callbacks: TrainerCallbacks) -> None:
        self.config, self.callbacks = config, callbacks
        self.output_dir = Path(config.output_dir)
        seed_everything(config.seed)
        self.dist, self.device = setup_distributed(resolve_device(config.device))
        self.precision = resolve_precision(config, self.device)
        enable_tf32(self.device)
        self.algorithm = get_algorithm(config.algorithm)
        self.grading_metrics: dict[str, float] = {}
        self.step_samples: list[Sample] = []
        self.tokenizer = load_tokenizer(config.model)
        self.items = load_items(config.train_file)
        self.prompts = encode_prompts(self.tokenizer, self.items)
        self.val_items = load_validation_items(config.validation_file, config.eval_max_items)
        check_context(config, self.tokenizer, self.prompts, self.val_items)  # before the models load
        self.sampler = PromptSampler(len(self.items), config.batch_size, config.seed)
        self.total_steps = config.max_steps or config.n_epochs * math.ceil(
            len(self.items) / config.batch_size
        )
        self.eval_interval = (
            int(config.eval_interval) if config.eval_interval != "auto" else max(1, self.total_steps // 5)
        )
        self._build_models()
        self.local_minibatch_size = config.minibatch_size // self.dist.world_size
        self.health = HealthMonitor(config.health_entropy_floor)
        self.step = 0
        self.elapsed_before = 0.0
        self.counters = {"samples": 0.0, "tokens": 0.0}
        self.evaluations = []
        self.last_eval = {}
        self.pending_eval = None
        # last: a Python grader's warm sandboxes are closed by run_training, which only gets a Trainer
        self.grader = build_grader(config.grader, config.grading)

    def _build_models(self) -> None:
        """Policy, critic (when the algorithm has one), their optimizers, the update and the critic's fit."""
        config = self.config
        self.policy = load_policy(config, self.device, self.precision)
        actor_params = trainable_parameters(self.policy)
        self.critic = None
        if self.algorithm.critic is not None:
            self.critic = build_critic(
                config, self.algorithm.critic, self.policy, actor_params, self.device, self.precision
            )
        critic_params = self.critic.trainable_parameters() if self.critic is not None else []
        self.dist.broadcast_parameters(actor_params + critic_params)
        # a fully fine-tuned policy on several ranks is sharded (FSDP2), a LoRA one replicated
        self.sharded = self.dist.active and not config.use_lora
        if self.sharded:
            shard_model(self.policy, self.precision.dtype)
            actor_params = trainable_parameters(self.policy)  # fully_shard replaced them with DTensors
        self.vllm = (
            VllmRollout(config, self.policy, self.device) if config.rollout_backend == "vllm" else None
        )
        self.opt = build_optimizers(
            actor_params,
            critic_params,
            learning_rate=config.learning_rate,
            critic_learning_rate=config.critic_learning_rate,
            weight_decay=config.weight_decay,
        )
        self.update = PPOUpdate(
            self.policy,
            self.critic,
            self.algorithm,
            self.opt,
            temperature=config.temperature,
            clip_epsilon=config.clip_epsilon,
            kl_coef=config.kl_coef,
            entropy_coef=config.entropy_coef,
            value_clip=config.value_clip,
            max_grad_norm=config.max_grad_norm,
            micro_batch_tokens=config.micro_batch_tokens,
            on_warning=lambda message: self.callbacks.on_event("warning", message, None),
            dist=self.dist,
            compute_dtype=self.precision.dtype,
        )
        self.critic_fit = None
        if self.critic is not None and self.critic.level == "sequence":
            assert self.opt.critic is not None
            self.critic_fit = SequenceCriticFit(
                self.critic, self.opt.critic, self.opt.critic_params,
                budget=self.update.budget, dist=self.dist, max_grad_norm=config.max_grad_norm,
            )  # fmt: skip

    def evaluate(self) -> dict[str, float]:
        """Greedy pass@1 at every evaluation; avg@k (k sampled completions per item, k+1 times the cost)
        only where a full picture is kept: at the periodic checkpoints and at the end."""
        full = self.step > 0 and (
            self.step % self.config.checkpoint_interval == 0 or self.step == self.total_steps
        )
        items, counted = self.val_items, len(self.val_items)
        if self.sharded:  # every rank generates with its shard of the policy, for its share of the items
            if self.dist.is_main:
                self.dist.command(EVALUATE)
            # followers' avg@k samples from a stream of their own, the same after a resume
            self.dist.reseed(self.config.seed, self.step, EVAL_STREAM)
            items, counted = validation_share(self.val_items, self.dist)
        result = evaluate_policy(
            self.policy,
            self.tokenizer,
            items,
            self.grader,
            samples=self.config.eval_samples if full else 0,
            temperature=self.config.temperature,
            max_response_tokens=self.config.max_response_tokens,
            top_p=self.config.top_p,
            token_budget=self.update.micro_batch_tokens,
            # the ranks of a sharded policy generate in lockstep: control is polled before the evaluation
            control=None if self.sharded else self.callbacks.control,
            pass_threshold=self.config.pass_threshold,
            compute_dtype=self.precision.dtype,
        )
        if self.sharded:
            threshold = self.config.pass_threshold
            result = summed_over_ranks(result, counted, len(self.val_items), self.dist, threshold)
        scores = result.scores()
        health, warnings = self.health.after_eval(result.pass_at_1)
        for message, data in warnings:
            self.callbacks.on_event("warning", message, data)
        self.evaluations.append((self.step, scores))
        return {**scores, **health}

    # ---- loop ------------------------------------------------------------------------------------
    def run(self) -> TrainingResult:
        self.started = time.perf_counter()
        self.resume()
        self.callbacks.on_start(StartInfo(self.total_steps, self.step, self.output_dir))
        if self.step == 0 and self.val_items:
            self.pending_eval = {}  # the base model's score, before any update
        metrics: dict[str, float] = {}
        while True:
            if self.pending_eval is not None:
                before_eval = rng_state()
                try:
                    signal = self.callbacks.control()
                    if signal != "continue":
                        raise GenerationInterrupted(signal)
                    self.last_eval = self.evaluate()
                except GenerationInterrupted as interrupted:
                    set_rng_state(before_eval)  # the resumed run evaluates from the same state
                    return self.stop(interrupted.signal, self.pending_eval)
                self.callbacks.on_evaluation(self.step, self.last_eval)
                metrics = {**self.pending_eval, **self.last_eval}
                self.pending_eval = None
                self.record(metrics, evaluated=True)
            if self.step >= self.total_steps or self.stalled():
                break
            signal = self.callbacks.control()
            at_step_start = (rng_state(), self.sampler.state_dict())
            try:
                if signal != "continue":
                    raise GenerationInterrupted(signal)
                self.dist.command(STEP)
                metrics = self.train_step()
            except GenerationInterrupted as interrupted:
                set_rng_state(at_step_start[0])  # the unfinished step never happened
                self.sampler.load_state_dict(at_step_start[1])
                return self.stop(interrupted.signal, metrics)
            if self.val_items and (self.step % self.eval_interval == 0 or self.step == self.total_steps):
                self.pending_eval = metrics
            else:
                self.record(metrics)
        return self.finish(metrics)

    def record(self, metrics: dict[str, float], checkpoint: bool = True, evaluated: bool = False) -> None:
        """The step's metrics line and report, then its checkpoint when one is due: periodically, at the
        end, and after an evaluation (model_selection can only return a model that was saved)."""
        metrics["perf/elapsed_s"] = self.elapsed_before + time.perf_counter() - self.started
        with (self.output_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"step": self.step, **metrics}) + "\n")
        if self.step_samples:  # sent once, with the step they were sampled in
            self.callbacks.on_samples(self.step, [sample.to_dict() for sample in self.step_samples])
            self.step_samples = []
        self.callbacks.on_step(self.step, metrics)
        due = evaluated or self.step % self.config.checkpoint_interval == 0 or self.step == self.total_steps
        if checkpoint and self.step > 0 and due:
            self.checkpoint(metrics)

    def stalled(self) -> bool:
        """Early stopping: validation pass@1 has not improved for `early_stopping_patience` evaluations.
        A function of the evaluation history: a run resumed from that evaluation's checkpoint stops too."""
        patience = self.config.early_stopping_patience
        return patience is not None and evaluations_without_improvement(self.pass_history()) >= patience

    def finish(self, metrics: dict[str, float]) -> TrainingResult:
        """Write the run's model to final/: the best checkpoint's weights (model_selection best, when it is
        an earlier step's), else the current ones."""
        if self.step < self.total_steps:
            self.announce_early_stop()
        model_step = self.best_checkpoint() if self.config.model_selection == "best" else None
        if model_step is not None and model_step != self.step:
            final_dir = copy_policy(checkpoint_path(self.output_dir, model_step), self.output_dir / "final")
        else:
            model_step = self.step
            if self.sharded:
                self.dist.command(GATHER_WEIGHTS)
            final_dir = save_policy(self.policy, self.output_dir / "final", self.policy_weights())
        return self.result("completed", metrics, final_dir, model_step)

    def announce_early_stop(self) -> None:
        history = self.pass_history()
        best, score = max(history, key=lambda evaluation: evaluation[1])  # the first of equals
        self.callbacks.on_event(
            "info",
            f"Stopped early at step {self.step} of {self.total_steps}: validation pass@1 has not improved "
            f"for {evaluations_without_improvement(history)} evaluations (early_stopping_patience "
            f"{self.config.early_stopping_patience}); the best, {score:.3f}, was at step {best}",
            {"step": self.step, "best_step": best, "eval/pass@1": score},
        )

    def stop(self, signal: str, metrics: dict[str, float]) -> TrainingResult:
        """Pause checkpoints the last finished step (nothing to keep before the first); cancel keeps
        the metrics of a finished step whose evaluation it interrupted."""
        if signal == "pause":
            if self.step > 0:
                self.checkpoint(metrics)
            return self.result("paused", metrics, None)
        if self.pending_eval is not None and self.step > 0:
            self.pending_eval = None
            self.record(metrics, checkpoint=False)
        return self.result("cancelled", metrics, None)

    def result(
        self, status: Any, metrics: dict[str, float], final_dir: Path | None, model_step: int | None = None
    ) -> TrainingResult:
        checkpoints = [path for _, path in list_checkpoints(self.output_dir)]
        model_eval = dict(self.evaluations).get(model_step, {}) if model_step is not None else {}
        return TrainingResult(
            status, self.step, self.total_steps, metrics, self.last_eval, final_dir, checkpoints,
            model_step, dict(model_eval),
        )  # fmt: skip
