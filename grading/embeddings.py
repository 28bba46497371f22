"""Cosine similarity of text pairs (text_similarity's `cosine` metric) from an embeddings endpoint.

The endpoint is OpenAI-compatible (`<base>/embeddings`) or our model server's
`<inference_url>/internal/embeddings` (`EmbeddingsTarget.internal` holds its extra payload fields). Each
distinct text is embedded once; a pair of identical texts scores exactly 1.0 without being sent.
"""

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

MAX_BATCH = 256  # texts per request: our model server's limit (OpenAI's is 2048)
RETRY_STATUSES = (429, 503)
MAX_RETRY_WAIT_S = 2.0
DETAIL_CHARS = 500


class EmbeddingsError(RuntimeError):
    """The endpoint failed or gave an unreadable answer; the caller flags the samples."""


@dataclass(frozen=True)
class EmbeddingsTarget:
    # OpenAI-compatible `<base>/embeddings`, or our model server's `<inference_url>/internal/embeddings`
    url: str
    model: str
    api_key: str | None = None
    internal: Mapping[str, Any] | None = None  # our model server's extra fields: {"base_model": ...}


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity clipped to [0, 1] (opposite directions, and a zero vector, give 0)."""
    norms = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    if norms == 0.0:
        return 0.0
    return min(1.0, max(0.0, math.fsum(x * y for x, y in zip(a, b, strict=True)) / norms))


def _post(client: httpx.Client, target: EmbeddingsTarget, body: dict[str, Any]) -> httpx.Response:
    for attempt in range(2):
        try:
            response = client.post(target.url, json=body)
        except httpx.HTTPError as exc:
            raise EmbeddingsError(f"{type(exc).__name__}: {exc}"[:DETAIL_CHARS]) from None
        if response.status_code in RETRY_STATUSES and attempt == 0:
            try:
                wait = float(response.headers.get("retry-after", "1"))
            except ValueError:
                wait = 1.0
            time.sleep(min(max(wait, 0.0), MAX_RETRY_WAIT_S))
            continue
        if response.status_code != 200:
            try:
                message = str(response.json()["error"]["message"])
            except (ValueError, KeyError, TypeError):
                message = response.text
            raise EmbeddingsError(f"HTTP {response.status_code}: {message}"[:DETAIL_CHARS])
        return response
    raise AssertionError("unreachable")


def _vectors(response: httpx.Response, count: int) -> list[list[float]]:
    """The answer's embeddings in input order; EmbeddingsError unless there is one numeric vector per text
    and all have the same length."""
    try:
        data = response.json()["data"]
        by_index = {int(entry["index"]): [float(x) for x in entry["embedding"]] for entry in data}
        vectors = [by_index[i] for i in range(count)]
    except (ValueError, KeyError, TypeError, IndexError):
        raise EmbeddingsError("the endpoint's answer holds no embedding for every input") from None
    if len({len(vector) for vector in vectors}) > 1:
        raise EmbeddingsError("the endpoint's embeddings differ in length")
    return vectors


def embed(target: EmbeddingsTarget, texts: Sequence[str], *, timeout_s: float = 60.0) -> list[list[float]]:
    """One embedding per text, in order (requests of at most MAX_BATCH texts)."""
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else None
    vectors: list[list[float]] = []
    with httpx.Client(timeout=timeout_s, headers=headers) as client:
        for start in range(0, len(texts), MAX_BATCH):
            batch = list(texts[start : start + MAX_BATCH])
            body = {"model": target.model, "input": batch, **(target.internal or {})}
            vectors.extend(_vectors(_post(client, target, body), len(batch)))
    return vectors


def cosine_similarities(
    target: EmbeddingsTarget, pairs: Sequence[tuple[str, str]], *, timeout_s: float = 60.0
) -> list[float]:
    """The cosine similarity of each (input, reference) pair, in [0, 1]; EmbeddingsError when the endpoint
    fails. Identical texts give exactly 1.0; when every pair is identical nothing is sent."""
    texts = list(dict.fromkeys(text for a, b in pairs if a != b for text in (a, b)))
    vectors = dict(zip(texts, embed(target, texts, timeout_s=timeout_s), strict=True)) if texts else {}
    return [1.0 if a == b else cosine(vectors[a], vectors[b]) for a, b in pairs]
