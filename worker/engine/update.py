"""The PPO update of one step: epochs over shuffled minibatches, gradient accumulation over micro-batches
sized by a token budget, actor and critic each with their own optimizer and gradient clipping.

Losses are weighted so a minibatch's gradient does not depend on how it is cut into micro-batches:
the policy loss is a token-mean over the whole minibatch, the sequence critic loss a sample-mean.
That is what makes the OOM fallback (halve the micro-batch, retry) give the same result; every forward
of the step (old and reference log-probs, critic values, the update itself) runs under that retry.

Old log-probs cost no extra forward for the first minibatch of the first epoch: its training forward
runs on the pre-update weights, so its detached log-probs are the old ones and its ratio is exactly 1.
Only the other rows get a no-grad forward, and none when one minibatch holds the whole step.
The sequence critic (SPPO) reads the prompt alone, so it is fitted in one pass per step (one optimizer
step per minibatch, in row order) instead of once per PPO epoch, and that pass's forwards also give the
advantages' baselines: each sample's value is read before the critic has trained on that sample.
"""

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import torch
from peft import PeftModel
from torch import nn

from worker.engine.algorithms import Algorithm, clipped_policy_loss, critic_bce_loss, masked_mean
from worker.engine.batching import micro_batches
from worker.engine.critic import Critic
from worker.engine.distributed import DistContext
from worker.engine.errors import OutOfMemoryError, TrainingDivergedError
from worker.engine.rollout import Rollout, response_logprobs
from worker.engine.sharding import full_value, is_sharded

logger = logging.getLogger(__name__)
T = TypeVar("T")


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
        dist: DistContext,
    ) -> None:
        self.policy, self.critic, self.algorithm, self.opt = policy, critic, algorithm, optimizers
        self.temperature, self.clip_epsilon, self.kl_coef = temperature, clip_epsilon, kl_coef
        self.entropy_coef, self.value_clip, self.max_grad_norm = entropy_coef, value_clip, max_grad_norm
        self.micro_batch_tokens = micro_batch_tokens
        self.on_warning = on_warning
        self.dist = dist
        self.sharded = is_sharded(policy)
        # FSDP averages a sharded policy's gradients over ranks; the loss weights here want their sum
        self.policy_grad_scale = float(dist.world_size) if self.sharded else 1.0

    # ---- forwards before the update ----------------------------------------------------------------
    def reference_logprobs(self, rollout: Rollout) -> torch.Tensor | None:
        """Log-probs (B, R) of the base model for the KL penalty: the policy with its adapter switched off."""
        if self.kl_coef == 0:
            return None
        if not isinstance(self.policy, PeftModel):
            raise NotImplementedError("a KL penalty needs a LoRA policy (its base is the reference)")
        rows = torch.arange(rollout.input_ids.shape[0])
        with self.policy.disable_adapter():
            return self._with_oom_retry(partial(self._policy_logprobs, rollout, rows), rollout)

    def critic_values(self, rollout: Rollout) -> torch.Tensor | None:
        """Critic output before the update: (B,) logits or (B, R) values; None without a critic."""
        if self.critic is None:
            return None
        return self._with_oom_retry(partial(self._critic_values, rollout), rollout)

    def fit_sequence_critic(
        self, rollout: Rollout, returns: torch.Tensor, minibatch_size: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One BCE pass of the prompt-only critic over the step, one optimizer step per minibatch of rows
        in order; returns the value logits (B,) each minibatch's forward saw before its own step (the
        baselines of the advantages) and the pass's mean critic metrics."""
        assert self.critic is not None and self.critic.level == "sequence" and self.opt.critic is not None
        num_rows = rollout.input_ids.shape[0]
        chunks: list[torch.Tensor] = []
        totals: dict[str, list[float]] = defaultdict(list)
        for start in range(0, num_rows, minibatch_size):
            rows = torch.arange(start, min(start + minibatch_size, num_rows))
            values, metrics = self._with_oom_retry(
                partial(self._fit_sequence_critic, rollout, returns, rows), rollout
            )
            chunks.append(values)
            for name, value in metrics.items():
                totals[name].append(value)
        return torch.cat(chunks), {name: sum(v) / len(v) for name, v in totals.items()}

    def _policy_micro_batches(self, num_rows: int, rollout: Rollout) -> list[slice]:
        """Micro-batches for the policy's forwards: a sharded policy's must be as many on every rank, so
        they are cut by the widest rank's rows (ranks hold equal numbers of rows of their own widths)."""
        width = rollout.input_ids.shape[1]
        widest = self.dist.max_int(width) if self.sharded else width
        return micro_batches(num_rows, widest, self.micro_batch_tokens)

    @torch.no_grad()
    def _policy_logprobs(self, rollout: Rollout, rows: torch.Tensor) -> torch.Tensor:
        chunks = []
        for part in self._policy_micro_batches(len(rows), rollout):
            inds = rows[part]
            logprobs, _ = response_logprobs(
                self.policy,
                rollout.input_ids[inds],
                rollout.attention_mask[inds],
                rollout.prompt_length,
                self.temperature,
            )
            chunks.append(logprobs * rollout.response_mask[inds])
        return torch.cat(chunks)  # (len(rows), R)

    @torch.no_grad()
    def _critic_values(self, rollout: Rollout) -> torch.Tensor:
        assert self.critic is not None
        num_rows, row_tokens = rollout.input_ids.shape
        chunks = [
            self.critic(rollout.input_ids[rows], rollout.attention_mask[rows], rollout.prompt_length)
            for rows in micro_batches(num_rows, row_tokens, self.micro_batch_tokens)
        ]
        return torch.cat(chunks)

    def _fit_sequence_critic(
        self, rollout: Rollout, returns: torch.Tensor, mb_inds: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        assert self.critic is not None and self.opt.critic is not None
        self.opt.critic.zero_grad(set_to_none=True)
        chunks: list[torch.Tensor] = []
        loss_total = 0.0
        rows_here = torch.tensor(float(len(mb_inds)), device=rollout.input_ids.device)  # nccl: on the GPU
        mb_size = float(self.dist.sum(rows_here))  # the global minibatch's rows
        for rows in micro_batches(len(mb_inds), rollout.input_ids.shape[1], self.micro_batch_tokens):
            inds = mb_inds[rows]
            values = self.critic(rollout.input_ids[inds], rollout.attention_mask[inds], rollout.prompt_length)
            critic_loss, _ = critic_bce_loss(values, returns[inds])
            _check_finite(critic_loss, "critic")
            weight = len(inds) / mb_size  # sample-mean over the minibatch, however it is cut
            (critic_loss * weight).backward()  # type: ignore[no-untyped-call]
            loss_total += critic_loss.item() * weight
            chunks.append(values.detach())
        self.dist.reduce_gradients(self.opt.critic_params)
        nn.utils.clip_grad_norm_(self.opt.critic_params, self.max_grad_norm)
        self.opt.critic.step()
        values = torch.cat(chunks)  # (b,) logits of the critic before this minibatch's step
        share = len(mb_inds) / mb_size  # of the global minibatch: the ranks' means add up to its mean
        metrics = {
            "train/critic_loss": loss_total,
            "train/value_mean": torch.sigmoid(values).mean().item() * share,
        }
        return values, self.dist.sum_scalars(metrics)

    # ---- the update --------------------------------------------------------------------------------
    def run(self, batch: StepBatch, ppo_epochs: int, minibatch_size: int) -> dict[str, float]:
        """All PPO epochs of one step; returns the means of the per-minibatch metrics."""
        rollout = batch.rollout
        num_samples = rollout.input_ids.shape[0]
        permutations = [torch.randperm(num_samples) for _ in range(ppo_epochs)]
        reuse_first_forward = rollout.old_logprobs is None and not _has_active_dropout(self.policy)
        if rollout.old_logprobs is None:
            pending = permutations[0][minibatch_size:] if reuse_first_forward else torch.arange(num_samples)
            old = torch.zeros_like(rollout.response_mask)  # (B, R)
            if len(pending):
                old[pending] = self._with_oom_retry(partial(self._policy_logprobs, rollout, pending), rollout)
            rollout.old_logprobs = old
        totals: dict[str, list[float]] = defaultdict(list)
        for epoch, permutation in enumerate(permutations):
            for start in range(0, num_samples, minibatch_size):
                mb_inds = permutation[start : start + minibatch_size]
                fill_old = reuse_first_forward and epoch == 0 and start == 0
                metrics = self._with_oom_retry(partial(self._minibatch, batch, mb_inds, fill_old), rollout)
                for name, value in metrics.items():
                    totals[name].append(value)
        return {name: sum(values) / len(values) for name, values in totals.items()}

    def _with_oom_retry(self, attempt: Callable[[], T], rollout: Rollout) -> T:
        """Run `attempt`; on CUDA OOM halve the micro-batch token budget and run it again."""
        row_tokens = rollout.input_ids.shape[1]
        while True:
            try:
                return attempt()
            except torch.cuda.OutOfMemoryError:
                if self.dist.active:  # a retry on one rank would repeat collectives the others are past
                    raise OutOfMemoryError(
                        "a step did not fit in GPU memory on one of the job's devices: lower batch_size, "
                        "minibatch_size or max_response_tokens"
                    ) from None
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

    def _minibatch(self, batch: StepBatch, mb_inds: torch.Tensor, fill_old: bool) -> dict[str, float]:
        """One optimizer step on `mb_inds`; with `fill_old` its forward also provides their old log-probs."""
        rollout = batch.rollout
        assert rollout.old_logprobs is not None
        prompt_length = rollout.prompt_length
        # the global minibatch's tokens: each rank's share of the token-mean, summed by reduce_gradients
        mb_tokens = self.dist.sum(rollout.response_mask[mb_inds].sum()).clamp(min=1)
        mb_size = len(mb_inds)
        token_critic = self.critic is not None and self.critic.level == "token"
        self.opt.actor.zero_grad(set_to_none=True)
        if token_critic and self.opt.critic is not None:
            self.opt.critic.zero_grad(set_to_none=True)
        stats: dict[str, float] = defaultdict(float)
        for rows in self._policy_micro_batches(mb_size, rollout):
            inds = mb_inds[rows]
            mb_input_ids, mb_attention = rollout.input_ids[inds], rollout.attention_mask[inds]
            mb_mask = rollout.response_mask[inds]  # (b, R)
            token_weight = (mb_mask.sum() / mb_tokens).item()  # share of the minibatch's tokens
            entropy_grad = self.entropy_coef > 0
            logprobs, entropy = response_logprobs(
                self.policy,
                mb_input_ids,
                mb_attention,
                prompt_length,
                self.temperature,
                with_entropy=True,
                entropy_grad=entropy_grad,
            )
            assert entropy is not None
            if fill_old:
                rollout.old_logprobs[inds] = logprobs.detach() * mb_mask
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
            loss = pg_loss - self.entropy_coef * entropy_mean if entropy_grad else pg_loss
            _check_finite(loss, "policy")
            (loss * (token_weight * self.policy_grad_scale)).backward()  # type: ignore[no-untyped-call]
            stats["train/policy_loss"] += pg_loss.item() * token_weight
            stats["train/entropy"] += entropy_mean.item() * token_weight
            for name, value in pg_metrics.items():
                stats[f"train/{name}"] += value * token_weight
            if token_critic and self.critic is not None and self.algorithm.critic_loss is not None:
                assert batch.old_values is not None
                values = self.critic(mb_input_ids, mb_attention, prompt_length)  # (b, R)
                critic_loss, critic_metrics = self.algorithm.critic_loss(
                    values, batch.old_values[inds], batch.returns[inds], mb_mask, self.value_clip
                )
                _check_finite(critic_loss, "critic")
                (critic_loss * token_weight).backward()  # type: ignore[no-untyped-call]
                stats["train/critic_loss"] += critic_loss.item() * token_weight
                for name, value in critic_metrics.items():
                    stats[f"train/{name}"] += value * token_weight
        if not self.sharded:  # FSDP has reduce-scattered a sharded policy's gradients in its backward
            self.dist.reduce_gradients(self.opt.actor_params)
        grad_norm = full_value(nn.utils.clip_grad_norm_(self.opt.actor_params, self.max_grad_norm))
        _check_finite(grad_norm, "policy gradient")
        self.opt.actor.step()
        if token_critic and self.opt.critic is not None:
            self.dist.reduce_gradients(self.opt.critic_params)
            nn.utils.clip_grad_norm_(self.opt.critic_params, self.max_grad_norm)
            self.opt.critic.step()
        for scheduler in self.opt.schedulers:
            scheduler.step()
        return {**self.dist.sum_scalars(dict(stats)), "train/grad_norm": grad_norm.item()}


def _has_active_dropout(model: nn.Module) -> bool:
    """A training forward with active dropout differs from a no-grad one: its log-probs are not old ones."""
    return any(isinstance(m, nn.Dropout) and m.training and m.p > 0 for m in model.modules())


def _check_finite(value: torch.Tensor, what: str) -> None:
    if not torch.isfinite(value).all():
        raise TrainingDivergedError(
            f"the {what} loss became {value.item()}: training stopped instead of updating on garbage. "
            "Lower the learning rate (learning_rate_multiplier) or check the rewards."
        )
