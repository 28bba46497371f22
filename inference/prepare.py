"""A proxied request → token ids and a token budget, checked against the model's context window."""

import threading
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field
from transformers import PreTrainedTokenizerBase

from jobspec.serving import (
    MAX_MESSAGES,
    MAX_MODEL_NAME_CHARS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STOP,
    MAX_TEMPERATURE,
    MAX_TOKENS_BOUND,
)
from worker.engine.data import encode_prompts


class Tokenizes(Protocol):
    """What preparing a request needs of a loaded base model (either backend's)."""

    tokenizer: PreTrainedTokenizerBase
    tokenizer_lock: threading.Lock
    context_length: int


class GenerateRequest(BaseModel):
    """What the API sends after authenticating and resolving the model. Its public checks already ran; the
    same limits (jobspec.serving) hold here, and `n` is checked against SPPO_INFERENCE_MAX_N by the server."""

    kind: Literal["chat", "completion"]
    model: str = Field(max_length=MAX_MODEL_NAME_CHARS)  # the public id, echoed in the response
    base_model: str = Field(max_length=MAX_MODEL_NAME_CHARS)
    adapter_uri: str | None = Field(default=None, max_length=1024)
    messages: list[dict[str, str]] | None = Field(default=None, max_length=MAX_MESSAGES)
    prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_BOUND)
    temperature: float = Field(default=1.0, ge=0, le=MAX_TEMPERATURE)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1)
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOP)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stream: bool = False
    include_usage: bool = False


class RequestError(Exception):
    """An answer in OpenAI's error shape, with the HTTP status the API passes on."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 and self.status != 429 else "server_error"
        if self.status == 429:
            kind = "rate_limit_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Prepared:
    prompt_ids: list[int]
    max_tokens: int


def prepare(request: GenerateRequest, base: Tokenizes) -> Prepared:
    with base.tokenizer_lock:
        if request.kind == "chat":
            ids = encode_prompts(base.tokenizer, [{"messages": request.messages or []}])[0]
        else:
            ids = list(base.tokenizer(request.prompt or "")["input_ids"])
    param = "messages" if request.kind == "chat" else "prompt"
    room = base.context_length - len(ids)
    if room < 1:
        raise RequestError(
            400,
            f"This model's maximum context length is {base.context_length} tokens; the {param} take "
            f"{len(ids)} tokens. Shorten the {param}.",
            param=param, code="context_length_exceeded",
        )  # fmt: skip
    if request.max_tokens is not None and request.max_tokens > room:
        raise RequestError(
            400,
            f"max_tokens is too large: {request.max_tokens}. This model's maximum context length is "
            f"{base.context_length} tokens and the {param} take {len(ids)}, so at most {room} completion "
            "tokens fit.",
            param="max_tokens", code="context_length_exceeded",
        )  # fmt: skip
    return Prepared(ids, request.max_tokens or room)
