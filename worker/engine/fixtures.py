"""The tiny local base model `sppo-tiny`: built here because no model hub is reachable.

Task: "a+b+c=" with two-digit terms; the answer is a chain of thought `a+b=s;s+c=t#### t`.
A character tokenizer and a ~1M-parameter Llama-style model get a short supervised warm-up that stops
as soon as MEASURED greedy accuracy on held-out problems enters the target window (15-50%): the warm-up
has a sharp transition, so time or step counts would miss it. The result is saved with `save_pretrained`
(model, tokenizer with a chat template, `sppo_defaults.json`) plus train/validation JSONL in the API's
data format, under a cache directory keyed by FIXTURE_VERSION, and reused when present.
"""

import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

FIXTURE_VERSION = "v2"
MODEL_NAME = "sppo-tiny"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]
CHARS = list("0123456789+=;# ")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
)
# The grader that scores the fixture task (regex on the number after the last `####`).
FIXTURE_GRADER: dict[str, str] = {
    "type": "regex",
    "name": "final_answer",
    "input": "{{sample.output_text}}",
    "pattern": r"####\s*(-?\d+)",
    "reference": "{{item.answer}}",
}
# The longest completion ("99+99=198;198+99=297#### 297") is 29 characters plus EOS.
MAX_RESPONSE_TOKENS = 32
# Recommended hyperparameters for this model: tiny CPU models need far larger learning rates than the
# reference defaults for 1.5B-7B models (see ALGORITHMS.md); RunConfig applies these before the job's own.
SPPO_DEFAULTS: dict[str, object] = {
    "learning_rate": 1e-4,
    "critic_learning_rate": 2e-4,
    "weight_decay": 0.0,
    # at temperature 1.0 this model solves ~7% of sampled problems (23% greedy) and LoRA-SPPO barely
    # moves; at 0.5 it solves ~13% and the training reward doubles within ~70 steps (measured)
    "temperature": 0.5,
    "max_response_tokens": MAX_RESPONSE_TOKENS,
    "batch_size": 64,
    "minibatch_size": 32,
    "ppo_epochs": 2,
    "lora_rank": 16,
    "lora_alpha": 32,
    "micro_batch_tokens": 8192,
}
ACCURACY_WINDOW = (0.15, 0.50)
_ANSWER = re.compile(r"####\s*(-?\d+)")


@dataclass(frozen=True)
class Fixture:
    """Where a built fixture lives."""

    model_dir: Path
    train_file: Path
    validation_file: Path
    base_accuracy: float


def make_problem(rng: random.Random) -> tuple[str, str, str]:
    """One problem: (prompt, chain-of-thought completion, answer)."""
    a, b, c = (rng.randint(10, 99) for _ in range(3))
    s, t = a + b, a + b + c
    return f"{a}+{b}+{c}=", f"{a}+{b}={s};{s}+{c}={t}#### {t}", str(t)


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


def build_model(vocab_size: int, seed: int) -> LlamaForCausalLM:
    """About 1M parameters: hidden 128, 4 layers, 4 heads, tied embeddings."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def _encode(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> list[list[int]]:
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]


def _sft_batch(
    tokenizer: PreTrainedTokenizerFast, rng: random.Random, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded prompt+completion ids and labels that score only completion tokens."""
    problems = [make_problem(rng) for _ in range(size)]
    prompts = _encode(tokenizer, [tokenizer.bos_token + p for p, _, _ in problems])
    completions = _encode(tokenizer, [c + tokenizer.eos_token for _, c, _ in problems])
    width = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    input_ids = torch.full((size, width), tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
    labels = torch.full((size, width), -100, dtype=torch.long)  # (B, T)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        input_ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        labels[i, len(p) : len(p) + len(c)] = torch.tensor(c)
    return input_ids, labels


@torch.no_grad()
def greedy_accuracy(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, problems: list[tuple[str, str, str]]
) -> float:
    """Fraction of problems whose greedy completion ends in the right `#### answer`."""
    model.eval()  # type: ignore[no-untyped-call]
    tokenizer.padding_side = "left"
    batch = tokenizer([tokenizer.bos_token + p for p, _, _ in problems], return_tensors="pt", padding=True)
    output = model.generate(
        **batch, do_sample=False, max_new_tokens=MAX_RESPONSE_TOKENS, pad_token_id=tokenizer.pad_token_id
    )
    texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    correct = 0
    for text, (_, _, answer) in zip(texts, problems, strict=True):
        found = _ANSWER.findall(text)
        correct += bool(found) and found[-1] == answer
    model.train()
    return correct / len(problems)


def warm_up(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, seed: int, max_steps: int = 3000
) -> tuple[float, int]:
    """Supervised warm-up until held-out greedy accuracy enters ACCURACY_WINDOW; returns (accuracy, steps)."""
    rng = random.Random(seed)
    held_rng = random.Random(seed + 1)
    held_out = [make_problem(held_rng) for _ in range(200)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    model.train()
    accuracy = 0.0
    for step in range(1, max_steps + 1):
        input_ids, labels = _sft_batch(tokenizer, rng, 128)
        loss = model(input_ids=input_ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        # measure every 5 steps near the transition, every 20 before it (measuring costs time)
        if step % 20 == 0 or (step % 5 == 0 and accuracy >= 0.02):
            accuracy = greedy_accuracy(model, tokenizer, held_out)
            logger.info("fixture warm-up step %d loss %.3f greedy accuracy %.3f", step, loss.item(), accuracy)
            if accuracy >= ACCURACY_WINDOW[0]:
                if accuracy > ACCURACY_WINDOW[1]:
                    raise RuntimeError(f"warm-up overshot the accuracy window: {accuracy:.3f}")
                return accuracy, step
    raise RuntimeError(f"warm-up did not reach {ACCURACY_WINDOW[0]} accuracy in {max_steps} steps")


def write_jsonl(path: Path, problems: list[tuple[str, str, str]]) -> None:
    """Items in the API's data format: {"messages": [{"role": "user", ...}], "answer": ...}."""
    with path.open("w") as f:
        for prompt, _, answer in problems:
            item = {"messages": [{"role": "user", "content": prompt}], "answer": answer}
            f.write(json.dumps(item) + "\n")


def build_fixture(target: Path, seed: int = 0) -> Fixture:
    """Build the fixture into `target` (must not exist) through a temporary directory and a rename."""
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), seed)
    accuracy, steps = warm_up(model, tokenizer, seed)
    model_dir = staging / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (model_dir / "sppo_defaults.json").write_text(json.dumps(SPPO_DEFAULTS, indent=2))
    data_rng = random.Random(seed + 2)
    write_jsonl(staging / "train.jsonl", [make_problem(data_rng) for _ in range(4000)])
    write_jsonl(staging / "validation.jsonl", [make_problem(data_rng) for _ in range(200)])
    manifest = {
        "name": MODEL_NAME,
        "version": FIXTURE_VERSION,
        "seed": seed,
        "base_accuracy": accuracy,
        "warmup_steps": steps,
        "build_seconds": round(time.perf_counter() - started, 1),
        "grader": FIXTURE_GRADER,
    }
    (staging / "fixture.json").write_text(json.dumps(manifest, indent=2))
    try:
        staging.rename(target)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("built fixture %s: %s", target, manifest)
    return load_fixture(target)


def default_fixture_dir() -> Path:
    """$SPPO_FIXTURE_DIR, else $SPPO_DATA_DIR/fixtures (default ./.sppo/fixtures), keyed by version."""
    explicit = os.environ.get("SPPO_FIXTURE_DIR")
    root = Path(explicit) if explicit else Path(os.environ.get("SPPO_DATA_DIR", ".sppo")) / "fixtures"
    return root / f"{MODEL_NAME}-{FIXTURE_VERSION}"


def load_fixture(path: Path) -> Fixture:
    manifest = json.loads((path / "fixture.json").read_text())
    return Fixture(
        model_dir=path / "model",
        train_file=path / "train.jsonl",
        validation_file=path / "validation.jsonl",
        base_accuracy=float(manifest["base_accuracy"]),
    )


def ensure_fixture(cache_dir: Path | None = None, seed: int = 0) -> Fixture:
    """The fixture under `cache_dir` (default: default_fixture_dir()), built once when absent."""
    path = Path(cache_dir) if cache_dir is not None else default_fixture_dir()
    if (path / "fixture.json").exists():
        return load_fixture(path)
    return build_fixture(path, seed)
