"""pass@1 (greedy), avg@k (k samples at the given temperature) and the mean reward of a model on a file.

A completion passes when its reward reaches `pass_threshold` (1.0 by default: full credit), so pass@1 and
avg@k keep their meaning under partial-credit graders; eval/reward_mean is the greedy completions' mean
reward. k = 0 scores the greedy completions alone (the trainer's cheap intermediate evaluations).

A sharded policy is evaluated by every rank at once, each for its share of the items (`validation_share`),
and the scores are summed over the ranks (`summed_over_ranks`).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from grading.result import GradeResult
from worker.engine.data import encode_prompts, load_items
from worker.engine.distributed import DistContext
from worker.engine.graders import BatchGrader, build_grader
from worker.engine.policy import load_base_model, load_tokenizer, resolve_device, with_adapter
from worker.engine.precision import enable_tf32, resolve_attn_implementation, resolve_dtype
from worker.engine.rollout import ControlFn, Rollout, generate
from worker.engine.selection import PASS_AT_1


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
        scores = {PASS_AT_1: self.pass_at_1, "eval/reward_mean": self.reward_mean}
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
    compute_dtype: torch.dtype = torch.float32,
) -> EvalResult:
    """Score `items`: one greedy completion each, plus `samples` (may be 0) sampled ones for avg@k."""
    greedy_texts, sampled_texts = _complete(
        model,
        tokenizer,
        items,
        samples,
        temperature=temperature,
        max_response_tokens=max_response_tokens,
        top_p=top_p,
        token_budget=token_budget,
        control=control,
        compute_dtype=compute_dtype,
    )
    # one batch: a Python grader's pool and a judge's concurrent calls take greedy and sampled together
    sampled_calls = [(items[i // samples], text) for i, text in enumerate(sampled_texts)]
    grades = grader.grade([*zip(items, greedy_texts, strict=True), *sampled_calls])
    greedy, sampled = grades[: len(items)], grades[len(items) :]
    results = [
        _item_result(i, greedy_texts[i], greedy[i], sampled_texts[i * samples : (i + 1) * samples],
                     sampled[i * samples : (i + 1) * samples], pass_threshold)
        for i in range(len(items))
    ]  # fmt: skip
    return _summary(results, greedy + sampled, samples=samples, pass_threshold=pass_threshold)


def _summary(
    results: list[dict[str, Any]], grades: list[GradeResult], *, samples: int, pass_threshold: float
) -> EvalResult:
    """The scores over the items' `results`; `grades` (greedy and sampled) count the grading failures."""
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
        grader_errors=sum(not grade.ok for grade in grades),
        grader_error=_first_error([g.errors for g in grades]),
    )


def _complete(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items: list[dict[str, Any]],
    samples: int,
    *,
    temperature: float,
    max_response_tokens: int,
    top_p: float,
    token_budget: int,
    control: ControlFn | None,
    compute_dtype: torch.dtype,
) -> tuple[list[str], list[str]]:
    """(the greedy completion of each item, `samples` sampled completions of each item, item by item)."""
    prompts = encode_prompts(tokenizer, items)
    options: dict[str, Any] = {
        "pad_id": tokenizer.pad_token_id,
        "eos_id": tokenizer.eos_token_id,
        "max_new_tokens": max_response_tokens,
        "token_budget": token_budget,
        "control": control,
        "compute_dtype": compute_dtype,
    }
    greedy_texts = completions(tokenizer, generate(model, prompts, greedy=True, **options))
    repeated = [prompt for prompt in prompts for _ in range(samples)]
    sampled_texts = (
        completions(tokenizer, generate(model, repeated, temperature=temperature, top_p=top_p, **options))
        if repeated
        else []
    )
    return greedy_texts, sampled_texts


def _item_result(
    index: int,
    completion: str,
    grade: GradeResult,
    samples: list[str],
    sample_grades: list[GradeResult],
    pass_threshold: float,
) -> dict[str, Any]:
    """One item's entry of EvalResult.items."""
    result: dict[str, Any] = {
        "index": index,
        "completion": completion,
        "reward": grade.reward,
        "passed": grade.reward >= pass_threshold,
        "sample_rewards": [g.reward for g in sample_grades],
        "samples": samples,
    }
    if grade.sub_rewards:
        result["sub_rewards"] = grade.sub_rewards
    if grade.errors:
        result["grader_errors"] = grade.errors
    return result


def _first_error(errors: list[dict[str, str]]) -> str:
    """The first flagged grading's flag and details ("invalid_variable_error: ..."), "" when none is."""
    return next((f"{flag}: {details}".rstrip(": ") for e in errors for flag, details in e.items()), "")


def validation_share(items: list[dict[str, Any]], dist: DistContext) -> tuple[list[dict[str, Any]], int]:
    """This rank's contiguous share of the validation items and how many of them count: the ranks
    generate in lockstep, so every share is as long, the last one filled up with uncounted copies of
    the last item."""
    per_rank = -(-len(items) // dist.world_size)
    mine = items[dist.rank * per_rank : (dist.rank + 1) * per_rank]
    return mine + [items[-1]] * (per_rank - len(mine)), len(mine)


def summed_over_ranks(
    result: EvalResult, counted: int, total: int, dist: DistContext, pass_threshold: float
) -> EvalResult:
    """pass@1, avg@k and the mean reward over every rank's `counted` items, `total` of them in all
    (per-item results stay with their rank)."""
    mine = result.items[:counted]
    totals = dist.sum_scalars(
        {
            "pass": float(sum(item["passed"] for item in mine)),
            "reward": float(sum(item["reward"] for item in mine)),
            "avg": sum(sum(s >= pass_threshold for s in item["sample_rewards"]) / result.k for item in mine)
            if result.k
            else 0.0,
        }
    )
    return EvalResult(
        pass_at_1=totals["pass"] / total,
        avg_at_k=totals["avg"] / total,
        k=result.k,
        reward_mean=totals["reward"] / total,
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
    dtype: str = "auto",
) -> EvalResult:
    """Standalone evaluation of a base model, or of a base model plus a peft adapter (`sppo eval`); the
    model is stored and computes in `dtype` (RunConfig.dtype's names; an adapter stays float32)."""
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(model_dir)
    run_device = resolve_device(device)
    enable_tf32(run_device)
    compute_dtype = resolve_dtype(dtype, run_device)
    attention = resolve_attn_implementation("auto", run_device, compute_dtype)
    model = with_adapter(load_base_model(model_dir, run_device, compute_dtype, attention), adapter_dir)
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
            compute_dtype=compute_dtype,
        )
    finally:
        grader.close()
