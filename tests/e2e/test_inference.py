"""Using the trained model through the official openai SDK: train a few SPPO steps on sppo-tiny, then
chat.completions (plain and streamed) with the fine-tuned model answer greedily exactly what the
downloaded adapter, on the downloaded base model, gives locally with peft. Another tenant gets 404; bad
requests get OpenAI-style 4xx and the model server stays healthy; models.retrieve/delete work."""

import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.e2e.conftest import Stack, jsonl, sppo_method, wait_for
from worker.engine.fixtures import Fixture

pytestmark = pytest.mark.timeout(1800)
PROMPTS = ["12+34+56=", "71+18+9="]


def _extract(api: httpx.Client, path: str, target: Path) -> None:
    response = api.get(path, timeout=120)
    assert response.status_code == 200, response.text
    archive = target / "download.tar.gz"
    archive.write_bytes(response.content)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")


def _local_greedy(model_dir: Path, adapter_dir: Path, prompt: str, max_tokens: int) -> str:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(adapter_dir))
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)  # fmt: skip
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False
        )
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def test_fine_tuned_model_serves_what_the_adapter_computes(
    stack: Stack, api: httpx.Client, key: str, upload: Callable[[bytes, str], str], tiny: Fixture,
    tmp_path: Path,
) -> None:  # fmt: skip
    training = upload(jsonl(tiny.train_file, 0, 16), "train.jsonl")
    job = api.post("/v1/fine_tuning/jobs", json={"model": "sppo-tiny", "training_file": training,
                                                  "method": sppo_method(batch_size=8)}).json()  # fmt: skip
    job = wait_for(api, job["id"], lambda j: j["status"] in ("succeeded", "failed", "cancelled"))
    assert job["status"] == "succeeded", job
    model = job["fine_tuned_model"]
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)

    # The adapter and the base model, downloaded, give the reference answers.
    checkpoints = api.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
    # no validation file: the model is the last step's checkpoint
    assert job["method"]["reinforcement"]["hyperparameters"]["model_selection"] == "last"
    assert job["fine_tuned_model_step"] == max(c["step_number"] for c in checkpoints) == 2
    checkpoint = next(c for c in checkpoints if c["step_number"] == job["fine_tuned_model_step"])
    _extract(api, f"/v1/fine_tuning/jobs/{job['id']}/checkpoints/{checkpoint['id']}/adapter", tmp_path)
    _extract(api, "/v1/models/sppo-tiny/files", tmp_path)
    adapter_dir = tmp_path / checkpoint["id"]
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "sppo-tiny"
    card = (adapter_dir / "README.md").read_text()
    assert "Base model: `sppo-tiny`" in card and "sppo" in card and "PeftModel.from_pretrained" in card

    for prompt in PROMPTS:
        expected = _local_greedy(tmp_path / "sppo-tiny", adapter_dir, prompt, 32)
        messages = [{"role": "user", "content": prompt}]
        for name in (model, checkpoint["id"]):
            plain = client.chat.completions.create(
                model=name, messages=messages, temperature=0, max_tokens=32
            )
            assert plain.choices[0].message.content == expected
            assert plain.model == name and plain.usage is not None and plain.usage.prompt_tokens > 0
        chunks = list(client.chat.completions.create(
            model=model, messages=messages, temperature=0, max_tokens=32, stream=True,
            stream_options={"include_usage": True},
        ))  # fmt: skip
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
        assert (
            chunks[-1].usage is not None
            and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
        )
        completion = client.completions.create(
            model=model, prompt=f"<s>{prompt}", temperature=0, max_tokens=32
        )
        assert completion.choices[0].text == expected

    # n choices with a seed are reproducible; base models are served too.
    first = [{"role": "user", "content": PROMPTS[0]}]
    sampled = [
        client.chat.completions.create(model="sppo-tiny", messages=first, n=3, seed=5, max_tokens=16)  # type: ignore[arg-type]
        for _ in range(2)
    ]
    assert [c.message.content for c in sampled[0].choices] == [c.message.content for c in sampled[1].choices]

    # Another tenant sees nothing; bad requests are refused and the model server stays up.
    other = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.new_key(), max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        other.chat.completions.create(model=model, messages=[{"role": "user", "content": "1+2+3="}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        other.models.retrieve(model)
    bad: list[dict[str, object]] = [
        {"model": "no-such-model"}, {"max_tokens": 10**9}, {"n": 10**6},
        {"messages": [{"role": "user", "content": "1" * 200}]}, {"messages": [{"content": "x"}]},
    ]  # fmt: skip
    for change in bad:
        body = {"model": model, "messages": [{"role": "user", "content": "1+2+3="}], **change}
        response = api.post("/v1/chat/completions", json=body)
        assert 400 <= response.status_code < 500, response.text
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    short = [{"role": "user", "content": "1+2="}]
    too_long = api.post("/v1/chat/completions", json={"model": model, "max_tokens": 10**9, "messages": short})
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "max_tokens"
    huge = api.post("/v1/completions", json={"model": model, "prompt": "1" * (10 * 1024 * 1024)})
    assert huge.status_code == 413
    assert client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=32)

    # models.retrieve and models.delete.
    assert client.models.retrieve(model).id == model
    with pytest.raises(openai.PermissionDeniedError):
        client.models.delete("sppo-tiny")
    deleted = client.models.delete(model)
    assert (deleted.id, deleted.deleted) == (model, True)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=model, messages=messages)
