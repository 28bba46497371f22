"""The preflight of a new job: score the model it starts from (the base model, or the fine-tuned model or
checkpoint a warm start continues) on a sample of its training data with the job's grader.

A grader that gives every completion the same reward (all 0: it cannot read the model's answers; all 1:
it accepts anything; any other constant: partial credit that ignores the answer) makes reinforcement
learning learn nothing, yet the run would end a green `succeeded`. Caught here, before any training step,
the job fails with an error that names the grader; the hyperparameter extension `allow_constant_reward:
true` turns the failure into a warning.
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
from worker.engine.policy import load_base_model, load_tokenizer, resolve_device, with_adapter
from worker.engine.precision import resolve_precision

CODE = "grader_constant_reward"
GRADER_FAILED = "grader_error"
OVERRIDE = "allow_constant_reward"


@dataclass(frozen=True)
class PreflightResult:
    items: int
    completions: int
    reward_mean: float
    example: str
    """One completion of the model scored, to show the user what the grader was given."""
    reward_spread: float = 0.0
    """Largest minus smallest reward: 0 means the grader gave every completion the same reward."""
    error_rate: float = 0.0
    """Share of completions whose grading failed (reward 0): a grader that raises or times out."""
    error: str = ""
    """The first grading failure, flag and details."""

    @property
    def constant(self) -> float | None:
        """The one reward every completion got (zero variance), or None when the rewards vary."""
        return self.reward_mean if self.reward_spread == 0 else None


def grader_label(spec: dict[str, Any]) -> str:
    """How messages name a grader: its name and type, and the pattern of a regex grader."""
    label = f"grader '{spec.get('name', '?')}' ({spec.get('type', '?')}"
    if spec.get("type") == "regex":
        label += f", pattern {spec.get('pattern')!r}"
    return label + ")"


def scored_model(parent_model: str | None) -> str:
    """How the preflight's messages name the model it scored: the parent of a warm start, which the job
    continues, or else the base model."""
    return "the base model" if parent_model is None else f"the model '{parent_model}' this job continues"


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
    device = resolve_device(config.device)
    precision = resolve_precision(config, device)  # the job's own: the base model it will train
    base = load_base_model(config.model, device, precision.dtype, precision.attn_implementation)
    model = with_adapter(base, config.init_adapter)  # a warm start begins at its parent's answers
    torch.manual_seed(config.seed)
    grader = build_grader(config.grader, config.grading)
    try:
        result = evaluate_policy(
            model,
            tokenizer,
            sample,
            grader,
            samples=samples_per_item(len(sample)),
            temperature=config.temperature,
            max_response_tokens=config.max_response_tokens,
            top_p=config.top_p,
            token_budget=config.micro_batch_tokens,
            compute_dtype=precision.dtype,
        )
    finally:
        grader.close()
    rewards = [r["reward"] for r in result.items] + [s for r in result.items for s in r["sample_rewards"]]
    return PreflightResult(
        items=len(sample),
        completions=len(rewards),
        reward_mean=sum(rewards) / len(rewards),
        reward_spread=max(rewards) - min(rewards),
        error_rate=result.grader_errors / len(rewards),
        error=result.grader_error,
        example=str(result.items[0]["completion"]) if result.items else "",
    )


def constant_reward_message(
    result: PreflightResult, spec: dict[str, Any], *, override: bool, model: str
) -> str:
    """`model`: the model scored, as `scored_model` names it."""
    reward = result.constant
    what = {
        0.0: "never matches the model's answers",
        1.0: "accepts every answer of the model",
    }.get(reward or 0.0, "gives the same partial credit whatever the answer")
    if result.error_rate > 0:
        what += f" (grading failed on {result.error_rate:.0%} of them: see the grader's error flags)"
    message = (
        f"Preflight: the {grader_label(spec)} gave reward {reward:g} to all {result.completions} "
        f"completions of {model} on {result.items} training items: it {what}, so training "
        f"cannot learn. Example completion: {result.example[:120]!r}."
    )
    if override:
        return message + f" Training anyway ({OVERRIDE} is set)."
    return (
        message + " Use a grader that fits the model's output (GET /v1/models shows the model's "
        f"recommended_grader), or set the hyperparameter {OVERRIDE}=true to train anyway."
    )


def check(result: PreflightResult, spec: dict[str, Any], *, override: bool, model: str) -> str | None:
    """None when the rewards vary; the warning to record when overridden; else raises the job's error.
    `model`: the model scored, as `scored_model` names it.

    A grader that failed on every completion fails the job whatever the override: it would train on
    nothing but its own errors."""
    if result.error_rate == 1.0:
        raise EngineError(
            GRADER_FAILED,
            f"Preflight: the {grader_label(spec)} failed on all {result.completions} completions of {model} "
            f"on {result.items} training items ({result.error}). Try it on a completion with "
            "POST /v1/fine_tuning/alpha/graders/run (sppo graders run).",
            "grader",
        )
    if result.constant is None:
        return None
    message = constant_reward_message(result, spec, override=override, model=model)
    if override:
        return message
    raise EngineError(CODE, message, "grader")
