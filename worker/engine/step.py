"""One training step, top to bottom: sample and grade (collect), the critic's baselines, the advantages
on the global batch, the PPO update (update.py), then the step's metrics and health checks.

On several ranks each rank samples and grades its shard of the prompts; everything an advantage
estimator reads is gathered first, and each rank keeps its own rows for the update (distributed.py).
"""

import time
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from grading.result import GradeResult
from worker.engine.algorithms import AdvantageInputs, Algorithm, masked_mean
from worker.engine.callbacks import TrainerCallbacks
from worker.engine.config import RunConfig
from worker.engine.critic import Critic, SequenceCriticFit
from worker.engine.data import PromptSampler
from worker.engine.distributed import DistContext
from worker.engine.evaluate import completions
from worker.engine.graders import BatchGrader
from worker.engine.health import HealthMonitor, fingerprint
from worker.engine.memory import peak_memory_mb
from worker.engine.optim import Optimizers
from worker.engine.precision import Precision
from worker.engine.rollout import Rollout, generate
from worker.engine.samples import Sample, keep_samples
from worker.engine.update import PPOUpdate, StepBatch
from worker.engine.vllm_rollout import VllmRollout


class TrainingStep:
    """The step, the part of `Trainer` (trainer.py) that trains; the attributes below are the Trainer's."""

    config: RunConfig
    callbacks: TrainerCallbacks
    dist: DistContext
    device: torch.device
    tokenizer: PreTrainedTokenizerBase
    items: list[dict[str, Any]]
    prompts: list[list[int]]
    sampler: PromptSampler
    grader: BatchGrader
    grading_metrics: dict[str, float]  # the last step's grader/*, reward/* and perf/grading_s
    step_samples: list[Sample]  # the last step's kept completions (rank 0's), until reported
    algorithm: Algorithm
    policy: torch.nn.Module
    precision: Precision
    vllm: VllmRollout | None
    critic: Critic | None
    critic_fit: SequenceCriticFit | None  # SPPO's sequence critic
    opt: Optimizers
    update: PPOUpdate
    local_minibatch_size: int
    health: HealthMonitor
    step: int
    counters: dict[str, float]

    def train_step(self) -> dict[str, float]:
        """Sample and grade, the baselines and advantages, the PPO update, then the step's metrics."""
        self.dist.reseed(self.config.seed, self.step)
        started = time.perf_counter()
        rollout, rewards, _, group_index = self.collect(self.sampler.next_batch())
        all_rewards = self.dist.gather_rows(rewards)  # (B,) of the global batch: the estimators see it all
        rollout_s = time.perf_counter() - started
        train_started = time.perf_counter()
        before = fingerprint(self.opt.actor_params + self.opt.critic_params)
        if self.step == 0 and self.critic is not None:
            self.critic.init_from_success_rate(all_rewards.mean().item())
        values, critic_metrics = self.baselines(rollout, rewards)
        mask = self.dist.gather_rows(rollout.response_mask)  # (B, R) of the global batch
        advantages, returns = self.advantages(all_rewards, mask, group_index, values)
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
        tokens = int(self.dist.sum(rollout.attention_mask.sum()))
        metrics.update(self._step_metrics(all_rewards, mask, advantages, tokens))
        metrics.update(
            {
                "perf/tokens_per_s": tokens / (time.perf_counter() - started),
                "perf/rollout_s": rollout_s,
                "perf/train_s": train_s,
                "perf/peak_memory_mb": peak_memory_mb(self.device),
            }
        )
        metrics.update(self._check_health(metrics, advantages, mask, before))
        return metrics

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
                compute_dtype=self.precision.dtype,
            )
        texts = completions(self.tokenizer, rollout)
        grades = self.grade([self.items[i] for i in rows], texts)
        rewards = torch.tensor([g.reward for g in grades], dtype=torch.float32)
        if self.dist.is_main:
            self.step_samples = keep_samples(
                lambda row: str(self.tokenizer.decode(self.prompts[rows[row]], skip_special_tokens=True)),
                texts, [g.reward for g in grades], [g.sub_rewards for g in grades],
                k=self.config.samples_kept, max_chars=self.config.sample_max_chars,
            )  # fmt: skip
        group_index = torch.arange(len(item_indices), device=self.device).repeat_interleave(group)  # (B,)
        return rollout, rewards.to(self.device), rows, group_index

    def grade(self, items: list[dict[str, Any]], texts: list[str]) -> list[GradeResult]:
        """The rows' grades; grading metrics of the global batch go to `grading_metrics`."""
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
        return grades

    def baselines(
        self, rollout: Rollout, rewards: torch.Tensor
    ) -> tuple[torch.Tensor | None, dict[str, float]]:
        """The critic's output before the update (None without a critic) and its fit's metrics. SPPO's
        critic is fitted here, and each minibatch's baselines are read before that minibatch's critic
        step: a baseline that had seen its own sample's reward would bias the advantage."""
        if self.critic_fit is not None:
            return self.critic_fit(rollout, rewards.float(), self.local_minibatch_size)
        return self.update.critic_values(rollout), {}

    def advantages(
        self,
        rewards: torch.Tensor,
        mask: torch.Tensor,
        group_index: torch.Tensor,
        values: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The algorithm's (advantages, returns) over the global batch: `rewards` (B,) and `mask` (B, R)
        already gathered, this rank's group ids and critic values gathered here."""
        return self.algorithm.compute_advantages(
            AdvantageInputs(
                rewards=rewards,
                response_mask=mask,
                group_index=self.dist.gather_groups(group_index),
                values=None if values is None else self.dist.gather_rows(values),
                gamma=self.config.gae_gamma,
                lam=self.config.gae_lambda,
                grpo_scale_by_std=self.config.grpo_scale_by_std,
            )
        )

    def _step_metrics(
        self, rewards: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, tokens: int
    ) -> dict[str, float]:
        """The global batch's rollout/* metrics and the run's sample and token counts."""
        self.counters["samples"] += rewards.shape[0]
        self.counters["tokens"] += tokens
        return {
            "rollout/reward_mean": rewards.mean().item(),
            "rollout/reward_std": rewards.std(unbiased=False).item(),
            "rollout/accuracy": (rewards >= self.config.pass_threshold).float().mean().item(),
            "rollout/response_length_mean": mask.sum(-1).mean().item(),
            "train/advantage_abs_mean": (advantages.abs() * mask).sum().item() / max(1.0, mask.sum().item()),
            "train/lr": self.opt.actor.param_groups[0]["lr"],
            "perf/samples": self.counters["samples"],
            "perf/tokens": self.counters["tokens"],
        }

    def _check_health(
        self, metrics: dict[str, float], advantages: torch.Tensor, mask: torch.Tensor, before: torch.Tensor
    ) -> dict[str, float]:
        """health/* metrics of the step; its warnings go out as events."""
        after = fingerprint(self.opt.actor_params + self.opt.critic_params)
        health, warnings = self.health.after_step(
            advantages, mask, metrics["train/entropy"], metrics["rollout/reward_mean"], before, after
        )
        for message, data in warnings:
            self.callbacks.on_event("warning", message, data)
        return health


def sampler_gap(rollout: Rollout) -> float:
    """Mean |log-prob the serving engine sampled with − the training forward's| over response tokens."""
    assert rollout.sampler_logprobs is not None and rollout.old_logprobs is not None
    return masked_mean((rollout.sampler_logprobs - rollout.old_logprobs).abs(), rollout.response_mask).item()
