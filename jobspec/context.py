"""A model's context and the rule every run meets: its longest prompt plus `max_response_tokens` fit in it.

Written once for both sides: the API applies it at job creation (counting tokens with the `tokenizers`
library) and the engine before training and in `sppo train` (with transformers' own chat template), so
their messages and numbers agree.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jobspec.hyperparameters import (
    REASONING_EFFORT_TOKENS,
    REFERENCE_DEFAULTS,
    given_max_response_tokens,
    model_defaults_for,
)

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx",
                "max_seq_len")  # fmt: skip
"""config.json keys that name the positions a model can attend over, in the order they are trusted
(GPT-2 has both n_positions and n_ctx, equal; MPT says max_seq_len, ChatGLM seq_length)."""
DEFAULT_MAX_RESPONSE_TOKENS: int = REFERENCE_DEFAULTS["max_response_tokens"]
"""The engine's `max_response_tokens` when neither the job nor the model's sppo_defaults.json sets one."""


def context_length(config: Any) -> int | None:
    """The context length a model's config.json states; a multimodal model's `text_config` counts too.
    None when it states none (then nothing is checked)."""
    if not isinstance(config, Mapping):
        return None
    for key in CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    text_config = config.get("text_config")
    return context_length(text_config) if text_config is not config else None


def read_context_length(model_dir: str | Path) -> int | None:
    """The context length of a model folder (its config.json); None when absent or unreadable."""
    try:
        return context_length(json.loads((Path(model_dir) / "config.json").read_text()))
    except (OSError, ValueError):
        return None


def resolve_max_response_tokens(
    hyperparameters: Mapping[str, Any], model_defaults: Mapping[str, Any], algorithm: str = "sppo"
) -> tuple[int, str]:
    """(tokens, where they come from) in the worker's order (jobspec.hyperparameters): the job's budget
    (its `max_response_tokens`, else its `reasoning_effort`'s), the model's sppo_defaults.json for the
    algorithm, the engine's default. The source is "" for the job's own value, else a phrase for messages
    such as " (the model's default)"."""
    budget = given_max_response_tokens(hyperparameters)
    if budget is not None:
        effort = hyperparameters.get("reasoning_effort")
        own = hyperparameters.get("max_response_tokens") is not None or effort not in REASONING_EFFORT_TOKENS
        return budget, "" if own else f" (from reasoning_effort '{effort}')"
    default = model_defaults_for(model_defaults, algorithm).get("max_response_tokens")
    if isinstance(default, int) and not isinstance(default, bool):
        return default, " (the model's default)"
    return DEFAULT_MAX_RESPONSE_TOKENS, " (the engine's default)"


@dataclass(frozen=True)
class Overflow:
    """Why a run does not fit its model's context, and what to change: the prompt or the budget."""

    change: Literal["prompt", "max_response_tokens"]
    message: str


def response_overflow(max_response_tokens: int, context: int, *, source: str = "") -> Overflow | None:
    """A budget at or beyond the whole context leaves no position for a prompt (the shortest is a token)."""
    if fits(prompt_tokens=1, max_response_tokens=max_response_tokens, context=context):
        return None
    return Overflow(
        "max_response_tokens",
        f"max_response_tokens {max_response_tokens}{source} does not fit the model's context of {context} "
        f"positions, which holds the prompt and the response together; set max_response_tokens below "
        f"{context}.",
    )


def fits(*, prompt_tokens: int, max_response_tokens: int, context: int) -> bool:
    """The rule: a prompt and a response of the full budget together take at most the context's positions."""
    return prompt_tokens + max_response_tokens <= context


def prompt_overflow(
    *, prompt_tokens: int, max_response_tokens: int, context: int, where: str, source: str = ""
) -> Overflow | None:
    """None when the prompt and a full-length response fit; `where` names the prompt ("on line 7 of the
    training file"). A prompt that fills the context alone is the prompt's fault, otherwise the budget's."""
    if fits(prompt_tokens=prompt_tokens, max_response_tokens=max_response_tokens, context=context):
        return None
    if prompt_tokens >= context:
        return Overflow(
            "prompt",
            f"The prompt {where} is {prompt_tokens} tokens with the model's chat template: it fills the "
            f"model's context of {context} positions and leaves no room for a response. Shorten the prompt.",
        )
    total, shorter = prompt_tokens + max_response_tokens, context - max_response_tokens
    return Overflow(
        "max_response_tokens",
        f"The longest prompt, {where}, is {prompt_tokens} tokens with the model's chat template; with "
        f"max_response_tokens {max_response_tokens}{source} that makes {total}, "
        f"more than the model's context of {context} positions. max_response_tokens "
        f"{context - prompt_tokens} would fit"
        + (f", or prompts of at most {shorter} tokens." if shorter > 0 else "."),
    )
