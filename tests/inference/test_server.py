"""The model server's HTTP app on a random tiny model: OpenAI's response and chunk shapes, a stream that
adds up to the plain answer, context-window refusals naming the param, and nothing outside the data
directory or the registry reachable by name."""

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from inference.server import create_app

CHAT: dict[str, Any] = {
    "kind": "chat", "model": "ft:rand-tiny:org::job", "base_model": "rand-tiny", "adapter_uri": "jobs/a",
    "messages": [{"role": "user", "content": "12+34+56="}], "temperature": 0.0, "max_tokens": 8,
}  # fmt: skip


@pytest.fixture(scope="module")
def client(data_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(data_dir=data_dir))) as test_client:  # type: ignore[call-arg]
        yield test_client


def test_plain_and_streamed_answers_agree(client: TestClient) -> None:
    plain = client.post("/internal/generate", json=CHAT).json()
    assert plain["object"] == "chat.completion" and plain["model"] == CHAT["model"]
    choice = plain["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    assert plain["usage"]["completion_tokens"] == 8
    assert plain["usage"]["prompt_tokens"] == 10  # <s> and the 9 characters of the prompt
    with client.stream(
        "POST", "/internal/generate", json={**CHAT, "stream": True, "include_usage": True}
    ) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == choice["message"]["content"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}


def test_completions_and_n(client: TestClient) -> None:
    body = {**CHAT, "kind": "completion", "messages": None, "prompt": "12+34+56=", "n": 3, "seed": 1,
            "temperature": 1.0}  # fmt: skip
    first, second = (client.post("/internal/generate", json=body).json() for _ in range(2))
    assert first["object"] == "text_completion" and len(first["choices"]) == 3
    assert [c["text"] for c in first["choices"]] == [c["text"] for c in second["choices"]]  # seeded


@pytest.mark.parametrize(
    ("change", "status", "param"),
    [
        ({"max_tokens": 60}, 400, "max_tokens"),  # the context is 64 tokens
        ({"messages": [{"role": "user", "content": "1" * 80}]}, 400, "messages"),
        ({"adapter_uri": "../../etc"}, 404, "model"),
        ({"adapter_uri": "jobs/missing"}, 404, "model"),
        ({"base_model": "no-such-base"}, 404, "model"),
    ],
)
def test_refusals(client: TestClient, change: dict[str, Any], status: int, param: str) -> None:
    response = client.post("/internal/generate", json={**CHAT, **change})
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    assert client.post("/internal/generate", json=CHAT).status_code == 200  # still serving


def test_base_model_files(client: TestClient) -> None:
    response = client.get("/internal/models/rand-tiny/files")
    with tarfile.open(fileobj=io.BytesIO(response.content)) as archive:
        names = archive.getnames()
    assert "rand-tiny/config.json" in names and "rand-tiny/model.safetensors" in names
    assert client.get("/internal/models/..%2F..%2Fetc/files").status_code == 404
