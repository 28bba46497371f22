"""OpenAI's response objects for chat.completions and completions, whole and as stream chunks."""

import json
import secrets
import time
from typing import Any, Literal

Kind = Literal["chat", "completion"]


def response_id(kind: Kind) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _choice(
    kind: Kind, index: int, text: str, reason: str | None, *, chunk: bool, first: bool
) -> dict[str, Any]:
    if kind == "completion":
        return {"index": index, "text": text, "logprobs": None, "finish_reason": reason}
    content: dict[str, Any] = {"content": text}
    if not chunk or first:
        content = {"role": "assistant", **content}
    if not chunk:
        return {"index": index, "message": {**content, "refusal": None}, "logprobs": None,
                "finish_reason": reason}  # fmt: skip
    return {"index": index, "delta": content if (text or first) else {}, "logprobs": None,
            "finish_reason": reason}  # fmt: skip


def _envelope(kind: Kind, rid: str, model: str, created: int, *, chunk: bool) -> dict[str, Any]:
    obj = ("chat.completion.chunk" if chunk else "chat.completion") if kind == "chat" else "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "system_fingerprint": None}


def completion(
    kind: Kind,
    *,
    model: str,
    texts: list[str],
    reasons: list[str],
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    body = _envelope(kind, response_id(kind), model, int(time.time()), chunk=False)
    body["choices"] = [
        _choice(kind, i, text, reason, chunk=False, first=True)
        for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))
    ]
    body["usage"] = usage(prompt_tokens, completion_tokens)
    return body


class ChunkWriter:
    """Server-Sent Events lines of one streamed response, in the order OpenAI sends them."""

    def __init__(self, kind: Kind, model: str) -> None:
        self.kind = kind
        self.model = model
        self.id = response_id(kind)
        self.created = int(time.time())
        self.started: set[int] = set()

    def _event(self, payload: dict[str, Any]) -> str:
        return f"data: {json.dumps(payload)}\n\n"

    def chunk(self, index: int, text: str, reason: str | None = None) -> str:
        body = _envelope(self.kind, self.id, self.model, self.created, chunk=True)
        first = index not in self.started
        self.started.add(index)
        body["choices"] = [_choice(self.kind, index, text, reason, chunk=True, first=first)]
        return self._event(body)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> str:
        body = _envelope(self.kind, self.id, self.model, self.created, chunk=True)
        body["choices"] = []
        body["usage"] = usage(prompt_tokens, completion_tokens)
        return self._event(body)

    def error(self, message: str) -> str:
        return self._event(
            {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
        )

    @staticmethod
    def done() -> str:
        return "data: [DONE]\n\n"
