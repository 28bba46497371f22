"""The step's optimizers, AdamW for the actor and for the critic at a constant learning rate, and the
guards and gradient step the actor's and the critic's updates share."""

from dataclasses import dataclass

import torch
from torch import nn

from worker.engine.distributed import DistContext
from worker.engine.errors import TrainingDivergedError


@dataclass
class Optimizers:
    actor: torch.optim.Optimizer
    actor_params: list[nn.Parameter]
    critic: torch.optim.Optimizer | None
    critic_params: list[nn.Parameter]
    schedulers: list[torch.optim.lr_scheduler.LambdaLR]

    def zero_grad(self) -> None:
        self.actor.zero_grad(set_to_none=True)
        if self.critic is not None:
            self.critic.zero_grad(set_to_none=True)


def _constant(_: int) -> float:
    return 1.0


def build_optimizers(
    actor_params: list[nn.Parameter],
    critic_params: list[nn.Parameter],
    *,
    learning_rate: float,
    critic_learning_rate: float,
    weight_decay: float,
) -> Optimizers:
    """AdamW for the actor and, when there are critic parameters, for the critic; constant learning rates
    (the authors' recipe: no warm-up, no decay)."""
    actor = torch.optim.AdamW(actor_params, lr=learning_rate, weight_decay=weight_decay)
    critic = (
        torch.optim.AdamW(critic_params, lr=critic_learning_rate, weight_decay=weight_decay)
        if critic_params
        else None
    )
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, _constant) for o in (actor, critic) if o]
    return Optimizers(actor, actor_params, critic, critic_params, schedulers)


def replicated_step(
    optimizer: torch.optim.Optimizer, params: list[nn.Parameter], *, max_grad_norm: float, dist: DistContext
) -> None:
    """The optimizer step of a model every rank holds whole (a critic): each rank's gradients, already
    weighted by its share of the global minibatch, summed over the ranks, then clipped."""
    dist.reduce_gradients(params)
    nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    # nothing reads them again; kept to the next minibatch they would sit through the rollout
    optimizer.zero_grad(set_to_none=True)


def check_finite(value: torch.Tensor, what: str) -> None:
    if not torch.isfinite(value).all():
        raise TrainingDivergedError(
            f"the {what} loss became {value.item()}: training stopped instead of updating on garbage. "
            "Lower the learning rate (learning_rate_multiplier) or check the rewards."
        )
