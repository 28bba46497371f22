"""The model server's batcher on a small random Llama with two random LoRA adapters: a mixed batch (base
and both adapters in one forward pass) decodes exactly what peft's own `generate` gives each model alone,
through adapter eviction; a full queue refuses new requests."""

import threading
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from core.settings import Settings
from inference.batcher import Batcher, Busy, Delta, Done, Event, Finished, Generation
from inference.models import ModelCache
from worker.engine.data import encode_prompts
from worker.engine.fixture_build import build_tokenizer

PROMPTS = ["12+34+56=", "7+8+9="]
MAX_TOKENS = 8


def _settings(data_dir: Path, **overrides: object) -> Settings:
    return Settings(data_dir=data_dir, **overrides)  # type: ignore[arg-type]


def _reference(data_dir: Path, adapter: str | None, prompt: str) -> str:
    tokenizer = build_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(data_dir / "models" / "rand-tiny")
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(data_dir / "jobs" / adapter))
    ids = torch.tensor(encode_prompts(tokenizer, [{"messages": [{"role": "user", "content": prompt}]}]))
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_TOKENS, do_sample=False)
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


class Collector:
    def __init__(self) -> None:
        self.text = ""
        self.finished: Finished | None = None
        self.done = threading.Event()

    def __call__(self, event: Event) -> None:
        if isinstance(event, Delta):
            self.text += event.text
        elif isinstance(event, Finished):
            self.finished = event
        elif isinstance(event, Done):
            self.done.set()


def _generation(cache: ModelCache, adapter: str | None, prompt: str, emit: Collector) -> Generation:
    base = cache.base("rand-tiny")
    ids = encode_prompts(base.tokenizer, [{"messages": [{"role": "user", "content": prompt}]}])[0]
    return Generation(base="rand-tiny", adapter_uri=None if adapter is None else f"jobs/{adapter}",
                      prompt_ids=ids, n=1, max_tokens=MAX_TOKENS, temperature=0.0, top_p=1.0, seed=None,
                      stops=[], emit=emit)  # fmt: skip


@pytest.mark.parametrize("max_adapters", [8, 1])
def test_mixed_batch_equals_each_model_alone(data_dir: Path, max_adapters: int) -> None:
    cache = ModelCache(_settings(data_dir, inference_max_adapters=max_adapters), torch.device("cpu"))
    batcher = Batcher(cache, max_batch_size=8, wait_s=0.2, max_pending=16)
    cases = [(adapter, prompt) for adapter in (None, "a", "b") for prompt in PROMPTS]
    collectors = [Collector() for _ in cases]
    for (adapter, prompt), collector in zip(cases, collectors, strict=True):
        batcher.submit(_generation(cache, adapter, prompt, collector))
    batcher.start()
    try:
        for collector in collectors:
            assert collector.done.wait(timeout=120)
    finally:
        batcher.stop()
    expected = [_reference(data_dir, adapter, prompt) for adapter, prompt in cases]
    assert [c.text for c in collectors] == expected
    for prompt in range(len(PROMPTS)):  # base, a and b really answer differently
        assert len(set(expected[prompt :: len(PROMPTS)])) == 3, expected
    assert all(c.finished is not None and c.finished.tokens == MAX_TOKENS for c in collectors)
    assert len(cache.bases["rand-tiny"].adapters) == min(max_adapters, 2)


def test_full_queue_refuses(data_dir: Path) -> None:
    cache = ModelCache(_settings(data_dir), torch.device("cpu"))
    batcher = Batcher(cache, max_batch_size=4, wait_s=0.0, max_pending=2)  # not started: nothing drains
    for _ in range(2):
        batcher.submit(_generation(cache, None, PROMPTS[0], Collector()))
    with pytest.raises(Busy):
        batcher.submit(_generation(cache, None, PROMPTS[0], Collector()))
