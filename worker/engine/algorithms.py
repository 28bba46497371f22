"""Advantage estimators and losses for SPPO, GRPO, PPO-GAE and REINFORCE as small pure tensor functions.

Shapes: B = samples in the batch, T = padded response length. `response_mask` is (B, T), 1 on response
tokens and 0 on padding; padded positions never influence a result (they are selected away with
`torch.where`, so even NaN padding is harmless in the forward pass). Formulas follow
shared/ALGORITHMS.md; every function returns `(tensor(s), metrics)` or plain tensors, never reads a config.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Metrics = dict[str, float]


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """mean(values[mask]) = Σ values·mask / Σ mask, over `dim` (all elements when None).

    values, mask: same shape. An all-zero mask gives 0 rather than NaN.
    """
    keep = mask.bool()
    total = torch.where(keep, values, torch.zeros_like(values)).sum(dim=dim)
    count = keep.sum(dim=dim).to(total.dtype)
    return total / count.clamp_min(1.0)


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """(values − μ) / sqrt(σ² + 1e-8) with μ, σ² the masked mean and (population) variance.

    values, mask: (B, T). With shift_mean=False the mean is added back (scale only). Padding → 0.
    """
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


def sppo_advantages(rewards: Tensor, value_logits: Tensor, response_mask: Tensor) -> tuple[Tensor, Tensor]:
    """SPPO: A = R − sigmoid(v(x)), the same value on every response token; returns = R.

    rewards (B,), value_logits (B,) from the prompt-only critic, response_mask (B, T)
    → advantages (B, T), returns (B,). The critic is a baseline, so no gradient flows into it here.
    """
    rewards = rewards.float()
    with torch.no_grad():
        advantage = rewards - torch.sigmoid(value_logits.detach().float())  # (B,)
    advantages = advantage[:, None].expand_as(response_mask)  # (B, T)
    return torch.where(response_mask.bool(), advantages, torch.zeros_like(advantages)), rewards


def grpo_advantages(
    rewards: Tensor,
    group_index: Tensor,
    response_mask: Tensor,
    scale_by_std: bool = True,
    eps: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """GRPO: A_i = (R_i − mean_g R) / (std_g R + eps); Dr. GRPO (scale_by_std=False): A_i = R_i − mean_g R.

    rewards (B,), group_index (B,) any integer ids (samples of one prompt share an id), response_mask (B, T)
    → advantages (B, T), returns = R (B,). std is the unbiased sample std (as in verl/TRL); a group whose
    rewards are all equal (including a group of one) gets exactly 0, not a rounding residue.
    """
    rewards = rewards.float()
    with torch.no_grad():
        _, group = torch.unique(group_index, return_inverse=True)  # (B,) in 0..G-1
        n_groups = int(group.max().item()) + 1 if group.numel() else 0
        zeros = rewards.new_zeros(n_groups)
        count = zeros.index_add(0, group, torch.ones_like(rewards))  # (G,)
        mean = zeros.index_add(0, group, rewards) / count
        deviation = rewards - mean[group]  # (B,)
        if scale_by_std:
            sum_sq = zeros.index_add(0, group, deviation**2)
            std = torch.sqrt(sum_sq / (count - 1).clamp_min(1.0))
            deviation = deviation / (std[group] + eps)
        group_max = zeros.scatter_reduce(0, group, rewards, reduce="amax", include_self=False)
        group_min = zeros.scatter_reduce(0, group, rewards, reduce="amin", include_self=False)
        all_equal = (group_max == group_min)[group]
        advantage = torch.where(all_equal, torch.zeros_like(deviation), deviation)
    advantages = advantage[:, None].expand_as(response_mask)
    return torch.where(response_mask.bool(), advantages, torch.zeros_like(advantages)), rewards


def reinforce_advantages(rewards: Tensor, response_mask: Tensor) -> tuple[Tensor, Tensor]:
    """REINFORCE with a batch-mean baseline: A_i = R_i − mean_batch R on every response token; returns = R.

    rewards (B,), response_mask (B, T) → advantages (B, T), returns (B,). What SPPO degenerates to when its
    critic learns nothing but the average success rate.
    """
    rewards = rewards.float()
    with torch.no_grad():
        advantage = rewards - rewards.mean()  # (B,)
    advantages = advantage[:, None].expand_as(response_mask)  # (B, T)
    return torch.where(response_mask.bool(), advantages, torch.zeros_like(advantages)), rewards


def gae_advantages(
    token_rewards: Tensor, values: Tensor, response_mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """GAE: δ_t = r_t + γ·V_{t+1} − V_t, A_t = δ_t + γλ·A_{t+1}; returns_t = A_t + V_t; A whitened over mask.

    token_rewards, values, response_mask: (B, T) → advantages (B, T), returns (B, T).
    Padded positions are skipped: the recursion carries V_{t+1} and A_{t+1} across them, so the last
    valid token bootstraps from 0 (the episode ends there). Returns use the advantages before whitening.
    """
    keep = response_mask.bool()
    with torch.no_grad():
        rewards = torch.where(keep, token_rewards.float(), 0.0)
        values = torch.where(keep, values.detach().float(), 0.0)
        next_values = rewards.new_zeros(rewards.shape[0])  # (B,)
        lastgaelam = rewards.new_zeros(rewards.shape[0])
        advantages_reversed = []
        for t in reversed(range(rewards.shape[1])):
            delta = rewards[:, t] + gamma * next_values - values[:, t]
            step_gaelam = delta + gamma * lam * lastgaelam
            next_values = torch.where(keep[:, t], values[:, t], next_values)
            lastgaelam = torch.where(keep[:, t], step_gaelam, lastgaelam)
            advantages_reversed.append(torch.where(keep[:, t], step_gaelam, 0.0))
        advantages = torch.stack(advantages_reversed[::-1], dim=1)  # (B, T)
        returns = torch.where(keep, advantages + values, 0.0)
        advantages = masked_whiten(advantages, response_mask)
    return advantages, returns


def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_eps: float,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """PPO clipped surrogate, token-mean over every response token of the minibatch.

    ratio_t = exp(logπ_θ − logπ_old); L = mean_t max(−A_t·ratio_t, −A_t·clip(ratio_t, 1−ε, 1+ε))
              + kl_coef · mean_t k3_t,  k3_t = exp(logπ_ref − logπ_θ) − (logπ_ref − logπ_θ) − 1
    (Schulman's k3 estimator of KL(π_θ‖π_ref): unbiased, always ≥ 0; added only when ref_logprobs given).
    All inputs (B, T) → scalar loss; metrics: clipfrac (share of tokens where the clipped term is the one
    used), approx_kl = mean((ratio − 1) − logratio), kl (mean k3, only with ref_logprobs).
    """
    if kl_coef > 0.0 and ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs ref_logprobs")
    logratio = logprobs - old_logprobs
    ratio = torch.exp(logratio)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.max(pg_loss1, pg_loss2), response_mask)
    with torch.no_grad():
        metrics: Metrics = {
            "clipfrac": masked_mean((pg_loss2 > pg_loss1).float(), response_mask).item(),
            "approx_kl": masked_mean((ratio - 1.0) - logratio, response_mask).item(),
        }
    if ref_logprobs is not None:
        ref_logratio = ref_logprobs - logprobs
        kl = masked_mean(torch.exp(ref_logratio) - ref_logratio - 1.0, response_mask)
        loss = loss + kl_coef * kl
        metrics["kl"] = kl.item()
    return loss, metrics


def critic_bce_loss(value_logits: Tensor, returns: Tensor) -> tuple[Tensor, Metrics]:
    """SPPO critic: BCE(v, R) = −[R·log σ(v) + (1−R)·log(1−σ(v))], mean over the batch.

    value_logits (B,), returns (B,) in [0, 1] → scalar loss; metrics: value_mean = mean σ(v).
    """
    loss = F.binary_cross_entropy_with_logits(value_logits, returns.to(value_logits.dtype))
    return loss, {"value_mean": torch.sigmoid(value_logits.detach()).mean().item()}


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, response_mask: Tensor, clip_range: float
) -> tuple[Tensor, Metrics]:
    """PPO2 clipped value loss: 0.5 · mean_t max((V_t − G_t)², (V_old + clip(V_t − V_old, ±c) − G_t)²).

    The 0.5 factor is PPO2's (so the gradient is the plain residual). All inputs (B, T) → scalar loss;
    metrics: value_mean (masked), value_clipfrac (share of tokens where the clipped term is used).
    """
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    vf_loss1 = (values - returns) ** 2
    vf_loss2 = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(vf_loss1, vf_loss2), response_mask)
    with torch.no_grad():
        metrics: Metrics = {
            "value_mean": masked_mean(values, response_mask).item(),
            "value_clipfrac": masked_mean((vf_loss2 > vf_loss1).float(), response_mask).item(),
        }
    return loss, metrics


# ----------------------------------------------------------------------------------------------------
# Registry: one entry per algorithm; the trainer picks the pieces by name and branches only on `critic`.


@dataclass(frozen=True)
class AdvantageInputs:
    """Everything any advantage estimator may need, so all of them share one signature."""

    rewards: Tensor
    """(B,) outcome reward per sample, in [0, 1]."""
    response_mask: Tensor
    """(B, T) 1 on response tokens, 0 on padding."""
    group_index: Tensor
    """(B,) long: samples drawn for the same prompt share an id (GRPO groups)."""
    values: Tensor | None = None
    """Critic output before the update: (B,) logits of the sequence critic, (B, T) token values, or None."""
    gamma: float = 1.0
    """GAE discount (PPO only)."""
    lam: float = 0.95
    """GAE lambda (PPO only)."""
    grpo_scale_by_std: bool = True
    """False gives Dr. GRPO (no division by the group std)."""


CriticKind = Literal["sequence", "token"]


@dataclass(frozen=True)
class Algorithm:
    """The pieces that differ between algorithms; the minibatch loop and policy loss are shared."""

    name: str
    critic: CriticKind | None
    """"sequence": prompt-only value logit (B,); "token": value per response token (B, T); None: no critic."""
    compute_advantages: Callable[[AdvantageInputs], tuple[Tensor, Tensor]]
    """AdvantageInputs → (advantages (B, T), returns: (B,) for sequence/no critic, (B, T) for token)."""
    critic_loss: Callable[..., tuple[Tensor, Metrics]] | None
    """critic_bce_loss for "sequence", clipped_value_loss for "token", None without a critic."""


def _require_values(inputs: AdvantageInputs, algorithm: str, ndim: int) -> Tensor:
    if inputs.values is None or inputs.values.ndim != ndim:
        raise ValueError(f"{algorithm} advantages need critic values with {ndim} dimension(s)")
    return inputs.values


def _reward_at_last_token(rewards: Tensor, response_mask: Tensor) -> Tensor:
    """(B,) outcome rewards → (B, T) token rewards, zero except at each row's last valid token."""
    length = response_mask.shape[1]
    last = length - 1 - response_mask.bool().flip(1).int().argmax(dim=1)  # (B,) index of the last 1
    token_rewards = torch.zeros(response_mask.shape, dtype=torch.float32, device=rewards.device)
    return token_rewards.scatter(1, last[:, None], rewards.float()[:, None])


def _sppo(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    return sppo_advantages(inputs.rewards, _require_values(inputs, "sppo", 1), inputs.response_mask)


def _grpo(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    return grpo_advantages(
        inputs.rewards, inputs.group_index, inputs.response_mask, scale_by_std=inputs.grpo_scale_by_std
    )


def _reinforce(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    return reinforce_advantages(inputs.rewards, inputs.response_mask)


def _ppo(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    values = _require_values(inputs, "ppo", 2)
    token_rewards = _reward_at_last_token(inputs.rewards, inputs.response_mask)
    return gae_advantages(token_rewards, values, inputs.response_mask, inputs.gamma, inputs.lam)


ALGORITHMS: dict[str, Algorithm] = {
    "sppo": Algorithm("sppo", "sequence", _sppo, critic_bce_loss),
    "grpo": Algorithm("grpo", None, _grpo, None),
    "ppo": Algorithm("ppo", "token", _ppo, clipped_value_loss),
    "reinforce": Algorithm("reinforce", None, _reinforce, None),
}


def get_algorithm(name: str) -> Algorithm:
    """The registered algorithm called `name`; ValueError listing the valid names otherwise."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        valid = ", ".join(sorted(ALGORITHMS))
        raise ValueError(f"unknown algorithm {name!r}; valid algorithms: {valid}") from None
