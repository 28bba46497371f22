"""Cosine similarity of text pairs (text_similarity's `cosine` metric) from an embeddings endpoint.

The endpoint is OpenAI-compatible (`<base>/embeddings`) or our model server's
`<inference_url>/internal/embeddings` (`EmbeddingsTarget.internal` holds its extra payload fields). Each
distinct text is embedded once; a pair of identical texts scores exactly 1.0 without being sent. A text is
cut to its first MAX_EMBEDDING_CHARS characters before it is sent: our model server refuses longer ones (and
reads only a context window's tokens of any text anyway), and one refused text would fail the whole batch.
"""

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from grading.http import UNREACHABLE, auth_headers, error_detail, json_body, retry_wait, unreachable_detail
from jobspec.serving import MAX_EMBEDDING_CHARS, MAX_EMBEDDING_INPUTS


class EmbeddingsError(RuntimeError):
    """The endpoint failed or gave an unreadable answer; the caller flags the samples."""


@dataclass(frozen=True)
class EmbeddingsTarget:
    # OpenAI-compatible `<base>/embeddings`, or our model server's `<inference_url>/internal/embeddings`
    url: str
    model: str
    api_key: str | None = field(default=None, repr=False)  # never in a log line or an error
    internal: Mapping[str, Any] | None = None  # our model server's extra fields: {"base_model": ...}


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity clipped to [0, 1] (opposite directions, and a zero vector, give 0). The vectors are
    scaled to unit length first, so no product overflows."""
    norm_a, norm_b = math.hypot(*a), math.hypot(*b)
    if norm_a == 0.0 or norm_b == 0.0:
        return 0.0
    return min(1.0, max(0.0, math.fsum((x / norm_a) * (y / norm_b) for x, y in zip(a, b, strict=True))))


def _post(client: httpx.Client, target: EmbeddingsTarget, body: dict[str, Any]) -> httpx.Response:
    for attempt in range(2):
        try:
            response = client.post(target.url, json=body)
        except UNREACHABLE as exc:
            raise EmbeddingsError(unreachable_detail(exc)) from None
        if (wait := retry_wait(response, attempt)) is not None:
            time.sleep(wait)
            continue
        if response.status_code != 200:
            raise EmbeddingsError(error_detail(response, endpoint="embeddings", api_key=target.api_key))
        return response
    raise AssertionError("unreachable")


def _vectors(response: httpx.Response, count: int) -> list[list[float]]:
    """The answer's embeddings in input order; EmbeddingsError unless there is one vector of finite numbers
    per text and all have the same length."""
    try:
        data = json_body(response)["data"]
        by_index = {int(entry["index"]): [float(x) for x in entry["embedding"]] for entry in data}
        vectors = [by_index[i] for i in range(count)]
    except (ValueError, KeyError, TypeError, IndexError, OverflowError):
        raise EmbeddingsError("the endpoint's answer holds no embedding for every input") from None
    if len({len(vector) for vector in vectors}) > 1:
        raise EmbeddingsError("the endpoint's embeddings differ in length")
    if not all(math.isfinite(x) for vector in vectors for x in vector):
        raise EmbeddingsError("the endpoint's embeddings hold a number that is not finite")
    return vectors


def embed(target: EmbeddingsTarget, texts: Sequence[str], *, timeout_s: float = 60.0) -> list[list[float]]:
    """One embedding per text (of its first MAX_EMBEDDING_CHARS characters), in order (requests of at most
    MAX_EMBEDDING_INPUTS texts)."""
    vectors: list[list[float]] = []
    with httpx.Client(timeout=timeout_s, headers=auth_headers(target.api_key)) as client:
        for start in range(0, len(texts), MAX_EMBEDDING_INPUTS):
            batch = [text[:MAX_EMBEDDING_CHARS] for text in texts[start : start + MAX_EMBEDDING_INPUTS]]
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
