"""pass@1 (greedy) and avg@k (k samples at the given temperature) of a model on a JSONL file."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import nn
from transformers import PreTrainedTokenizerBase

from worker.engine.data import encode_prompts, load_items
from worker.engine.graders import Grader, build_grader
from worker.engine.policy import load_base_model, load_tokenizer, resolve_device
from worker.engine.rollout import ControlFn, Rollout, generate


@dataclass
class EvalResult:
    pass_at_1: float
    avg_at_k: float
    k: int
    items: list[dict[str, Any]] = field(default_factory=list)
    """Per item: index, the greedy completion and its reward, the k sampled completions and rewards."""

    def scores(self) -> dict[str, float]:
        """Metric names as used everywhere: eval/pass@1 and eval/avg@<k>."""
        return {"eval/pass@1": self.pass_at_1, f"eval/avg@{self.k}": self.avg_at_k}


def completions(tokenizer: PreTrainedTokenizerBase, rollout: Rollout) -> list[str]:
    """Response texts without padding or special tokens."""
    responses = rollout.responses.masked_fill(rollout.response_mask == 0, tokenizer.pad_token_id)
    return [str(text) for text in tokenizer.batch_decode(responses, skip_special_tokens=True)]


def evaluate_policy(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items: list[dict[str, Any]],
    grader: Grader,
    *,
    samples: int,
    temperature: float,
    max_response_tokens: int,
    top_p: float = 1.0,
    token_budget: int = 65536,
    control: ControlFn | None = None,
) -> EvalResult:
    """Score `items`: one greedy completion each, plus `samples` sampled ones for avg@k."""
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
    sampled = generate(model, repeated, temperature=temperature, top_p=top_p, **options)
    sampled_texts = completions(tokenizer, sampled)
    results: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        sample_rewards = [grader(item, text) for text in sampled_texts[i * samples : (i + 1) * samples]]
        results.append(
            {
                "index": i,
                "completion": greedy_texts[i],
                "reward": grader(item, greedy_texts[i]),
                "sample_rewards": sample_rewards,
                "samples": sampled_texts[i * samples : (i + 1) * samples],
            }
        )
    pass_at_1 = sum(r["reward"] for r in results) / len(results)
    avg_at_k = sum(sum(r["sample_rewards"]) / samples for r in results) / len(results)
    return EvalResult(pass_at_1=pass_at_1, avg_at_k=avg_at_k, k=samples, items=results)


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
) -> EvalResult:
    """Standalone evaluation of a base model, or of a base model plus a peft adapter (`sppo eval`)."""
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(model_dir)
    model: nn.Module = load_base_model(model_dir, resolve_device(device))
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    items = load_items(data_file, param="validation_file")[:max_items]
    return evaluate_policy(
        model,
        tokenizer,
        items,
        build_grader(grader_spec),
        samples=samples,
        temperature=temperature,
        max_response_tokens=max_response_tokens,
        top_p=top_p,
        token_budget=token_budget,
        control=control,
    )
