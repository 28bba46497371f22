"""The preflight of a new job: score the base model on a sample of its training data with the job's grader.

A grader that gives every completion the same reward (all 0: it cannot read the model's answers; all 1:
it accepts anything) makes reinforcement learning learn nothing, yet the run would end a green
`succeeded`. Caught here, before any training step, the job fails with an error that names the grader;
the hyperparameter extension `allow_constant_reward: true` turns the failure into a warning.
"""

import random
from dataclasses import dataclass
from typing import Any

import torch

from worker.engine.config import RunConfig
from worker.engine.data import load_items
from worker.engine.errors import EngineError
from worker.engine.evaluate import evaluate_policy
from worker.engine.graders import build_grader
from worker.engine.policy import load_base_model, load_tokenizer, resolve_device

CODE = "grader_constant_reward"
OVERRIDE = "allow_constant_reward"


@dataclass(frozen=True)
class PreflightResult:
    items: int
    completions: int
    reward_mean: float
    example: str
    """One completion of the base model, to show the user what the grader was given."""

    @property
    def constant(self) -> float | None:
        """The one reward every completion got (0 or 1), or None when the rewards vary."""
        return self.reward_mean if self.reward_mean in (0.0, 1.0) else None


def grader_label(spec: dict[str, Any]) -> str:
    """How messages name a grader: its name and type, and the pattern of a regex grader."""
    label = f"grader '{spec.get('name', '?')}' ({spec.get('type', '?')}"
    if spec.get("type") == "regex":
        label += f", pattern {spec.get('pattern')!r}"
    return label + ")"


MIN_SAMPLED = 64
"""Sampled completions the preflight always scores, however few items it has."""


def samples_per_item(items: int) -> int:
    """Sampled completions per item: at least one, and at least `MIN_SAMPLED` in all.

    A small training file would otherwise be judged on a handful of completions: 8 items of a base model
    that answers 24% of samples correctly all miss with probability 0.76^8 = 11%, a false alarm; 64
    completions all miss with probability 2e-8.
    """
    return max(1, -(-MIN_SAMPLED // items))


@torch.no_grad()
def run_preflight(config: RunConfig, *, max_items: int) -> PreflightResult:
    """A greedy completion of up to `max_items` training items, and sampled ones (`samples_per_item`)."""
    items = load_items(config.train_file)
    sample = random.Random(config.seed).sample(items, min(max_items, len(items)))
    tokenizer = load_tokenizer(config.model)
    model = load_base_model(config.model, resolve_device(config.device))
    torch.manual_seed(config.seed)
    result = evaluate_policy(
        model,
        tokenizer,
        sample,
        build_grader(config.grader),
        samples=samples_per_item(len(sample)),
        temperature=config.temperature,
        max_response_tokens=config.max_response_tokens,
        top_p=config.top_p,
        token_budget=config.micro_batch_tokens,
    )
    rewards = [r["reward"] for r in result.items] + [s for r in result.items for s in r["sample_rewards"]]
    return PreflightResult(
        items=len(sample),
        completions=len(rewards),
        reward_mean=sum(rewards) / len(rewards),
        example=str(result.items[0]["completion"]) if result.items else "",
    )


def constant_reward_message(result: PreflightResult, spec: dict[str, Any], *, override: bool) -> str:
    reward = result.constant
    what = (
        "never matches the base model's answers" if reward == 0 else "accepts every answer of the base model"
    )
    message = (
        f"Preflight: the {grader_label(spec)} gave reward {reward:g} to all {result.completions} "
        f"completions of the base model on {result.items} training items: it {what}, so training "
        f"cannot learn. Example completion: {result.example[:120]!r}."
    )
    if override:
        return message + f" Training anyway ({OVERRIDE} is set)."
    return (
        message + " Use a grader that fits the model's output (GET /v1/models shows the model's "
        f"recommended_grader), or set the hyperparameter {OVERRIDE}=true to train anyway."
    )


def check(result: PreflightResult, spec: dict[str, Any], *, override: bool) -> str | None:
    """None when the rewards vary; the warning to record when overridden; else raises the job's error."""
    if result.constant is None:
        return None
    message = constant_reward_message(result, spec, override=override)
    if override:
        return message
    raise EngineError(CODE, message, "grader")
