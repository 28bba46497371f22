"""The PPO update of one step: epochs over shuffled minibatches, gradient accumulation over micro-batches
sized by a token budget, actor and critic each with their own optimizer and gradient clipping.

Losses are weighted so a minibatch's gradient does not depend on how it is cut into micro-batches:
the policy loss is a token-mean over the whole minibatch, the sequence critic loss a sample-mean.
That is what makes the OOM fallback (halve the micro-batch, retry) give the same result.
"""

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from worker.engine.algorithms import Algorithm, clipped_policy_loss, masked_mean
from worker.engine.batching import micro_batches
from worker.engine.critic import Critic
from worker.engine.errors import OutOfMemoryError, TrainingDivergedError
from worker.engine.rollout import Rollout, response_logprobs

logger = logging.getLogger(__name__)


@dataclass
class StepBatch:
    """One step's samples with everything the update reads. B samples, R response columns."""

    rollout: Rollout
    advantages: torch.Tensor  # (B, R)
    returns: torch.Tensor  # (B,) sequence critic or (B, R) token critic
    old_values: torch.Tensor | None  # (B, R) token critic (value clipping); None otherwise
    ref_logprobs: torch.Tensor | None  # (B, R) when a KL penalty is on


@dataclass
class Optimizers:
    actor: torch.optim.Optimizer
    actor_params: list[nn.Parameter]
    critic: torch.optim.Optimizer | None
    critic_params: list[nn.Parameter]
    schedulers: list[torch.optim.lr_scheduler.LambdaLR]


class PPOUpdate:
    def __init__(
        self,
        policy: nn.Module,
        critic: Critic | None,
        algorithm: Algorithm,
        optimizers: Optimizers,
        *,
        temperature: float,
        clip_epsilon: float,
        kl_coef: float,
        entropy_coef: float,
        value_clip: float,
        max_grad_norm: float,
        micro_batch_tokens: int,
        on_warning: Callable[[str], None],
    ) -> None:
        self.policy, self.critic, self.algorithm, self.opt = policy, critic, algorithm, optimizers
        self.temperature, self.clip_epsilon, self.kl_coef = temperature, clip_epsilon, kl_coef
        self.entropy_coef, self.value_clip, self.max_grad_norm = entropy_coef, value_clip, max_grad_norm
        self.micro_batch_tokens = micro_batch_tokens
        self.on_warning = on_warning

    def run(self, batch: StepBatch, ppo_epochs: int, minibatch_size: int) -> dict[str, float]:
        """All PPO epochs of one step; returns the means of the per-minibatch metrics."""
        num_samples = batch.rollout.input_ids.shape[0]
        totals: dict[str, list[float]] = defaultdict(list)
        for _ in range(ppo_epochs):
            permutation = torch.randperm(num_samples)
            for start in range(0, num_samples, minibatch_size):
                mb_inds = permutation[start : start + minibatch_size]
                for name, value in self._minibatch_with_oom_retry(batch, mb_inds).items():
                    totals[name].append(value)
        return {name: sum(values) / len(values) for name, values in totals.items()}

    def _minibatch_with_oom_retry(self, batch: StepBatch, mb_inds: torch.Tensor) -> dict[str, float]:
        row_tokens = batch.rollout.input_ids.shape[1]
        while True:
            try:
                return self._minibatch(batch, mb_inds)
            except torch.cuda.OutOfMemoryError:
                self.opt.actor.zero_grad(set_to_none=True)
                if self.opt.critic is not None:
                    self.opt.critic.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                if self.micro_batch_tokens <= row_tokens:
                    raise OutOfMemoryError(
                        "a single sample does not fit in GPU memory: lower max_response_tokens, "
                        "use a smaller model, or use a GPU with more memory"
                    ) from None
                self.micro_batch_tokens //= 2
                self.on_warning(
                    f"out of GPU memory: retrying with micro_batch_tokens={self.micro_batch_tokens}"
                )

    def _minibatch(self, batch: StepBatch, mb_inds: torch.Tensor) -> dict[str, float]:
        rollout = batch.rollout
        prompt_length = rollout.prompt_length
        mb_tokens = rollout.response_mask[mb_inds].sum().clamp(min=1)
        mb_size = len(mb_inds)
        self.opt.actor.zero_grad(set_to_none=True)
        if self.opt.critic is not None:
            self.opt.critic.zero_grad(set_to_none=True)
        stats: dict[str, float] = defaultdict(float)
        for rows in micro_batches(mb_size, rollout.input_ids.shape[1], self.micro_batch_tokens):
            inds = mb_inds[rows]
            mb_input_ids, mb_attention = rollout.input_ids[inds], rollout.attention_mask[inds]
            mb_mask = rollout.response_mask[inds]  # (b, R)
            token_weight = (mb_mask.sum() / mb_tokens).item()  # share of the minibatch's tokens
            logprobs, entropy = response_logprobs(
                self.policy, mb_input_ids, mb_attention, prompt_length, self.temperature, with_entropy=True
            )
            assert entropy is not None
            pg_loss, pg_metrics = clipped_policy_loss(
                logprobs,
                rollout.old_logprobs[inds],
                batch.advantages[inds],
                mb_mask,
                self.clip_epsilon,
                ref_logprobs=None if batch.ref_logprobs is None else batch.ref_logprobs[inds],
                kl_coef=self.kl_coef,
            )
            entropy_mean = masked_mean(entropy, mb_mask)
            loss = pg_loss - self.entropy_coef * entropy_mean
            _check_finite(loss, "policy")
            (loss * token_weight).backward()  # type: ignore[no-untyped-call]
            stats["train/policy_loss"] += pg_loss.item() * token_weight
            stats["train/entropy"] += entropy_mean.item() * token_weight
            for name, value in pg_metrics.items():
                stats[f"train/{name}"] += value * token_weight
            if self.critic is not None and self.algorithm.critic_loss is not None:
                values = self.critic(mb_input_ids, mb_attention, prompt_length)  # (b,) or (b, R)
                if self.critic.level == "sequence":
                    critic_loss, critic_metrics = self.algorithm.critic_loss(values, batch.returns[inds])
                    weight = len(inds) / mb_size
                else:
                    assert batch.old_values is not None
                    critic_loss, critic_metrics = self.algorithm.critic_loss(
                        values, batch.old_values[inds], batch.returns[inds], mb_mask, self.value_clip
                    )
                    weight = token_weight
                _check_finite(critic_loss, "critic")
                (critic_loss * weight).backward()  # type: ignore[no-untyped-call]
                stats["train/critic_loss"] += critic_loss.item() * weight
                for name, value in critic_metrics.items():
                    stats[f"train/{name}"] += value * weight
        grad_norm = nn.utils.clip_grad_norm_(self.opt.actor_params, self.max_grad_norm)
        _check_finite(grad_norm, "policy gradient")
        self.opt.actor.step()
        if self.opt.critic is not None:
            nn.utils.clip_grad_norm_(self.opt.critic_params, self.max_grad_norm)
            self.opt.critic.step()
        for scheduler in self.opt.schedulers:
            scheduler.step()
        stats["train/grad_norm"] = grad_norm.item()
        return dict(stats)


def _check_finite(value: torch.Tensor, what: str) -> None:
    if not torch.isfinite(value).all():
        raise TrainingDivergedError(
            f"the {what} loss became {value.item()}: training stopped instead of updating on garbage. "
            "Lower the learning rate (learning_rate_multiplier) or check the rewards."
        )
