"""Builds a fixture model from scratch: `sppo fixture build --rebuild` (no model hub is reachable).

A character tokenizer and a ~1M-parameter Llama-style model get a supervised warm-up on the task. The
warm-up has a sharp phase transition (greedy accuracy goes 0.03 -> 0.85 within a few dozen steps), so its
end point is chosen by MEASURED accuracy, not by time or step count: near the transition greedy accuracy on
held-out problems is measured after every step, each measured state is kept, and the one closest to the
task's target accuracy inside its window is saved. The built directory (model, train/validation JSONL,
fixture.json with accuracies and checksums) is what ships in worker/engine/fixture_models/.
"""

import json
import logging
import random
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from worker.engine.fixture_tasks import FIXTURE_GRADER, FixtureTask, Problem
from worker.engine.fixtures import FIXTURE_VERSION, sha256

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]
CHARS = list("0123456789+=;# ")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
)
SAMPLED_TEMPERATURES = (0.5, 0.7, 1.0)
_ANSWER = re.compile(r"####\s*(-?\d+)")


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer (one token per character) with the fixture's chat template."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    backend.decoder = decoders.Fuse()  # characters join without spaces
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(vocab_size: int, max_positions: int, seed: int) -> LlamaForCausalLM:
    """About 1M parameters: hidden 128, 4 layers, 4 heads, tied embeddings."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def _encode(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> list[list[int]]:
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]


def _sft_batch(
    tokenizer: PreTrainedTokenizerFast, problems: list[Problem]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded prompt+completion ids and labels that score only completion tokens."""
    prompts = _encode(tokenizer, [tokenizer.bos_token + p for p, _, _ in problems])
    completions = _encode(tokenizer, [c + tokenizer.eos_token for _, c, _ in problems])
    width = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    input_ids = torch.full((len(problems), width), tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(problems), width), -100, dtype=torch.long)  # (B, T)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        input_ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        labels[i, len(p) : len(p) + len(c)] = torch.tensor(c)
    return input_ids, labels


@torch.no_grad()
def accuracy(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    problems: list[Problem],
    max_new_tokens: int,
    temperature: float | None = None,
    seed: int = 0,
) -> float:
    """Fraction of problems whose completion (greedy, or sampled at `temperature`) ends in the answer."""
    model.eval()  # type: ignore[no-untyped-call]
    tokenizer.padding_side = "left"
    batch = tokenizer([tokenizer.bos_token + p for p, _, _ in problems], return_tensors="pt", padding=True)
    torch.manual_seed(seed)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature else {"do_sample": False}
    )
    output = model.generate(
        **batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
    )
    texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    correct = 0
    for text, (_, _, answer) in zip(texts, problems, strict=True):
        found = _ANSWER.findall(text)
        correct += bool(found) and found[-1] == answer
    model.train()
    return correct / len(problems)


def warm_up(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    task: FixtureTask,
    seed: int,
    max_steps: int = 6000,
) -> tuple[float, int, list[tuple[int, float]]]:
    """Supervised warm-up; loads the measured state closest to task.target_accuracy inside task.window.

    Returns (selection accuracy, step, the (step, accuracy) trace).
    """
    rng, held_rng = random.Random(seed), random.Random(seed + 1)
    held_out = [task.make_problem(held_rng) for _ in range(task.selection_items)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    model.train()
    measured = accuracy(model, tokenizer, held_out, task.max_response_tokens)  # not 0 when initialised
    trace = [(0, measured)]
    kept: dict[int, tuple[float, dict[str, torch.Tensor]]] = {}
    if task.window[0] <= measured <= task.window[1]:
        kept[0] = (measured, {k: v.clone() for k, v in model.state_dict().items()})
    for step in range(1, max_steps + 1):
        if measured > task.window[1]:
            break
        make_problem = task.sft_problem or task.make_problem
        input_ids, labels = _sft_batch(tokenizer, [make_problem(rng) for _ in range(task.sft_batch)])
        loss = model(input_ids=input_ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        # often near the transition, every 20 steps before it (measuring costs time)
        if step % 20 == 0 or (measured >= 0.02 and step % task.measure_every == 0):
            measured = accuracy(model, tokenizer, held_out, task.max_response_tokens)
            trace.append((step, measured))
            logger.info(
                "%s warm-up step %d loss %.3f greedy accuracy %.3f", task.name, step, loss.item(), measured
            )
            if task.window[0] <= measured <= task.window[1]:
                kept[step] = (measured, {k: v.clone() for k, v in model.state_dict().items()})
    if not kept:
        raise RuntimeError(f"{task.name} warm-up never measured inside {task.window}: {trace[-5:]}")
    step = min(kept, key=lambda s: abs(kept[s][0] - task.target_accuracy))
    model.load_state_dict(kept[step][1])
    return kept[step][0], step, trace


def write_jsonl(path: Path, problems: list[Problem]) -> None:
    """Items in the API's data format: {"messages": [{"role": "user", ...}], "answer": ...}."""
    with path.open("w") as f:
        for prompt, _, answer in problems:
            item = {"messages": [{"role": "user", "content": prompt}], "answer": answer}
            f.write(json.dumps(item) + "\n")


def _defaults(task: FixtureTask, sampled: dict[str, float]) -> dict[str, Any]:
    """The model's sppo_defaults.json: the task's, and the hottest temperature at which enough samples
    still succeed (exploration, yet a reward signal)."""
    hot_enough = [t for t in SAMPLED_TEMPERATURES if sampled[str(t)] >= task.min_sampled_accuracy]
    return {"temperature": max(hot_enough, default=min(SAMPLED_TEMPERATURES)), **task.defaults}


def _save_model(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, model_dir: Path, defaults: dict[str, Any]
) -> Path:
    """A model directory as the service loads one: weights, tokenizer, defaults and grader."""
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (model_dir / "sppo_defaults.json").write_text(json.dumps(defaults, indent=2) + "\n")
    (model_dir / "sppo_grader.json").write_text(json.dumps(FIXTURE_GRADER, indent=2) + "\n")
    return model_dir


def build_fixture(task: FixtureTask, target: Path, seed: int = 0, init_from: Path | None = None) -> Path:
    """Build `task`'s fixture into `target`, replacing what is there; returns `target`.

    `init_from`: a model directory of the same shape whose weights start the warm-up (e.g. the short
    task's model for the long task; the rotary position encoding has no weights tied to a length).
    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), task.max_positions, seed)
    if init_from is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(init_from / "model.safetensors"), strict=False)
    selection, steps, trace = warm_up(model, tokenizer, task, seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    data_rng = random.Random(seed + 2)
    write_jsonl(staging / "train.jsonl", [task.make_problem(data_rng) for _ in range(4000)])
    validation = [task.make_problem(data_rng) for _ in range(task.validation_items)]
    write_jsonl(staging / "validation.jsonl", validation)
    greedy = accuracy(model, tokenizer, validation, task.max_response_tokens)
    sampled = {
        str(t): accuracy(model, tokenizer, validation, task.max_response_tokens, temperature=t, seed=seed)
        for t in SAMPLED_TEMPERATURES
    }
    model_dir = _save_model(model, tokenizer, staging / "model", _defaults(task, sampled))
    manifest = {
        "name": task.name,
        "version": FIXTURE_VERSION,
        "seed": seed,
        "base_accuracy": greedy,
        "base_sampled_accuracy": sampled,
        "validation_items": len(validation),
        "selection_accuracy": selection,
        "warmup_steps": steps,
        "warmup_trace": trace,
        "build_seconds": round(time.perf_counter() - started, 1),
        "build": f"sppo fixture build --name {task.name} --rebuild (worker/engine/fixture_build.py)",
        "init_from": str(init_from) if init_from is not None else None,
        "grader": FIXTURE_GRADER,
        "sha256": {p.name: sha256(p) for p in sorted(model_dir.iterdir()) if p.is_file()},
    }
    (staging / "fixture.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    logger.info("built fixture %s: %s", target, {k: v for k, v in manifest.items() if k != "warmup_trace"})
    return target
