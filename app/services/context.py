"""The context check at creation: a job's prompts and response budget must fit its model's context.

The rule and its messages are jobspec.context's, shared with the engine. Here the budget is the one the
worker will use (the job's `max_response_tokens`, else its `reasoning_effort`, else the model's default,
else the engine's), and prompts are counted exactly where the API can render the model's chat template
(app/prompt_tokens.py); otherwise only a lower bound from the file's longest prompt in characters is
checked, and the worker's check with transformers catches the rest before training.
"""

from collections.abc import Mapping
from typing import Any

from app.errors import InvalidRequest
from app.prompt_tokens import longest_prompt
from core.models import File
from core.registry import BaseModelEntry, fewest_tokens
from core.settings import Settings
from core.storage import artifact_store
from jobspec.context import Overflow, prompt_overflow, resolve_max_response_tokens, response_overflow

MAX_RESPONSE_TOKENS = "method.reinforcement.hyperparameters.max_response_tokens"
_FILE_NAMES = {"training_file": "the training file", "validation_file": "the validation file"}


def _refuse(overflow: Overflow, entry: BaseModelEntry, *, file_param: str) -> InvalidRequest:
    if overflow.change == "prompt":
        return InvalidRequest(f"Model '{entry.name}': {overflow.message}", param=file_param,
                              code="prompt_too_long")  # fmt: skip
    return InvalidRequest(f"Model '{entry.name}': {overflow.message}", param=MAX_RESPONSE_TOKENS,
                          code="context_length_exceeded")  # fmt: skip


def check_job_context(
    *,
    settings: Settings,
    entry: BaseModelEntry,
    algorithm: str,
    hyperparameters: Mapping[str, Any],
    files: list[tuple[File, str]],
) -> None:
    """400 naming `max_response_tokens` (or the file, for a prompt that fills the context alone) when the
    resolved budget, or the longest prompt of a (file, param) plus the budget, does not fit."""
    context = entry.context_length
    if context is None:
        return
    tokens, source = resolve_max_response_tokens(hyperparameters, entry.defaults or {}, algorithm)
    overflow = response_overflow(tokens, context, source=source)
    if overflow is not None:
        raise _refuse(overflow, entry, file_param="training_file")
    for file, param in files:
        check_file_context(settings, entry, file, param=param, max_response_tokens=tokens, source=source)


def check_file_context(
    settings: Settings,
    entry: BaseModelEntry,
    file: File,
    *,
    param: str,
    max_response_tokens: int = 1,
    source: str = "",
) -> None:
    """400 when the file's longest prompt and `max_response_tokens` (default: one token) do not fit."""
    context = entry.context_length
    if context is None:
        return
    longest = longest_prompt(entry.files, artifact_store(settings), file.storage_uri)
    if longest is not None:
        where = f"on line {longest.line} of {_FILE_NAMES.get(param, 'file')} '{file.id}'"
        overflow = prompt_overflow(prompt_tokens=longest.tokens, max_response_tokens=max_response_tokens,
                                   context=context, where=where, source=source)  # fmt: skip
        if overflow is not None:
            raise _refuse(overflow, entry, file_param=param)
    elif file.max_prompt_chars is not None and fewest_tokens(entry, file.max_prompt_chars) >= context:
        raise InvalidRequest(
            f"File '{file.id}' has a prompt of {file.max_prompt_chars} characters, longer than model "
            f"'{entry.name}' can read ({context} positions).",
            param=param,
            code="prompt_too_long",
        )
