"""The training loop: rollout -> rewards -> advantages -> PPO epochs -> metrics -> evaluation -> checkpoint.

`run_training(config, callbacks)` is the one entry point; the Celery worker and `sppo train` both call it.
It resumes from the latest complete checkpoint under `config.output_dir`, so a restarted job continues
exactly where the last checkpoint left it.

A run with a validation file scores the base model first (step 0), then every `eval_interval` steps and
at the end. An evaluation belongs to the step it follows: a pause that arrives during it checkpoints the
finished step with the evaluation still pending (and the RNG as it was before the evaluation), so the
resumed run evaluates from the same state and writes the same metrics line as an uninterrupted one.
"""

import contextlib
import json
import logging
import math
import random
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worker.engine.algorithms import AdvantageInputs, get_algorithm, masked_mean
from worker.engine.callbacks import StartInfo, TrainerCallbacks, TrainingResult
from worker.engine.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    prune,
    remove_incomplete,
    rng_state,
    save_checkpoint,
    save_policy,
    set_rng_state,
)
from worker.engine.config import RunConfig
from worker.engine.critic import Critic, build_critic
from worker.engine.data import PromptSampler, encode_prompts, load_items
from worker.engine.distributed import EVAL_STREAM, EVALUATE, GATHER, GATHER_WEIGHTS, STEP, in_launched_rank
from worker.engine.distributed import setup as setup_distributed
from worker.engine.evaluate import EvalResult, completions, evaluate_policy
from worker.engine.graders import build_grader
from worker.engine.health import HealthMonitor, fingerprint
from worker.engine.policy import load_policy, load_tokenizer, resolve_device, trainable_parameters
from worker.engine.rollout import GenerationInterrupted, Rollout, generate
from worker.engine.sharding import gather_optimizer_state, gather_weights, load_optimizer_state, shard_model
from worker.engine.update import Optimizers, PPOUpdate, StepBatch
from worker.engine.vllm_rollout import VllmRollout

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _constant(_: int) -> float:
    return 1.0


class Trainer:
    def __init__(self, config: RunConfig, callbacks: TrainerCallbacks) -> None:
        self.config, self.callbacks = config, callbacks
        self.output_dir = Path(config.output_dir)
        seed_everything(config.seed)
        self.dist, self.device = setup_distributed(resolve_device(config.device))
        self.algorithm = get_algorithm(config.algorithm)
        self.grader = build_grader(config.grader, config.grading)
        self.grading_metrics: dict[str, float] = {}
        self.tokenizer = load_tokenizer(config.model)
        self.items = load_items(config.train_file)
        self.prompts = encode_prompts(self.tokenizer, self.items)
        self.val_items = (
            load_items(config.validation_file, "validation_file")[: config.eval_max_items]
            if config.validation_file
            else []
        )
        self.sampler = PromptSampler(len(self.items), config.batch_size, config.seed)
        self.total_steps = config.max_steps or config.n_epochs * math.ceil(
            len(self.items) / config.batch_size
        )
        self.eval_interval = (
            int(config.eval_interval) if config.eval_interval != "auto" else max(1, self.total_steps // 5)
        )
        self.policy = load_policy(config, self.device)
        actor_params = trainable_parameters(self.policy)
        self.critic: Critic | None = None
        if self.algorithm.critic is not None:
            self.critic = build_critic(config, self.algorithm.critic, self.policy, actor_params, self.device)
        critic_params = self.critic.trainable_parameters() if self.critic is not None else []
        self.dist.broadcast_parameters(actor_params + critic_params)
        # a fully fine-tuned policy on several ranks is sharded (FSDP2), a LoRA one replicated
        self.sharded = self.dist.active and not config.use_lora
        if self.sharded:
            shard_model(self.policy)
            actor_params = trainable_parameters(self.policy)  # fully_shard replaced them with DTensors
        self.vllm = (
            VllmRollout(config, self.policy, self.device) if config.rollout_backend == "vllm" else None
        )
        actor_opt = torch.optim.AdamW(actor_params, lr=config.learning_rate, weight_decay=config.weight_decay)
        critic_opt = (
            torch.optim.AdamW(critic_params, lr=config.critic_learning_rate, weight_decay=config.weight_decay)
            if critic_params
            else None
        )
        schedulers = [torch.optim.lr_scheduler.LambdaLR(o, _constant) for o in (actor_opt, critic_opt) if o]
        self.opt = Optimizers(actor_opt, actor_params, critic_opt, critic_params, schedulers)
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
        )
        self.local_minibatch_size = config.minibatch_size // self.dist.world_size
        self.health = HealthMonitor(config.health_entropy_floor)
        self.step = 0
        self.elapsed_before = 0.0  # seconds spent in earlier attempts of this run (resume)
        self.counters = {"samples": 0.0, "tokens": 0.0}
        self.best: tuple[int, float] | None = None  # (step, eval/pass@1)
        self.last_eval: dict[str, float] = {}
        self.pending_eval: dict[str, float] | None = None  # metrics of a step whose evaluation is to run

    # ---- state -----------------------------------------------------------------------------------
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
            "best": self.best,
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
        self.best, self.last_eval = state["best"], state["last_eval"]
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
        prune(self.output_dir, self.config.keep_checkpoints, self.best[0] if self.best else None)
        self.callbacks.on_checkpoint(self.step, path, metrics)
        return path

    # ---- one step --------------------------------------------------------------------------------
    def collect(self, item_indices: list[int]) -> tuple[Rollout, torch.Tensor, list[int], torch.Tensor]:
        """group_size responses per prompt, scored: (rollout, rewards (B,), item index of each row,
        group index of each row). Groups are prompt instances: an item drawn twice is two groups."""
        group = self.config.samples_per_prompt
        item_indices = self.dist.shard(item_indices)
        rows = [i for i in item_indices for _ in range(group)]
        pad_id, eos_id = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        if self.vllm is not None:
            rollout = self.vllm.sample([self.prompts[i] for i in rows], pad_id=pad_id, eos_id=eos_id,
                                       device=self.device)  # fmt: skip
        else:
            rollout = generate(
                self.policy,
                [self.prompts[i] for i in rows],
                pad_id=pad_id,
                eos_id=eos_id,
                max_new_tokens=self.config.max_response_tokens,
                temperature=self.config.temperature,
                top_p=self.config.top_p,
                token_budget=self.config.micro_batch_tokens,
                # ranks generate for different numbers of tokens: a poll inside would leave the others waiting
                control=None if self.dist.active else self.callbacks.control,
            )
        texts = completions(self.tokenizer, rollout)
        rewards = self.grade([self.items[i] for i in rows], texts)
        group_index = torch.arange(len(item_indices), device=self.device).repeat_interleave(group)  # (B,)
        return rollout, rewards.to(self.device), rows, group_index

    def grade(self, items: list[dict[str, Any]], texts: list[str]) -> torch.Tensor:
        """The rows' rewards (B,); grading metrics of the global batch go to `grading_metrics`."""
        started = time.perf_counter()
        grades = self.grader.grade(list(zip(items, texts, strict=True)))
        names = sorted(grades[0].sub_rewards) if grades else []
        # one sum over the ranks: failed gradings, judge tokens, then each sub-grader's reward total
        totals = self.dist.sum(
            torch.tensor(
                [float(sum(not g.ok for g in grades)), float(sum(g.token_usage for g in grades))]
                + [sum(g.sub_rewards[n] for g in grades) for n in names],
                dtype=torch.float64,
                device=self.device,
            )
        )
        samples = len(grades) * self.dist.world_size
        self.grading_metrics = {
            "grader/error_rate": totals[0].item() / samples,
            "grader/judge_tokens": totals[1].item(),
            "perf/grading_s": time.perf_counter() - started,
            **{f"reward/{name}": totals[2 + i].item() / samples for i, name in enumerate(names)},
        }
        return torch.tensor([g.reward for g in grades], dtype=torch.float32)

    def train_step(self) -> dict[str, float]:
        self.dist.reseed(self.config.seed, self.step)
        started = time.perf_counter()
        rollout, rewards, _, group_index = self.collect(self.sampler.next_batch())
        all_rewards = self.dist.gather_rows(rewards)  # (B,) of the global batch: the estimators see it all
        rollout_s = time.perf_counter() - started
        train_started = time.perf_counter()
        before = fingerprint(self.opt.actor_params + self.opt.critic_params)
        if self.step == 0 and self.critic is not None:
            self.critic.init_from_success_rate(all_rewards.mean().item())
        critic_metrics: dict[str, float] = {}
        if self.critic is not None and self.critic.level == "sequence":
            values: torch.Tensor | None
            values, critic_metrics = self.update.fit_sequence_critic(
                rollout, rewards.float(), self.local_minibatch_size
            )
        else:
            values = self.update.critic_values(rollout)
        mask = self.dist.gather_rows(rollout.response_mask)
        advantages, returns = self.algorithm.compute_advantages(
            AdvantageInputs(
                rewards=all_rewards,
                response_mask=mask,
                group_index=self.dist.gather_groups(group_index),
                values=None if values is None else self.dist.gather_rows(values),
                gamma=self.config.gae_gamma,
                lam=self.config.gae_lambda,
                grpo_scale_by_std=self.config.grpo_scale_by_std,
            )
        )
        width = rollout.response_mask.shape[1]
        batch = StepBatch(
            rollout,
            self.dist.local_rows(advantages, width),
            self.dist.local_rows(returns, width),
            values if self.algorithm.critic == "token" else None,
            self.update.reference_logprobs(rollout),
        )
        metrics = self.update.run(batch, self.config.ppo_epochs, self.local_minibatch_size)
        metrics.update(critic_metrics)
        metrics.update(self.grading_metrics)
        if self.vllm is not None:
            self.vllm.sync(self.policy)
        if rollout.sampler_logprobs is not None:
            metrics["rollout/sampler_logprob_gap"] = sampler_gap(rollout)
        train_s = time.perf_counter() - train_started
        self.step += 1
        samples, tokens = all_rewards.shape[0], int(self.dist.sum(rollout.attention_mask.sum()))
        self.counters["samples"] += samples
        self.counters["tokens"] += tokens
        metrics.update(
            {
                "rollout/reward_mean": all_rewards.mean().item(),
                "rollout/reward_std": all_rewards.std(unbiased=False).item(),
                "rollout/accuracy": (all_rewards >= self.config.pass_threshold).float().mean().item(),
                "rollout/response_length_mean": mask.sum(-1).mean().item(),
                "train/advantage_abs_mean": (advantages.abs() * mask).sum().item()
                / max(1.0, mask.sum().item()),
                "train/lr": self.opt.actor.param_groups[0]["lr"],
                "perf/samples": self.counters["samples"],
                "perf/tokens": self.counters["tokens"],
                "perf/tokens_per_s": tokens / (time.perf_counter() - started),
                "perf/rollout_s": rollout_s,
                "perf/train_s": train_s,
                "perf/peak_memory_mb": peak_memory_mb(self.device),
            }
        )
        health, warnings = self.health.after_step(
            advantages,
            mask,
            metrics["train/entropy"],
            metrics["rollout/reward_mean"],
            before,
            fingerprint(self.opt.actor_params + self.opt.critic_params),
        )
        metrics.update(health)
        for message, data in warnings:
            self.callbacks.on_event("warning", message, data)
        return metrics

    def evaluate(self) -> dict[str, float]:
        """Greedy pass@1 at every evaluation; avg@k (k sampled completions per item, k+1 times the cost)
        only where a full picture is kept: at checkpoints and at the end."""
        full = self.step > 0 and (
            self.step % self.config.checkpoint_interval == 0 or self.step == self.total_steps
        )
        items, counted = self.val_items, len(self.val_items)
        if self.sharded:  # every rank generates with its shard of the policy, for its share of the items
            if self.dist.is_main:
                self.dist.command(EVALUATE)
            # followers' avg@k samples from a stream of their own, the same after a resume
            self.dist.reseed(self.config.seed, self.step, EVAL_STREAM)
            items, counted = self._validation_share()
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
        )
        if self.sharded:
            result = self._summed_over_ranks(result, counted)
        scores = result.scores()
        health, warnings = self.health.after_eval(result.pass_at_1)
        for message, data in warnings:
            self.callbacks.on_event("warning", message, data)
        if self.best is None or result.pass_at_1 > self.best[1]:
            self.best = (self.step, result.pass_at_1)
        return {**scores, **health}

    def _validation_share(self) -> tuple[list[dict[str, Any]], int]:
        """This rank's contiguous share of the validation items and how many of them count: the ranks
        generate in lockstep, so every share is as long, the last one filled up with uncounted copies of
        the last item."""
        per_rank = -(-len(self.val_items) // self.dist.world_size)
        mine = self.val_items[self.dist.rank * per_rank : (self.dist.rank + 1) * per_rank]
        return mine + [self.val_items[-1]] * (per_rank - len(mine)), len(mine)

    def _summed_over_ranks(self, result: EvalResult, counted: int) -> EvalResult:
        """pass@1 and avg@k over every rank's counted items (per-item results stay with their rank)."""
        mine = result.items[:counted]
        threshold = self.config.pass_threshold
        totals = self.dist.sum_scalars(
            {
                "pass": float(sum(item["passed"] for item in mine)),
                "reward": float(sum(item["reward"] for item in mine)),
                "avg": sum(sum(s >= threshold for s in item["sample_rewards"]) / result.k for item in mine)
                if result.k
                else 0.0,
            }
        )
        n = len(self.val_items)
        return EvalResult(
            pass_at_1=totals["pass"] / n,
            avg_at_k=totals["avg"] / n,
            k=result.k,
            reward_mean=totals["reward"] / n,
        )

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
                self.record(metrics)
            if self.step >= self.total_steps:
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
        if self.sharded:
            self.dist.command(GATHER_WEIGHTS)
        final_dir = save_policy(self.policy, self.output_dir / "final", self.policy_weights())
        return self.result("completed", metrics, final_dir)

    def record(self, metrics: dict[str, float], checkpoint: bool = True) -> None:
        """The step's metrics line and report, then its checkpoint when one is due."""
        metrics["perf/elapsed_s"] = self.elapsed_before + time.perf_counter() - self.started
        with (self.output_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"step": self.step, **metrics}) + "\n")
        self.callbacks.on_step(self.step, metrics)
        due = self.step % self.config.checkpoint_interval == 0 or self.step == self.total_steps
        if checkpoint and self.step > 0 and due:
            self.checkpoint(metrics)

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

    def result(self, status: Any, metrics: dict[str, float], final_dir: Path | None) -> TrainingResult:
        checkpoints = [path for _, path in list_checkpoints(self.output_dir)]
        return TrainingResult(
            status, self.step, self.total_steps, metrics, self.last_eval, final_dir, checkpoints
        )


def sampler_gap(rollout: Rollout) -> float:
    """Mean |log-prob the serving engine sampled with − the training forward's| over response tokens."""
    assert rollout.sampler_logprobs is not None and rollout.old_logprobs is not None
    return masked_mean((rollout.sampler_logprobs - rollout.old_logprobs).abs(), rollout.response_mask).item()


def peak_memory_mb(device: torch.device) -> float:
    """The peak since reset_peak_memory() (the run's start), not the worker process's lifetime peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:  # Linux: VmHWM is the resident peak, and clear_refs (below) resets it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reset_peak_memory() -> None:
    """Start a run's peak-memory count afresh: a worker process runs many jobs one after another."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    # "5" resets VmHWM to the current RSS; elsewhere (not Linux, not allowed) the peak stays the process's
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def run_training(config: RunConfig, callbacks: TrainerCallbacks | None = None) -> TrainingResult:
    """Train (or resume) the run described by `config`; see TrainerCallbacks for reporting and control.
    With n_devices > 1 the run goes to torchrun's processes, whose rank 0 relays the callbacks here."""
    if config.n_devices > 1 and not in_launched_rank():
        from worker.engine.launch import launch  # launch.py imports this module for its ranks

        return launch(config, callbacks or TrainerCallbacks())
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    config.to_yaml(Path(config.output_dir) / "config.yaml")
    reset_peak_memory()
    trainer = Trainer(config, callbacks or TrainerCallbacks())
    try:
        return trainer.run()
    finally:
        trainer.grader.close()
        if trainer.vllm is not None:
            trainer.vllm.close()
