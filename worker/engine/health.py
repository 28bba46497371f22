"""Training-health checks: each returns health/* metrics and warnings for the caller to emit as events."""

from dataclasses import dataclass, field

import torch
from torch import nn

from worker.engine.sharding import local_part, sum_over_shards

Warning_ = tuple[str, dict[str, float]]
ZERO_ADVANTAGE_WARN = 0.8  # above this share of samples the step barely trains (e.g. all-equal GRPO groups)
HACKING_MARGIN = 0.05  # reward up and validation down by more than this between evaluations


def fingerprint(parameters: list[nn.Parameter]) -> torch.Tensor:
    """Per-tensor (sum, sum of squares) in float64: cheap to keep, changes whenever a tensor moves.
    A sharded tensor's sums are taken over its shards on every rank (a collective) and added up."""
    rows = torch.stack([_sums(p) for p in parameters]).cpu()  # (N, 2)
    return sum_over_shards(rows, parameters)


def _sums(parameter: nn.Parameter) -> torch.Tensor:
    """(sum, sum of squares) of one tensor in float64. One float64 copy at a time, squared in place: copies
    of every trained tensor alive together would be 8 bytes per trained parameter at the update's peak."""
    copy = local_part(parameter.detach()).to(torch.float64, copy=True)
    total = copy.sum()
    return torch.stack([total, copy.pow_(2).sum()])


@dataclass
class HealthMonitor:
    entropy_floor: float
    last_eval_score: float | None = None
    rewards_since_eval: list[float] = field(default_factory=list)
    reward_at_last_eval: float | None = None
    unchanged_last_step: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))

    def after_step(
        self,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        entropy: float,
        reward_mean: float,
        before: torch.Tensor,
        after: torch.Tensor,
    ) -> tuple[dict[str, float], list[Warning_]]:
        warnings: list[Warning_] = []
        row_abs = (advantages.abs() * response_mask).sum(-1)  # (B,)
        zero_adv_frac = (row_abs == 0).float().mean().item()
        unchanged = (before == after).all(-1)  # (N,)
        unchanged_frac = unchanged.float().mean().item()
        # Warned only when a tensor stays put two steps running: in a step of one optimizer update a LoRA
        # A gets no gradient (its B starts at zero), which is expected, not a fault.
        previous = self.unchanged_last_step
        stuck = int((unchanged & previous).sum()) if previous.shape == unchanged.shape else 0
        self.unchanged_last_step = unchanged
        metrics = {
            "health/zero_adv_frac": zero_adv_frac,
            "health/unchanged_param_frac": unchanged_frac,
            "health/entropy_collapse": float(entropy < self.entropy_floor),
        }
        if zero_adv_frac > ZERO_ADVANTAGE_WARN:
            warnings.append((f"{zero_adv_frac:.0%} of samples have zero advantage and do not train", metrics))
        if stuck:
            warnings.append((f"{stuck} trainable tensors did not change in the last two steps", metrics))
        if entropy < self.entropy_floor:
            warnings.append(
                (f"token entropy {entropy:.4f} is below {self.entropy_floor}: the policy may have collapsed",
                 metrics)
            )  # fmt: skip
        self.rewards_since_eval.append(reward_mean)
        return metrics, warnings

    def after_eval(self, score: float) -> tuple[dict[str, float], list[Warning_]]:
        """Reward hacking: training reward rising while the validation score falls."""
        reward = sum(self.rewards_since_eval) / max(1, len(self.rewards_since_eval))
        hacking = (
            self.last_eval_score is not None
            and self.reward_at_last_eval is not None
            and reward - self.reward_at_last_eval > HACKING_MARGIN
            and self.last_eval_score - score > HACKING_MARGIN
        )
        metrics = {"health/reward_hacking": float(hacking)}
        warnings: list[Warning_] = []
        if hacking:
            warnings.append(
                (f"training reward rose to {reward:.3f} while the validation score fell to {score:.3f}: "
                 "the policy may be exploiting the grader", metrics)
            )  # fmt: skip
        self.last_eval_score, self.reward_at_last_eval = score, reward
        self.rewards_since_eval = []
        return metrics, warnings

    def state_dict(self) -> dict[str, object]:
        return {
            "last_eval_score": self.last_eval_score,
            "reward_at_last_eval": self.reward_at_last_eval,
            "rewards_since_eval": list(self.rewards_since_eval),
            "unchanged_last_step": self.unchanged_last_step.tolist(),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.last_eval_score = state["last_eval_score"]  # type: ignore[assignment]
        self.reward_at_last_eval = state["reward_at_last_eval"]  # type: ignore[assignment]
        self.rewards_since_eval = list(state["rewards_since_eval"])  # type: ignore[call-overload]
        # absent from checkpoints written before this field existed
        self.unchanged_last_step = torch.tensor(state.get("unchanged_last_step", []), dtype=torch.bool)
