"""`POST /internal/embeddings` on a random tiny model: OpenAI's shape, unit vectors (mean-pooled last hidden
state), identical texts at cosine 1 and different ones below, the same vectors once an adapter is loaded
on the base (they are the base model's), and refusals in OpenAI's error shape."""

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer

from inference.embeddings import plain_view
from jobspec.serving import MAX_EMBEDDING_CHARS
from worker.engine.policy import load_base_model, load_tokenizer

BODY: dict[str, Any] = {"model": "rand-tiny", "base_model": "rand-tiny"}
TEXTS = ["12+34+56=", "12+34+56=", "98+7=105", "", "1" * 100]


def _dot(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


def _embed(client: TestClient, texts: list[str]) -> list[list[float]]:
    response = client.post("/internal/embeddings", json={**BODY, "input": texts})
    assert response.status_code == 200, response.text
    return [entry["embedding"] for entry in response.json()["data"]]


def test_shape_and_unit_vectors(client: TestClient, data_dir: Path) -> None:
    response = client.post("/internal/embeddings", json={**BODY, "input": TEXTS})
    body = response.json()
    assert body["object"] == "list" and body["model"] == "rand-tiny"
    assert [entry["index"] for entry in body["data"]] == list(range(len(TEXTS)))
    assert {entry["object"] for entry in body["data"]} == {"embedding"}
    # a token per character; the empty text reads one token; the 100 characters are cut at the 64-token window
    assert body["usage"] == {"prompt_tokens": 9 + 9 + 8 + 1 + 64, "total_tokens": 9 + 9 + 8 + 1 + 64}
    vectors = [entry["embedding"] for entry in body["data"]]
    assert {len(vector) for vector in vectors} == {128}  # the hidden size
    for vector in vectors:
        assert _dot(vector, vector) == pytest.approx(1.0, abs=1e-6)
    assert _dot(vectors[0], vectors[1]) == pytest.approx(1.0, abs=1e-6)
    assert _dot(vectors[0], vectors[2]) < 0.999

    # the definition, computed here on a fresh copy of the model
    directory = data_dir / "models" / "rand-tiny"
    model, tokenizer = load_base_model(directory, torch.device("cpu")), load_tokenizer(directory)
    with torch.inference_mode():
        ids = torch.tensor([tokenizer("98+7=105")["input_ids"]])
        hidden = model.model(input_ids=ids).last_hidden_state[0].mean(dim=0)
    expected = (hidden / hidden.norm()).tolist()
    assert vectors[2] == pytest.approx(expected, abs=1e-5)


def test_a_loaded_adapter_changes_nothing(client: TestClient) -> None:
    before = _embed(client, TEXTS[:3])
    chat = {**BODY, "kind": "chat", "model": "ft:x", "adapter_uri": "jobs/a", "max_tokens": 4,
            "messages": [{"role": "user", "content": "12+34+56="}], "temperature": 0.0}  # fmt: skip
    assert client.post("/internal/generate", json=chat).status_code == 200  # the base is now a PeftModel
    after = _embed(client, TEXTS[:3])
    for was, now in zip(before, after, strict=True):
        assert now == pytest.approx(was, abs=1e-6)


def test_the_view_of_an_adapted_model_is_the_base_sharing_its_weights(data_dir: Path) -> None:
    directory = data_dir / "models" / "rand-tiny"
    base = load_base_model(directory, torch.device("cpu"))
    ids = torch.tensor([[1, 5, 6, 13, 7, 8, 14]])

    def hidden(model: Any) -> torch.Tensor:  # a causal LM's last hidden state (no LM head)
        return model.model(input_ids=ids).last_hidden_state  # type: ignore[no-any-return]

    with torch.inference_mode():
        plain = hidden(base)
        adapted = PeftModel.from_pretrained(base, str(data_dir / "jobs" / "a"), adapter_name="a")
        tuned = hidden(adapted.get_base_model())
        view = plain_view(adapted)
        seen = hidden(view)
    assert not torch.allclose(tuned, plain)  # the adapter is active on the loaded tree
    assert torch.equal(seen, plain)
    assert not any(isinstance(module, BaseTunerLayer) for module in view.modules())
    originals = {p.data_ptr() for p in adapted.parameters()}
    assert all(p.data_ptr() in originals for p in view.parameters())  # shared, not copied


@pytest.mark.parametrize(
    ("change", "status", "param"),
    [
        ({"base_model": "no-such-base"}, 404, "model"),
        ({"input": []}, 400, "input"),
        ({"input": ["1"] * 257}, 400, "input"),
        ({"adapter_uri": "jobs/a"}, 400, "adapter_uri"),
    ],
)
def test_refusals(client: TestClient, change: dict[str, Any], status: int, param: str) -> None:
    response = client.post("/internal/embeddings", json={**BODY, "input": ["1+1="], **change})
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_the_grading_client_cuts_texts_where_this_server_refuses_them(client: TestClient) -> None:
    """grading.embeddings sends at most MAX_EMBEDDING_CHARS of a text: exactly what this server takes."""
    longest = ["1" * MAX_EMBEDDING_CHARS]
    assert client.post("/internal/embeddings", json={**BODY, "input": longest}).status_code == 200
    refused = client.post("/internal/embeddings", json={**BODY, "input": ["1" * (MAX_EMBEDDING_CHARS + 1)]})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "input.0"
