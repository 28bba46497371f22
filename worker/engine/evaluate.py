"""pass@1 (greedy), avg@k (k samples at the given temperature) and the mean reward of a model on a file.

A completion passes when its reward reaches `pass_threshold` (1.0 by default: full credit), so pass@1 and
avg@k keep their meaning under partial-credit graders; eval/reward_mean is the greedy completions' mean
reward. k = 0 scores the greedy completions alone (the trainer's cheap intermediate evaluations).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import nn
from transformers import PreTrainedTokenizerBase

from worker.engine.data import encode_prompts, load_items
from worker.engine.graders import BatchGrader, build_grader
from worker.engine.policy import load_base_model, load_tokenizer, resolve_device
from worker.engine.rollout import ControlFn, Rollout, generate


@dataclass
class EvalResult:
    pass_at_1: float
    avg_at_k: float
    """0.0 when k is 0."""
    k: int
    items: list[dict[str, Any]] = field(default_factory=list)
    """Per item: index, the greedy completion, its reward and whether it passed, the k sampled completions
    and their rewards, sub-rewards of a multi grader and grader error flags."""
    reward_mean: float = 0.0
    """Mean reward of the greedy completions."""
    grader_errors: int = 0
    """Completions (greedy and sampled) whose grading failed (reward 0)."""
    grader_error: str = ""
    """The first failure's flag and details ("invalid_variable_error: {{item.x}} has no value ...")."""

    def scores(self) -> dict[str, float]:
        """Metric names as used everywhere: eval/pass@1, eval/reward_mean and eval/avg@<k> (k > 0)."""
        scores = {"eval/pass@1": self.pass_at_1, "eval/reward_mean": self.reward_mean}
        if self.k > 0:
            scores[f"eval/avg@{self.k}"] = self.avg_at_k
        return scores


def completions(tokenizer: PreTrainedTokenizerBase, rollout: Rollout) -> list[str]:
    """Response texts without padding or special tokens."""
    responses = rollout.responses.masked_fill(rollout.response_mask == 0, tokenizer.pad_token_id)
    return [str(text) for text in tokenizer.batch_decode(responses, skip_special_tokens=True)]


def evaluate_policy(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items: list[dict[str, Any]],
    grader: BatchGrader,
    *,
    samples: int,
    temperature: float,
    max_response_tokens: int,
    top_p: float = 1.0,
    token_budget: int = 65536,
    control: ControlFn | None = None,
    pass_threshold: float = 1.0,
) -> EvalResult:
    """Score `items`: one greedy completion each, plus `samples` (may be 0) sampled ones for avg@k."""
    prompts = encode_prompts(tokenizer, items)
    options: dict[str, Any] = {
        "pad_id": tokenizer.pad_token_id,
        "eos_id": tokenizer.eos_token_id,
        "max_new_tokens": max_response_tokens,
        "token_budget": token_budget,
        "control": control,
    }
    greedy_texts = completions(tokenizer, generate(model, prompts, greedy=True, **options))
    repeated = [prompt for prompt in prompts for _ in range(samples)]
    sampled_texts = (
        completions(tokenizer, generate(model, repeated, temperature=temperature, top_p=top_p, **options))
        if repeated
        else []
    )
    greedy = grader.grade(list(zip(items, greedy_texts, strict=True)))
    sampled = grader.grade([(items[i // samples], text) for i, text in enumerate(sampled_texts)])
    results: list[dict[str, Any]] = []
    for i in range(len(items)):
        sample_rewards = [grade.reward for grade in sampled[i * samples : (i + 1) * samples]]
        result: dict[str, Any] = {
            "index": i,
            "completion": greedy_texts[i],
            "reward": greedy[i].reward,
            "passed": greedy[i].reward >= pass_threshold,
            "sample_rewards": sample_rewards,
            "samples": sampled_texts[i * samples : (i + 1) * samples],
        }
        if greedy[i].sub_rewards:
            result["sub_rewards"] = greedy[i].sub_rewards
        if greedy[i].errors:
            result["grader_errors"] = greedy[i].errors
        results.append(result)
    count = len(results)
    passed = [float(r["passed"]) for r in results]
    sample_passes = (
        [sum(s >= pass_threshold for s in r["sample_rewards"]) / samples for r in results] if samples else []
    )
    return EvalResult(
        pass_at_1=sum(passed) / count,
        avg_at_k=sum(sample_passes) / count if samples else 0.0,
        k=samples,
        items=results,
        reward_mean=sum(r["reward"] for r in results) / count,
        grader_errors=sum(not grade.ok for grade in greedy + sampled),
        grader_error=next(
            (
                f"{flag}: {details}".rstrip(": ")
                for g in greedy + sampled
                for flag, details in g.errors.items()
            ),
            "",
        ),
    )


def evaluate(
    model_dir: str | Path,
    adapter_dir: str | Path | None,
    data_file: str | Path,
    grader_spec: dict[str, Any],
    samples: int,
    temperature: float,
    max_response_tokens: int,
    *,
    top_p: float = 1.0,
    max_items: int | None = None,
    device: str = "auto",
    seed: int = 0,
    token_budget: int = 65536,
    control: ControlFn | None = None,
    grading: dict[str, Any] | None = None,
    pass_threshold: float = 1.0,
) -> EvalResult:
    """Standalone evaluation of a base model, or of a base model plus a peft adapter (`sppo eval`)."""
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(model_dir)
    model: nn.Module = load_base_model(model_dir, resolve_device(device))
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    items = load_items(data_file, param="validation_file")[:max_items]
    grader = build_grader(grader_spec, grading)
    try:
        return evaluate_policy(
            model,
            tokenizer,
            items,
            grader,
            samples=samples,
            temperature=temperature,
            max_response_tokens=max_response_tokens,
            top_p=top_p,
            token_budget=token_budget,
            control=control,
            pass_threshold=pass_threshold,
        )
    finally:
        grader.close()
