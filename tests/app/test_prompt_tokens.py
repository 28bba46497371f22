"""Prompt lengths the API counts without torch equal what the engine encodes with transformers."""

import json
import time
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer

from app.prompt_tokens import LongestPrompt, load_counter, longest_prompt
from core.registry import FIXTURES_ROOT
from core.storage import ArtifactStore

CHATML = (
    "{%- for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}{% if message.meta is defined %} {{ message.meta | tojson }}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "What is 12+34?"}],
    [{"role": "system", "content": "Add step by step."}, {"role": "user", "content": "1+2+3=", "name": None}],
    [
        {"role": "user", "content": "What is the sum? é ü 漢字"},
        {"role": "assistant", "content": "#### 6"},
        {"role": "user", "content": "and again", "meta": {"tag": "<b>é</b>"}},  # tojson: no HTML escaping
    ],
]


def chatml_model(folder: Path, template: str = CHATML) -> Path:
    """A small byte-level BPE tokenizer with ChatML special tokens and template, as save_pretrained writes."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(["What is the sum of these numbers? Add them step by step."] * 20, trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>",
              "pad_token": "<|endoftext|>", "chat_template": template}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def engine_lengths(model_dir: Path, conversations: list[list[dict[str, Any]]]) -> list[int]:
    """What the engine's encode_prompts gives: transformers' apply_chat_template, tokenized."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [
        len(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False))
        for c in conversations
    ]


def jsonl(*conversations: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps({"messages": c, "answer": "1"}).encode() + b"\n" for c in conversations]


@pytest.mark.parametrize("name", ["sppo-tiny", "sppo-tiny-long"])
def test_the_fixtures_prompts_count_as_transformers_encodes_them(name: str) -> None:
    model_dir = FIXTURES_ROOT / name / "model"
    counter = load_counter(model_dir)
    assert counter is not None
    lines = (FIXTURES_ROOT / name / "train.jsonl").read_text().splitlines()[:300]
    conversations = [json.loads(line)["messages"] for line in lines]
    counts = counter.count([counter.render(c) for c in conversations])
    assert counts == engine_lengths(model_dir, conversations)
    # one token per character plus BOS: "17+21+20=" is 10; 16 two-digit terms are 49
    assert counts[0] == 10 if name == "sppo-tiny" else max(counts) == 49


def test_a_chatml_model_counts_as_transformers_encodes_it(tmp_path: Path) -> None:
    model_dir = chatml_model(tmp_path / "chatml")
    counter = load_counter(model_dir)
    assert counter is not None
    counts = counter.count([counter.render(c) for c in CONVERSATIONS])
    assert counts == engine_lengths(model_dir, CONVERSATIONS)
    assert counter.render(CONVERSATIONS[0]).endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_a_chat_template_file_wins_over_the_tokenizer_config(tmp_path: Path) -> None:
    model_dir = chatml_model(tmp_path / "chatml")
    (model_dir / "chat_template.jinja").write_text("{{ eos_token }}{{ messages[-1]['content'] }}")
    counter = load_counter(model_dir)
    assert counter is not None
    assert counter.render(CONVERSATIONS[0]) == "<|im_end|>What is 12+34?"
    assert counter.count([counter.render(c) for c in CONVERSATIONS]) == engine_lengths(
        model_dir, CONVERSATIONS
    )


def test_the_longest_prompt_names_its_line(tmp_path: Path) -> None:
    counter = load_counter(FIXTURES_ROOT / "sppo-tiny" / "model")
    assert counter is not None
    short, long = [{"role": "user", "content": "1+1="}], [{"role": "user", "content": "12+34+56="}]
    lines = [*jsonl(short), b"\n", *jsonl(long, short, long)]  # a blank line 2 still counts as a line
    assert counter.longest(lines) == LongestPrompt(tokens=10, line=3)  # the first of two equal ones
    assert counter.longest([b"\n"]) is None


def test_models_it_cannot_reproduce_are_not_counted(tmp_path: Path) -> None:
    assert load_counter(tmp_path) is None  # no tokenizer.json
    no_template = chatml_model(tmp_path / "no-template", template="")
    (no_template / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    assert load_counter(no_template) is None
    # transformers' own {% generation %} extension is not in this sandbox: left to the worker
    tracked = chatml_model(tmp_path / "tracked", template="{% generation %}{{ messages }}{% endgeneration %}")
    assert load_counter(tracked) is None


def _store(tmp_path: Path, name: str, lines: list[bytes]) -> tuple[ArtifactStore, str]:
    store = ArtifactStore(None, tmp_path / "data")
    key = f"files/{name}.jsonl"
    store.local_path(key).parent.mkdir(parents=True, exist_ok=True)
    store.local_path(key).write_bytes(b"".join(lines))
    return store, key


def test_a_files_longest_prompt_is_counted_once(tmp_path: Path) -> None:
    model_dir = chatml_model(tmp_path / "chatml")
    store, key = _store(tmp_path, "file-once", jsonl(*CONVERSATIONS))
    expected = LongestPrompt(tokens=max(engine_lengths(model_dir, CONVERSATIONS)), line=3)
    assert longest_prompt(model_dir, store, key) == expected
    store.local_path(key).unlink()  # files never change under their id: the count is remembered
    assert longest_prompt(model_dir, store, key) == expected
    assert longest_prompt(model_dir, store, "files/file-missing.jsonl") is None  # unreadable now: no check


@pytest.mark.parametrize(
    "template",
    [
        "{{ raise_exception('Conversation roles must alternate') }}",
        "{{ cycler.__init__.__globals__.os.popen('touch /tmp/escaped').read() }}",  # the sandbox refuses it
        "{{ messages.append(1) }}",  # immutable: templates cannot change the items
    ],
)
def test_a_template_that_fails_on_an_item_leaves_the_check_to_the_worker(
    tmp_path: Path, template: str
) -> None:
    model_dir = chatml_model(tmp_path / "failing", template=template)
    store, key = _store(tmp_path, "file-failing", jsonl(*CONVERSATIONS))
    assert load_counter(model_dir) is not None
    assert longest_prompt(model_dir, store, key) is None
    assert not Path("/tmp/escaped").exists()


def test_ten_thousand_lines_take_well_under_the_request_timeout(tmp_path: Path) -> None:
    terms = [["+".join(str(10 + (i * 7 + k) % 90) for k in range(12 + i % 7)) + "="] for i in range(10_000)]
    lines = jsonl(*([{"role": "user", "content": t[0]}] for t in terms))
    store, key = _store(tmp_path, "file-10k", lines)
    started = time.perf_counter()
    longest = longest_prompt(FIXTURES_ROOT / "sppo-tiny-long" / "model", store, key)
    elapsed = time.perf_counter() - started
    assert longest == LongestPrompt(tokens=1 + 18 * 3, line=7)  # 18 two-digit terms, "+" or "=", and BOS
    assert elapsed < 10, elapsed  # about 0.5 s on one idle core
