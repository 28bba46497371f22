"""The PPO update (update.py) on a bigram "policy" small enough to work its gradients out by hand."""

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from worker.engine.algorithms import get_algorithm
from worker.engine.distributed import DistContext
from worker.engine.optim import Optimizers, replicated_step
from worker.engine.rollout import Rollout
from worker.engine.update import PPOUpdate, StepBatch

UNIFORM = torch.zeros(2, 2)  # (V, V): every next-token distribution is (½, ½)
CUTS = pytest.mark.parametrize("micro_batch_tokens", [6, 3], ids=["one-micro-batch", "one-row-each"])


class Bigram(nn.Module):
    """logits[b, t] = table[input_ids[b, t]]: the next token's logits depend on the current token alone."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone())

    def forward(self, input_ids: torch.Tensor, logits_to_keep: torch.Tensor, **_: Any) -> Any:
        return SimpleNamespace(logits=self.table[input_ids[:, logits_to_keep]])  # (B, R, V)


def _two_rows(old_logprobs: torch.Tensor | None) -> Rollout:
    """Prompt [0] (P = 1), responses [0, 1] and [1, 0] with the second one's last token masked out: 3
    tokens (of B * (P + R) = 6), each predicted from token 0: y = 0, then y = 1 in row 0; y = 1 in row 1."""
    input_ids = torch.tensor([[0, 0, 1], [0, 1, 0]])  # (B, P + R)
    response_mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # (B, R)
    attention_mask = torch.cat([torch.ones(2, 1, dtype=torch.long), response_mask.long()], dim=1)
    return Rollout(input_ids, attention_mask, response_mask, prompt_length=1, old_logprobs=old_logprobs)


def _one_minibatch(
    table: torch.Tensor,
    advantages: torch.Tensor,
    *,
    micro_batch_tokens: int,
    entropy_coef: float = 0.0,
    old_logprobs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One PPO epoch over one minibatch of both rows: (the gradient the optimizer stepped with, metrics)."""
    policy = Bigram(table)
    optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
    gradients: list[torch.Tensor] = []
    optimizer.register_step_pre_hook(lambda *_: gradients.append(policy.table.grad.clone()))  # type: ignore[union-attr]
    update = PPOUpdate(
        policy,
        None,
        get_algorithm("grpo"),
        Optimizers(optimizer, [policy.table], None, [], []),
        temperature=1.0,
        clip_epsilon=0.2,
        kl_coef=0.0,
        entropy_coef=entropy_coef,
        value_clip=0.2,
        max_grad_norm=1e9,  # no clipping: the raw gradient reaches the optimizer
        micro_batch_tokens=micro_batch_tokens,
        on_warning=lambda _: None,
        dist=DistContext(),
    )
    torch.manual_seed(0)
    batch = StepBatch(_two_rows(old_logprobs), advantages, torch.zeros(2), None, None)
    metrics = update.run(batch, ppo_epochs=1, minibatch_size=2)
    assert len(gradients) == 1
    assert policy.table.grad is None  # freed after the step: it would otherwise sit through the rollout
    return gradients[0], metrics


@CUTS
def test_a_minibatchs_gradient_does_not_depend_on_its_micro_batches(micro_batch_tokens: int) -> None:
    """L = −(1/N)·Σ_t A_t·ratio_t over the minibatch's N = 3 tokens however it is cut. At a uniform policy
    ∂ratio_t/∂z_0 = 1[y_t = 0] − ½, so with A = (1, 1 | −1): ∂L/∂z_0 = −(1/3)·(½ − ½ + ½) = −1/6 and
    ∂L/∂z_1 = +1/6 on token 0's row, and L = −(1 + 1 − 1)/3. Weighting every micro-batch as a whole
    minibatch would give −(0 + ½) = −½ once the minibatch is cut into its rows."""
    advantages = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])  # (B, R); row 1's second token is masked out
    old = torch.full((2, 2), -math.log(2))  # sampled by the uniform policy: every ratio is 1
    gradient, metrics = _one_minibatch(
        UNIFORM, advantages, micro_batch_tokens=micro_batch_tokens, old_logprobs=old
    )
    expected = torch.tensor([[-1 / 6, 1 / 6], [0.0, 0.0]])  # token 1's row predicts no counted token
    torch.testing.assert_close(gradient, expected, rtol=0, atol=1e-7)
    assert metrics["train/policy_loss"] == pytest.approx(-1 / 3, abs=1e-7)
    assert metrics["train/grad_norm"] == pytest.approx(math.sqrt(2) / 6, abs=1e-7)


@CUTS
def test_the_entropy_bonus_pushes_towards_a_flatter_policy(micro_batch_tokens: int) -> None:
    """With A = 0 the gradient is the bonus's alone: −c·∂H/∂z. For two logits (a, 0), p = σ(a) and
    H = log(1 + e^a) − p·a, so ∂H/∂a = −a·p·(1 − p); at a = log 3 (p = ¾) that is −(3/16)·log 3 at each of
    the 3 tokens (all predicted from token 0), and H = 2·log 2 − ¾·log 3."""
    skewed = torch.tensor([[math.log(3), 0.0], [0.0, 0.0]])
    no_advantage = torch.zeros(2, 2)
    coef = 0.1
    gradient, metrics = _one_minibatch(
        skewed, no_advantage, micro_batch_tokens=micro_batch_tokens, entropy_coef=coef
    )
    slope = coef * (3 / 16) * math.log(3)  # on z_0 of token 0's row; z_1 gets the opposite
    torch.testing.assert_close(gradient, torch.tensor([[slope, -slope], [0.0, 0.0]]), rtol=0, atol=1e-7)
    assert metrics["train/entropy"] == pytest.approx(2 * math.log(2) - 0.75 * math.log(3), abs=1e-6)

    without, metrics_without = _one_minibatch(skewed, no_advantage, micro_batch_tokens=micro_batch_tokens)
    assert torch.count_nonzero(without) == 0  # no bonus, no advantage: nothing to move
    assert metrics_without["train/entropy"] == pytest.approx(metrics["train/entropy"], abs=1e-7)


def test_a_critic_step_frees_its_gradients_once_applied() -> None:
    critic = nn.Linear(3, 1)
    before = critic.weight.detach().clone()
    optimizer = torch.optim.SGD(critic.parameters(), lr=0.1)
    critic(torch.ones(2, 3)).sum().backward()
    replicated_step(optimizer, list(critic.parameters()), max_grad_norm=1e9, dist=DistContext())
    assert not torch.equal(critic.weight, before)
    assert critic.weight.grad is None and critic.bias.grad is None
