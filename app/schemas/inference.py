"""Requests of OpenAI's chat.completions and completions, as this service accepts them."""

from typing import Any, Literal

from pydantic import Field, field_validator

from app.schemas.common import StrictModel
from jobspec.serving import (
    MAX_MESSAGES,
    MAX_MODEL_NAME_CHARS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STOP,
    MAX_TEMPERATURE,
    MAX_TOKENS_BOUND,
)


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class ChatMessage(StrictModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(default=None, max_length=64)

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(StrictModel):
    include_usage: bool = False


class _Sampling(StrictModel):
    model: str = Field(min_length=1, max_length=MAX_MODEL_NAME_CHARS)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_BOUND)
    temperature: float = Field(default=1.0, ge=0, le=MAX_TEMPERATURE)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=MAX_TOKENS_BOUND)  # the service's own bound is a setting
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)  # accepted as OpenAI does; not used
    metadata: dict[str, str] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        return value

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def proxied(self) -> dict[str, Any]:
        """The sampling fields the model server reads."""
        return {
            "max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
            "n": self.n, "stop": self.stops(), "seed": self.seed, "stream": self.stream,
            "include_usage": bool(self.stream_options and self.stream_options.include_usage),
        }  # fmt: skip


class ChatCompletionCreate(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_BOUND)

    def proxied(self) -> dict[str, Any]:
        body = super().proxied()
        body["max_tokens"] = self.max_completion_tokens or self.max_tokens
        body["messages"] = [{"role": m.role, "content": m.text()} for m in self.messages]
        return {"kind": "chat", **body}


class CompletionCreate(_Sampling):
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)

    def proxied(self) -> dict[str, Any]:
        return {"kind": "completion", **super().proxied(), "prompt": self.prompt}
