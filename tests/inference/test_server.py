"""The model server's HTTP app on a random tiny model: OpenAI's response and chunk shapes, a stream that
adds up to the plain answer, context-window refusals naming the param, the API's own request limits, and
nothing outside the data directory or the registry reachable by name."""

import io
import json
import tarfile
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.schemas.inference import ChatCompletionCreate
from jobspec.serving import MAX_MESSAGES, MAX_SEED, MAX_STOP, MAX_TEMPERATURE, MAX_TOKENS_BOUND

CHAT: dict[str, Any] = {
    "kind": "chat", "model": "ft:rand-tiny:org::job", "base_model": "rand-tiny", "adapter_uri": "jobs/a",
    "messages": [{"role": "user", "content": "12+34+56="}], "temperature": 0.0, "max_tokens": 8,
}  # fmt: skip


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


MESSAGE = {"role": "user", "content": "1+2="}
OVER_LIMITS = [
    {"n": 17},  # SPPO_INFERENCE_MAX_N, 16 by default
    {"temperature": MAX_TEMPERATURE + 0.01},
    {"seed": -1},
    {"seed": MAX_SEED + 1},
    {"stop": ["#"] * (MAX_STOP + 1)},
    {"messages": [MESSAGE] * (MAX_MESSAGES + 1)},
    {"max_tokens": MAX_TOKENS_BOUND + 1},
    {"model": "m" * 257},
]


@pytest.mark.parametrize("change", OVER_LIMITS, ids=lambda change: next(iter(change)))
def test_what_the_api_refuses_this_server_refuses(client: TestClient, change: dict[str, Any]) -> None:
    """Its limits equal the API's (jobspec.serving): it once took n = 128 where the API capped 16."""
    public = ChatCompletionCreate.model_validate({"model": "rand-tiny", "messages": [MESSAGE], "n": 1})
    body = {**public.proxied(), "model": "rand-tiny", "base_model": "rand-tiny", **change}
    if "n" not in change:
        with pytest.raises(ValidationError):
            ChatCompletionCreate.model_validate({"model": "rand-tiny", "messages": [MESSAGE], **change})
    response = client.post("/internal/generate", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    # refused as out of range, not later for the model's context window
    assert (error["param"], error["code"]) == (next(iter(change)), "invalid_value")


def test_n_up_to_the_limit_is_served(client: TestClient) -> None:
    body = {**CHAT, "n": 16, "max_tokens": 1}
    response = client.post("/internal/generate", json=body)
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 16
    refused = client.post("/internal/generate", json={**body, "n": 17}).json()["error"]
    assert refused == {"message": "n must be at most 16.", "type": "invalid_request_error", "param": "n",
                       "code": "invalid_value"}  # fmt: skip
