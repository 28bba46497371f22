"""Exact-number tests for the pure tensor functions in worker/engine/algorithms.py.

Every expected value is worked out by hand in the comment next to it. Padded positions hold NaN or
large garbage on purpose: if they leaked into a result, the assertion would fail.
"""

import dataclasses
import math

import pytest
import torch

from jobspec.hyperparameters import DEFAULT_SAMPLES_PER_PROMPT
from worker.engine.algorithms import (
    ALGORITHMS,
    AdvantageInputs,
    clipped_policy_loss,
    clipped_value_loss,
    critic_bce_loss,
    gae_advantages,
    get_algorithm,
    grpo_advantages,
    masked_mean,
    masked_whiten,
    reinforce_advantages,
    sppo_advantages,
)

NAN = float("nan")


def close(actual: torch.Tensor | float, expected: list[list[float]] | list[float] | float) -> None:
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64),
        torch.tensor(expected, dtype=torch.float64),
        rtol=1e-5,
        atol=1e-5,
    )


def test_masked_mean_ignores_padding() -> None:
    values = torch.tensor([[1.0, 2.0, NAN], [4.0, NAN, NAN]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    close(masked_mean(values, mask), 7 / 3)  # (1 + 2 + 4) / 3
    close(masked_mean(values, mask, dim=1), [1.5, 4.0])  # (1 + 2) / 2, 4 / 1
    close(masked_mean(values, torch.zeros_like(mask)), 0.0)  # nothing valid → 0, not NaN


def test_masked_whiten() -> None:
    values = torch.tensor([[1.0, 3.0, 999.0], [5.0, 7.0, NAN]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    # valid {1, 3, 5, 7}: mean 4, population var (9 + 1 + 1 + 9) / 4 = 5 → (x − 4) / √5
    s = math.sqrt(5)
    close(masked_whiten(values, mask), [[-3 / s, -1 / s, 0.0], [1 / s, 3 / s, 0.0]])
    close(
        masked_whiten(values, mask, shift_mean=False),
        [[4 - 3 / s, 4 - 1 / s, 0.0], [4 + 1 / s, 4 + 3 / s, 0.0]],
    )


def test_sppo_advantages_broadcast_without_grad() -> None:
    rewards = torch.tensor([1.0, 0.0])
    logits = torch.tensor([0.0, math.log(3)], requires_grad=True)  # sigmoid → 0.5, 0.75
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    advantages, returns = sppo_advantages(rewards, logits, mask)
    # A = R − σ(v): 1 − 0.5 = 0.5 on both tokens of row 0; 0 − 0.75 = −0.75 on row 0's single token
    close(advantages, [[0.5, 0.5, 0.0], [-0.75, 0.0, 0.0]])
    close(returns, [1.0, 0.0])
    assert not advantages.requires_grad


def test_reinforce_advantages_subtract_the_batch_mean() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 0], [0, 0]])
    advantages, returns = reinforce_advantages(rewards, mask)
    # mean R = 3/5 = 0.6: A = 0.4 for R = 1, −0.6 for R = 0, on valid tokens only
    close(advantages, [[0.4, 0.4], [-0.6, 0.0], [-0.6, -0.6], [0.4, 0.0], [0.0, 0.0]])
    close(returns, [1.0, 0.0, 0.0, 1.0, 1.0])
    uniform, _ = reinforce_advantages(torch.ones(2), torch.ones(2, 2))
    close(uniform, [[0.0, 0.0], [0.0, 0.0]])  # all rewards equal: no signal


def test_grpo_advantages_groups_and_all_equal() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    group = torch.tensor([5, 5, 5, 5, 2, 2, 9, 9])  # ids need not be contiguous
    mask = torch.ones(8, 2)
    mask[1, 1] = 0
    advantages, returns = grpo_advantages(rewards, group, mask)
    # group 5: mean 0.25, deviations (0.75, −0.25, −0.25, −0.25), unbiased var (0.5625 + 3·0.0625) / 3
    # = 0.25 → std 0.5 → A = (1.5, −0.5, −0.5, −0.5) (÷ (0.5 + 1e-6)); groups 2 and 9 all equal → 0
    a = 0.75 / (0.5 + 1e-6)
    b = -0.25 / (0.5 + 1e-6)
    expected = [[a, a], [b, 0.0], [b, b], [b, b]] + [[0.0, 0.0]] * 4
    close(advantages, expected)
    close(returns, rewards.tolist())
    assert torch.equal(advantages[4:], torch.zeros(4, 2))


def test_grpo_all_equal_group_is_exactly_zero() -> None:
    # 0.1 is not representable: mean and std would leave a rounding residue without the explicit rule
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.7])
    group = torch.tensor([0, 0, 0, 1])  # group 1 has a single sample: also all-equal
    advantages, _ = grpo_advantages(rewards, group, torch.ones(4, 3))
    assert torch.equal(advantages, torch.zeros(4, 3))


def test_dr_grpo_skips_std_scaling() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    advantages, _ = grpo_advantages(
        rewards, torch.zeros(4, dtype=torch.long), torch.ones(4, 1), scale_by_std=False
    )
    close(advantages, [[0.75], [-0.25], [-0.25], [-0.25]])  # R − mean, mean = 0.25


def test_gae_gamma_one_lambda_095_with_padding() -> None:
    token_rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 5.0]])  # row 1: reward 0 at its last token
    values = torch.tensor([[0.5, 0.6, 0.7], [0.2, 0.4, 9.0]])  # 5.0 and 9.0 sit on padding
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = gae_advantages(token_rewards, values, mask, gamma=1.0, lam=0.95)
    # row 0: t2 δ = 1 + 0 − 0.7 = 0.3, A2 = 0.3
    #        t1 δ = 0 + 0.7 − 0.6 = 0.1, A1 = 0.1 + 0.95·0.3 = 0.385
    #        t0 δ = 0 + 0.6 − 0.5 = 0.1, A0 = 0.1 + 0.95·0.385 = 0.46575
    # row 1: t1 δ = 0 + 0 − 0.4 = −0.4 (episode ends: V_next = 0, padding skipped), A1 = −0.4
    #        t0 δ = 0 + 0.4 − 0.2 = 0.2, A0 = 0.2 + 0.95·(−0.4) = −0.18
    # returns = raw A + V: (0.96575, 0.985, 1.0), (0.02, 0.0)
    close(returns, [[0.96575, 0.985, 1.0], [0.02, 0.0, 0.0]])
    # whitening over the 5 valid raw advantages: mean 0.57075 / 5 = 0.11415,
    # population var = Σ(A − 0.11415)² / 5 = 0.11647939 → (A − 0.11415) / √(0.11647939 + 1e-8)
    close(advantages, [[1.0302065, 0.7936048, 0.5445503], [-0.8618750, -1.5064866, 0.0]])


def test_ppo_registry_puts_reward_at_last_valid_token() -> None:
    inputs = AdvantageInputs(
        rewards=torch.tensor([1.0, 0.0]),
        response_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]),
        group_index=torch.arange(2),
        values=torch.tensor([[0.5, 0.6, 0.7], [0.2, 0.4, 9.0]]),
    )
    advantages, returns = get_algorithm("ppo").compute_advantages(inputs)
    close(returns, [[0.96575, 0.985, 1.0], [0.02, 0.0, 0.0]])  # same example as above
    close(advantages[1, 2], 0.0)


def test_policy_loss_first_epoch_ratio_one_is_minus_mean_advantage() -> None:
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.7, NAN]], requires_grad=True)
    advantages = torch.tensor([[0.5, 0.5, 0.5], [-1.0, -1.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss, metrics = clipped_policy_loss(logprobs, logprobs.detach(), advantages, mask, clip_eps=0.2)
    close(loss, -(0.5 * 3 - 1.0 * 2) / 5)  # −mean(A) over 5 valid tokens = −(−0.5 / 5) = 0.1
    assert metrics == {"clipfrac": 0.0, "approx_kl": 0.0}


def test_policy_loss_clips_on_both_sides() -> None:
    # tokens: (A=+1, r=1.5) (A=+1, r=0.5) (A=−1, r=1.5) (A=−1, r=0.5) and one padded garbage token
    ratio = torch.tensor([[1.5, 0.5, 1.5, 0.5, 1e6]])
    old = torch.zeros_like(ratio)
    logprobs = ratio.log().requires_grad_()
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, metrics = clipped_policy_loss(logprobs, old, advantages, mask, clip_eps=0.2)
    # per token max(−A·r, −A·clip(r, 0.8, 1.2)):
    #   A>0, r=1.5: max(−1.5, −1.2) = −1.2 (clipped)   A>0, r=0.5: max(−0.5, −0.8) = −0.5
    #   A<0, r=1.5: max(1.5, 1.2) = 1.5                 A<0, r=0.5: max(0.5, 0.8) = 0.8 (clipped)
    close(loss, (-1.2 - 0.5 + 1.5 + 0.8) / 4)  # 0.15
    close(metrics["clipfrac"], 0.5)  # 2 of 4 valid tokens
    # approx_kl = mean((r − 1) − log r): r=1.5 → 0.5 − ln 1.5 = 0.0945349, r=0.5 → −0.5 + ln 2 = 0.1931472
    close(metrics["approx_kl"], (2 * 0.0945349 + 2 * 0.1931472) / 4)
    loss.backward()
    assert logprobs.grad is not None
    # clipped tokens get no gradient; the others d(−A·r)/dlog r = −A·r, divided by the 4 tokens
    close(logprobs.grad, [[0.0, -0.5 / 4, 1.5 / 4, 0.0, 0.0]])


def test_policy_loss_k3_kl_penalty() -> None:
    logprobs = torch.tensor([[math.log(0.5), 0.0]])
    ref = torch.tensor([[math.log(0.25), 0.0]])
    mask = torch.tensor([[1, 0]])
    loss, metrics = clipped_policy_loss(
        logprobs, logprobs, torch.zeros(1, 2), mask, clip_eps=0.2, ref_logprobs=ref, kl_coef=0.1
    )
    # k3 = exp(ref − logp) − (ref − logp) − 1 = 0.5 − ln 0.5 − 1 = 0.1931472; loss = 0 + 0.1·k3
    close(metrics["kl"], 0.1931472)
    close(loss, 0.01931472)
    with pytest.raises(ValueError, match="ref_logprobs"):
        clipped_policy_loss(logprobs, logprobs, torch.zeros(1, 2), mask, clip_eps=0.2, kl_coef=0.1)


def test_critic_bce_loss() -> None:
    loss, metrics = critic_bce_loss(torch.tensor([0.0, math.log(3)]), torch.tensor([1.0, 0.0]))
    # −log σ(0) = ln 2 = 0.693147; −log(1 − 0.75) = ln 4 = 1.386294; mean = 1.039721
    close(loss, 1.039721)
    close(metrics["value_mean"], 0.625)  # (0.5 + 0.75) / 2


def test_critic_bce_loss_takes_soft_targets_and_settles_on_them() -> None:
    # partial-credit rewards: targets 0.25 and 0.75 at σ(v) = 0.5 and 0.75
    logits = torch.tensor([0.0, math.log(3)], requires_grad=True)
    loss, _ = critic_bce_loss(logits, torch.tensor([0.25, 0.75]))
    # row 0: −(0.25 ln 0.5 + 0.75 ln 0.5) = ln 2 = 0.693147; row 1: −(0.75 ln 0.75 + 0.25 ln 0.25) = 0.562335
    close(loss, (0.693147 + 0.562335) / 2)
    loss.backward()
    # d/dv = (σ(v) − R) / B: a critic already predicting its soft target gets no gradient
    assert logits.grad is not None
    close(logits.grad, [(0.5 - 0.25) / 2, 0.0])


def test_clipped_value_loss() -> None:
    values = torch.tensor([[0.5, 1.0, NAN]])
    old_values = torch.tensor([[0.2, 0.9, 0.0]])
    returns = torch.tensor([[1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, metrics = clipped_value_loss(values, old_values, returns, mask, clip_range=0.2)
    # t0: V − V_old = 0.3 → clipped 0.2 → 0.4; max((0.5 − 1)², (0.4 − 1)²) = max(0.25, 0.36) = 0.36
    # t1: V − V_old = 0.1 unclipped; max(1.0, 1.0) = 1.0 → loss = 0.5 · (0.36 + 1.0) / 2 = 0.34
    close(loss, 0.34)
    close(metrics["value_clipfrac"], 0.5)
    close(metrics["value_mean"], 0.75)


def test_registry() -> None:
    assert set(ALGORITHMS) == {"sppo", "grpo", "ppo", "reinforce"}
    sppo = get_algorithm("sppo")
    assert (sppo.critic, DEFAULT_SAMPLES_PER_PROMPT["sppo"]) == ("sequence", 1)
    assert sppo.critic_loss is critic_bce_loss
    grpo = get_algorithm("grpo")
    assert (grpo.critic, DEFAULT_SAMPLES_PER_PROMPT["grpo"], grpo.critic_loss) == (None, 8, None)
    assert get_algorithm("ppo").critic == "token"
    reinforce = get_algorithm("reinforce")
    assert (reinforce.critic, DEFAULT_SAMPLES_PER_PROMPT["reinforce"], reinforce.critic_loss) == (
        None,
        1,
        None,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        sppo.name = "x"  # type: ignore[misc]
    with pytest.raises(
        ValueError, match=r"unknown algorithm 'dpo'; valid algorithms: grpo, ppo, reinforce, sppo"
    ):
        get_algorithm("dpo")


def test_registry_sppo_needs_sequence_values() -> None:
    inputs = AdvantageInputs(
        rewards=torch.tensor([1.0]),
        response_mask=torch.ones(1, 2),
        group_index=torch.zeros(1, dtype=torch.long),
    )
    with pytest.raises(ValueError, match="sppo advantages need critic values"):
        get_algorithm("sppo").compute_advantages(inputs)
    with_values = dataclasses.replace(inputs, values=torch.tensor([0.0]))
    advantages, _ = get_algorithm("sppo").compute_advantages(with_values)
    close(advantages, [[0.5, 0.5]])
