"""Checks of a job's data against its model, before the engine spends minutes on it.

The API validates JSONL structure when a file is uploaded; what only the worker can check (it has the
tokenizer and the model's config) is checked here, so the job fails at once with `invalid_training_file`
naming the line instead of running a step for minutes or ending as `internal_error`:
- a lone surrogate (`"\\ud800"` in the JSON) is a valid JSON string but not text any tokenizer can encode;
- a prompt as long as the model's context (`max_position_embeddings`) leaves no room for a response.
"""

import json
import re
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from worker.engine.config import RunConfig
from worker.engine.data import encode_prompts, read_items
from worker.engine.errors import DataFileError
from worker.engine.policy import load_tokenizer

_SURROGATE = re.compile("[\ud800-\udfff]")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in (*_strings(key), *_strings(item))]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def model_context(model_dir: str | Path) -> int | None:
    """The model's context length in tokens, from its config.json (None when it does not say)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    context = config.get("max_position_embeddings")
    return int(context) if isinstance(context, int) and context > 0 else None


def check_file(path: str | Path, param: str, tokenizer: PreTrainedTokenizerBase, context: int | None) -> None:
    """DataFileError for the first line whose prompt cannot be encoded or does not fit the context."""
    name = param.replace("_", " ")
    for number, item in read_items(path, param):  # the messages as the engine templates them
        if any(_SURROGATE.search(text) for text in _strings(item)):
            raise DataFileError(
                f"Line {number} of the {name} holds a lone UTF-16 surrogate (such as \\ud800), which is not "
                "valid text; fix the line and upload the file again.",
                param,
            )
        if context is None:
            continue
        [prompt] = encode_prompts(tokenizer, [item])
        if len(prompt) >= context:
            raise DataFileError(
                f"The prompt on line {number} of the {name} is {len(prompt)} tokens long; the model's "
                f"context is {context} tokens (prompt and response together). Shorten the prompt.",
                param,
            )


def check_prompts(config: RunConfig) -> None:
    """Check the training and validation files of a run against its model (see the module docstring)."""
    tokenizer = load_tokenizer(config.model)
    context = model_context(config.model)
    check_file(config.train_file, "training_file", tokenizer, context)
    if config.validation_file:
        check_file(config.validation_file, "validation_file", tokenizer, context)
