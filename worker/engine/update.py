"""The PPO update of one step: epochs over shuffled minibatches, gradient accumulation over micro-batches
sized by a token budget (batching.py), actor and critic each with their own optimizer and gradient clipping.

Losses are weighted so a minibatch's gradient does not depend on how it is cut into micro-batches:
the policy loss is a token-mean over the whole minibatch, the sequence critic loss (critic.py) a sample-mean.
That is what makes the OOM fallback (halve the micro-batch, retry) give the same result; every forward
of the step (old and reference log-probs, critic values, the update itself) runs under that retry.

Old log-probs cost no extra forward for the first minibatch of the first epoch: its training forward
runs on the pre-update weights, so its detached log-probs are the old ones and its ratio is exactly 1.
Only the other rows get a no-grad forward, and none when one minibatch holds the whole step.
The sequence critic (SPPO) is fitted apart, once per step, before the advantages (critic.py).
"""

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from peft import PeftModel
from torch import nn

from worker.engine.algorithms import Algorithm, Metrics, clipped_policy_loss, masked_mean
from worker.engine.batching import TokenBudget
from worker.engine.critic import Critic
from worker.engine.distributed import DistContext
from worker.engine.optim import Optimizers, check_finite, replicated_step
from worker.engine.rollout import Rollout, response_logprobs
from worker.engine.sharding import full_value, is_sharded


@dataclass
class StepBatch:
    """One step's samples with everything the update reads. B samples, R response columns."""

    rollout: Rollout
    advantages: torch.Tensor  # (B, R)
    returns: torch.Tensor  # (B,) sequence critic or (B, R) token critic
    old_values: torch.Tensor | None  # (B, R) token critic (value clipping); None otherwise
    ref_logprobs: torch.Tensor | None  # (B, R) when a KL penalty is on


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
        compute_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.policy, self.critic, self.algorithm, self.opt = policy, critic, algorithm, optimizers
        # every policy forward (old, reference and training log-probs) in it: one path, the ratio 1 exact
        self.compute_dtype = compute_dtype
        self.temperature, self.clip_epsilon, self.kl_coef = temperature, clip_epsilon, kl_coef
        self.entropy_coef, self.value_clip, self.max_grad_norm = entropy_coef, value_clip, max_grad_norm
        self.token_critic = critic is not None and critic.level == "token"
        self.dist = dist
        self.sharded = is_sharded(policy)
        self.budget = TokenBudget(
            micro_batch_tokens, dist, sharded=self.sharded, on_oom=optimizers.zero_grad, on_warning=on_warning
        )
        # FSDP averages a sharded policy's gradients over ranks; the loss weights here want their sum
        self.policy_grad_scale = float(dist.world_size) if self.sharded else 1.0

    @property
    def micro_batch_tokens(self) -> int:
        """The token budget of one forward/backward; halved for good on each CUDA OOM."""
        return self.budget.tokens

    @micro_batch_tokens.setter
    def micro_batch_tokens(self, tokens: int) -> None:
        self.budget.tokens = tokens

    # ---- forwards before the update ----------------------------------------------------------------
    def reference_logprobs(self, rollout: Rollout) -> torch.Tensor | None:
        """Log-probs (B, R) of the base model for the KL penalty: the policy with its adapter switched off."""
        if self.kl_coef == 0:
            return None
        if not isinstance(self.policy, PeftModel):
            raise NotImplementedError("a KL penalty needs a LoRA policy (its base is the reference)")
        rows = torch.arange(rollout.input_ids.shape[0])
        with self.policy.disable_adapter():
            return self.budget.retry(
                partial(self._policy_logprobs, rollout, rows), rollout.input_ids.shape[1]
            )

    def critic_values(self, rollout: Rollout) -> torch.Tensor | None:
        """Critic output before the update: (B,) logits or (B, R) values; None without a critic."""
        if self.critic is None:
            return None
        return self.budget.retry(partial(self._critic_values, rollout), rollout.input_ids.shape[1])

    @torch.no_grad()
    def _policy_logprobs(self, rollout: Rollout, rows: torch.Tensor) -> torch.Tensor:
        chunks = []
        for part in self.budget.policy_slices(len(rows), rollout.input_ids.shape[1]):
            inds = rows[part]
            logprobs, _ = response_logprobs(
                self.policy,
                rollout.input_ids[inds],
                rollout.attention_mask[inds],
                rollout.prompt_length,
                self.temperature,
                compute_dtype=self.compute_dtype,
            )
            chunks.append(logprobs * rollout.response_mask[inds])
        return torch.cat(chunks)  # (len(rows), R)

    @torch.no_grad()
    def _critic_values(self, rollout: Rollout) -> torch.Tensor:
        assert self.critic is not None
        chunks = [
            self.critic(rollout.input_ids[rows], rollout.attention_mask[rows], rollout.prompt_length)
            for rows in self.budget.slices(*rollout.input_ids.shape)
        ]
        return torch.cat(chunks)

    def _old_logprobs(self, rollout: Rollout, pending: torch.Tensor) -> torch.Tensor:
        """(B, R) old log-probs of the `pending` rows; zeros on the others, whose first training forward
        fills them in."""
        old = torch.zeros_like(rollout.response_mask)  # (B, R)
        if len(pending):
            attempt = partial(self._policy_logprobs, rollout, pending)
            old[pending] = self.budget.retry(attempt, rollout.input_ids.shape[1])
        return old

    # ---- the update --------------------------------------------------------------------------------
    def run(self, batch: StepBatch, ppo_epochs: int, minibatch_size: int) -> dict[str, float]:
        """All PPO epochs of one step; returns the means of the per-minibatch metrics."""
        rollout = batch.rollout
        num_samples, row_tokens = rollout.input_ids.shape
        permutations = [torch.randperm(num_samples) for _ in range(ppo_epochs)]
        reuse_first_forward = rollout.old_logprobs is None and not _has_active_dropout(self.policy)
        if rollout.old_logprobs is None:
            pending = permutations[0][minibatch_size:] if reuse_first_forward else torch.arange(num_samples)
            rollout.old_logprobs = self._old_logprobs(rollout, pending)
        totals: dict[str, list[float]] = defaultdict(list)
        for epoch, permutation in enumerate(permutations):
            for start in range(0, num_samples, minibatch_size):
                mb_inds = permutation[start : start + minibatch_size]
                fill_old = reuse_first_forward and epoch == 0 and start == 0
                metrics = self.budget.retry(partial(self._minibatch, batch, mb_inds, fill_old), row_tokens)
                for name, value in metrics.items():
                    totals[name].append(value)
        return {name: sum(values) / len(values) for name, values in totals.items()}

    def _minibatch(self, batch: StepBatch, mb_inds: torch.Tensor, fill_old: bool) -> dict[str, float]:
        """One optimizer step on `mb_inds`; with `fill_old` its forward also provides their old log-probs."""
        rollout, b_logprobs, b_advantages = batch.rollout, batch.rollout.old_logprobs, batch.advantages
        assert b_logprobs is not None
        mb_tokens = self._global_tokens(rollout.response_mask[mb_inds])
        self._zero_grad()
        stats: dict[str, float] = defaultdict(float)
        for rows in self.budget.policy_slices(len(mb_inds), rollout.input_ids.shape[1]):
            inds = mb_inds[rows]
            mb_mask = rollout.response_mask[inds]  # (b, R)
            weight = (mb_mask.sum() / mb_tokens).item()  # this micro-batch's share of the minibatch's tokens
            newlogprob, entropy = self._logprobs(rollout, inds)  # (b, R), (b, R)
            if fill_old:
                b_logprobs[inds] = newlogprob.detach() * mb_mask
            # logratio, ratio, pg_loss1/2 (the clipped surrogate), clipfrac, approx_kl, the k3 KL penalty
            pg_loss, pg_metrics = clipped_policy_loss(
                newlogprob,
                b_logprobs[inds],
                b_advantages[inds],
                mb_mask,
                self.clip_epsilon,
                ref_logprobs=None if batch.ref_logprobs is None else batch.ref_logprobs[inds],
                kl_coef=self.kl_coef,
            )
            entropy_loss = masked_mean(entropy, mb_mask)
            loss = pg_loss - self.entropy_coef * entropy_loss if self.entropy_coef > 0 else pg_loss
            self._backward_policy(loss, weight)
            _accumulate(
                stats, weight, {"policy_loss": pg_loss.item(), "entropy": entropy_loss.item(), **pg_metrics}
            )
            if self.token_critic:
                v_loss, v_metrics = self._value_loss(batch, inds, mb_mask)
                check_finite(v_loss, "critic")
                (v_loss * weight).backward()  # type: ignore[no-untyped-call]
                _accumulate(stats, weight, {"critic_loss": v_loss.item(), **v_metrics})
        grad_norm = self._step_actor()
        if self.token_critic:
            self._step_critic()
        for scheduler in self.opt.schedulers:
            scheduler.step()
        return {**self.dist.sum_scalars(dict(stats)), "train/grad_norm": grad_norm.item()}

    def _logprobs(self, rollout: Rollout, inds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training forward on rows `inds`: log-probs (b, R) and entropies (b, R), the latter with a
        gradient only for an entropy bonus."""
        logprobs, entropy = response_logprobs(
            self.policy,
            rollout.input_ids[inds],
            rollout.attention_mask[inds],
            rollout.prompt_length,
            self.temperature,
            with_entropy=True,
            entropy_grad=self.entropy_coef > 0,
            compute_dtype=self.compute_dtype,
        )
        assert entropy is not None
        return logprobs, entropy

    def _value_loss(
        self, batch: StepBatch, inds: torch.Tensor, mb_mask: torch.Tensor
    ) -> tuple[torch.Tensor, Metrics]:
        """The token critic's loss (PPO-GAE: clipped value loss) on rows `inds`."""
        assert self.critic is not None and self.algorithm.critic_loss is not None
        assert batch.old_values is not None
        rollout = batch.rollout
        input_ids, attention_mask = rollout.input_ids[inds], rollout.attention_mask[inds]
        newvalue = self.critic(input_ids, attention_mask, rollout.prompt_length)  # (b, R)
        return self.algorithm.critic_loss(
            newvalue, batch.old_values[inds], batch.returns[inds], mb_mask, self.value_clip
        )

    # ---- what several devices change ----------------------------------------------------------------
    def _global_tokens(self, mb_mask: torch.Tensor) -> torch.Tensor:
        """Response tokens of the global minibatch (every rank's share): the token-mean's denominator, so
        the per-rank gradients add up to the gradient of the whole minibatch's token-mean."""
        return self.dist.sum(mb_mask.sum()).clamp(min=1)

    def _zero_grad(self) -> None:
        self.opt.actor.zero_grad(set_to_none=True)
        if self.token_critic and self.opt.critic is not None:
            self.opt.critic.zero_grad(set_to_none=True)

    def _backward_policy(self, loss: torch.Tensor, weight: float) -> None:
        """Backward of a micro-batch's `weight` share of the minibatch's policy loss. FSDP averages a
        sharded policy's gradients over ranks: scaled by the world size, they add up instead."""
        check_finite(loss, "policy")
        (loss * (weight * self.policy_grad_scale)).backward()  # type: ignore[no-untyped-call]

    def _step_actor(self) -> torch.Tensor:
        """Gradients summed over ranks, clipped, applied; returns their norm before clipping."""
        if not self.sharded:  # FSDP has reduce-scattered a sharded policy's gradients in its backward
            self.dist.reduce_gradients(self.opt.actor_params)
        grad_norm = full_value(nn.utils.clip_grad_norm_(self.opt.actor_params, self.max_grad_norm))
        check_finite(grad_norm, "policy gradient")
        self.opt.actor.step()
        self.opt.actor.zero_grad(set_to_none=True)  # nothing reads them again: freed before the rollout
        return grad_norm

    def _step_critic(self) -> None:
        assert self.opt.critic is not None
        replicated_step(
            self.opt.critic, self.opt.critic_params, max_grad_norm=self.max_grad_norm, dist=self.dist
        )


def _accumulate(stats: dict[str, float], weight: float, values: Metrics) -> None:
    """Add a micro-batch's metrics, weighted by its share of the minibatch, as train/<name>."""
    for name, value in values.items():
        stats[f"train/{name}"] += value * weight


def _has_active_dropout(model: nn.Module) -> bool:
    """A training forward with active dropout differs from a no-grad one: its log-probs are not old ones."""
    return any(m.training and _dropout_rate(m) > 0 for m in model.modules())


def _dropout_rate(module: nn.Module) -> float:
    if isinstance(module, nn.Dropout):
        return module.p
    rate = getattr(module, "attention_dropout", 0.0)  # transformers' attention applies it as a function
    return rate if isinstance(rate, float) else 0.0
