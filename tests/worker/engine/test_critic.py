"""The SPPO critic's fit (critic.py) on a critic small enough to work its steps out by hand."""

import math

import pytest
import torch
from torch import nn

from worker.engine.batching import TokenBudget
from worker.engine.critic import Critic, SequenceCriticFit
from worker.engine.distributed import DistContext
from worker.engine.rollout import Rollout

RETURNS = torch.tensor([1.0, 0.0, 1.0])  # R per row


class ConstantHidden(Critic):
    """A sequence critic whose backbone always says 1, so v = w + b (its head's zero-initialised weight
    and bias)."""

    def __init__(self) -> None:
        super().__init__(hidden_size=1, level="sequence")

    def backbone(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.ones(*input_ids.shape, 1)  # (B, P, 1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())


def _fit(
    micro_batch_tokens: int, minibatch_size: int
) -> tuple[torch.Tensor, dict[str, float], list[torch.Tensor]]:
    """One fit over 3 rows of 2 tokens (P = 1, R = 1) with SGD at lr 1: (the values it returns, its
    metrics, the bias gradient of each optimizer step)."""
    critic = ConstantHidden()
    params = critic.trainable_parameters()
    optimizer = torch.optim.SGD(params, lr=1.0)
    bias_gradients: list[torch.Tensor] = []
    optimizer.register_step_pre_hook(lambda *_: bias_gradients.append(critic.head.linear.bias.grad.clone()))  # type: ignore[union-attr]
    budget = TokenBudget(
        micro_batch_tokens, DistContext(), sharded=False, on_oom=lambda: None, on_warning=lambda _: None
    )
    fit = SequenceCriticFit(critic, optimizer, params, budget=budget, dist=DistContext(), max_grad_norm=1e9)
    input_ids = torch.tensor([[5, 1], [6, 1], [7, 1]])  # (B, P + R)
    rollout = Rollout(input_ids, torch.ones_like(input_ids), torch.ones(3, 1), prompt_length=1)
    values, metrics = fit(rollout, RETURNS, minibatch_size)
    return values, metrics, bias_gradients


@pytest.mark.parametrize("micro_batch_tokens", [6, 2], ids=["one-micro-batch", "one-row-each"])
def test_the_critics_gradient_does_not_depend_on_its_micro_batches(micro_batch_tokens: int) -> None:
    """BCE is a sample-mean over the minibatch however it is cut: ∂/∂v = σ(0) − R = (−½, ½, −½), mean −1/6.
    Weighting every micro-batch as a whole minibatch would give their sum, −½, once cut into rows."""
    values, metrics, bias_gradients = _fit(micro_batch_tokens, minibatch_size=3)
    assert len(bias_gradients) == 1
    torch.testing.assert_close(bias_gradients[0], torch.tensor([-1 / 6]), rtol=0, atol=1e-7)
    assert values.tolist() == [0.0, 0.0, 0.0]  # read before the step
    assert metrics["train/critic_loss"] == pytest.approx(math.log(2), abs=1e-7)  # BCE at v = 0
    assert metrics["train/value_mean"] == pytest.approx(0.5, abs=1e-7)


def test_each_baseline_is_read_before_the_critic_has_trained_on_its_sample() -> None:
    """One row per minibatch: row k's value is the critic's after the steps on rows < k only.
    Row 0 reads v = 0; the step on R = 1 moves w and b by −(σ(0) − 1) = +½ each, so row 1 reads v = 1;
    the step on R = 0 moves them by −σ(1), so row 2 reads v = 2·(½ − σ(1)) = 1 − 2σ(1)."""
    values, _, bias_gradients = _fit(micro_batch_tokens=6, minibatch_size=1)
    sigmoid_1 = 1 / (1 + math.exp(-1))
    torch.testing.assert_close(values, torch.tensor([0.0, 1.0, 1 - 2 * sigmoid_1]), rtol=0, atol=1e-6)
    third = 1 - 2 * sigmoid_1
    expected_gradients = [0.5 - 1, sigmoid_1 - 0, 1 / (1 + math.exp(-third)) - 1]  # σ(v_k) − R_k
    assert [g.item() for g in bias_gradients] == pytest.approx(expected_gradients, abs=1e-6)
