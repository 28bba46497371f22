"""The API's side of using a model, with no model server running: every bad request is refused before
the proxy (404 model_not_found, 400 naming the param, 413), a good one gets 503 with Retry-After in
bounded time; models retrieve/delete follow OpenAI (base models cannot be deleted) and tenancy."""

import time
from typing import Any

import httpx
import pytest

from .conftest import REGISTRY_MODEL, Server, add_checkpoint, add_fine_tuned, assert_error

CHAT = {"model": "sppo-tiny", "messages": [{"role": "user", "content": "1+2+3="}]}


@pytest.mark.parametrize(
    ("change", "status", "param"),
    [
        ({"model": "no-such-model"}, 404, "model"),
        ({"model": "ft:sppo-tiny:org-x::ftjob-x"}, 404, "model"),
        ({"model": "ftckpt-0123"}, 404, "model"),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "user"}]}, 400, "messages[0].content"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
        ({"messages": "hello"}, 400, "messages"),
        ({"n": 10**6}, 400, "n"),
        ({"max_tokens": 10**30}, 400, "max_tokens"),
        ({"temperature": 5}, 400, "temperature"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"logit_bias": {"1": 5}}, 400, "logit_bias"),
    ],
)
def test_bad_chat_requests_are_refused(
    api: httpx.Client, change: dict[str, Any], status: int, param: str
) -> None:
    error = assert_error(api.post("/v1/chat/completions", json={**CHAT, **change}), status, param)
    if status == 404:
        assert error["code"] == "model_not_found"


def test_oversized_prompt_is_413(api: httpx.Client) -> None:
    prompt = "1" * (10 * 1024 * 1024)  # a 10 MB prompt
    assert_error(api.post("/v1/completions", json={"model": "sppo-tiny", "prompt": prompt}), 413)
    assert api.get("/v1/models").status_code == 200  # the API is still fine


def test_absent_model_server_is_503_with_retry_after(api: httpx.Client) -> None:
    started = time.monotonic()
    for path, body in (("/v1/chat/completions", {**CHAT, "stream": True}),
                       ("/v1/completions", {"model": "sppo-tiny", "prompt": "1+2+3="})):  # fmt: skip
        response = api.post(path, json=body)
        assert_error(response, 503)
        assert response.headers["retry-after"] == "5"
    assert time.monotonic() - started < 10


def test_models_retrieve_and_delete(server: Server, api: httpx.Client, key: str) -> None:
    model_id, adapter = add_fine_tuned(server, key)
    base = api.get(f"/v1/models/{REGISTRY_MODEL}").json()
    assert {name: base[name] for name in ("id", "object", "created", "owned_by")} == {
        "id": REGISTRY_MODEL, "object": "model", "created": pytest.approx(time.time(), abs=3600),
        "owned_by": "system",
    }  # fmt: skip
    found = api.get(f"/v1/models/{model_id}").json()
    assert (found["id"], found["object"]) == (model_id, "model")
    assert_error(api.delete("/v1/models/sppo-tiny"), 403)
    assert_error(api.get("/v1/models/no-such-model"), 404, "model")
    with server.client(server.new_key()) as other:
        assert_error(other.get(f"/v1/models/{model_id}"), 404, "model")
        assert_error(other.delete(f"/v1/models/{model_id}"), 404, "model")
        assert_error(other.post("/v1/chat/completions", json={**CHAT, "model": model_id}), 404, "model")
    checkpoint_id, checkpoint_dir = add_checkpoint(server, model_id)
    for name in (checkpoint_id, f"{model_id}:ckpt-step-10"):  # resolved: only the model server is absent
        assert_error(api.post("/v1/chat/completions", json={**CHAT, "model": name}), 503)
    assert adapter.is_dir()
    assert api.delete(f"/v1/models/{model_id}").json() == {"id": model_id, "object": "model", "deleted": True}
    assert not adapter.exists()
    # its checkpoints were the same model at earlier steps: gone under every name, files and all
    assert not checkpoint_dir.exists()
    for name in (checkpoint_id, f"{model_id}:ckpt-step-10"):
        assert_error(api.post("/v1/chat/completions", json={**CHAT, "model": name}), 404, "model")
    assert_error(api.get(f"/v1/models/{model_id}"), 404)
    assert model_id not in [m["id"] for m in api.get("/v1/models").json()["data"]]
    assert_error(api.get(f"/v1/models/{model_id}/files"), 404, "model")
