"""Checks of a job's data against its model, before the engine spends minutes on it.

The API validates JSONL structure when a file is uploaded, and the context at job creation where it can
render the model's chat template; what only the worker can check for every model (it has transformers, the
tokenizer and the model's config) is checked here, before the preflight, so the job fails at once naming
the line instead of running for minutes or ending as `internal_error`:
- a lone surrogate (`"\\ud800"` in the JSON) is a valid JSON string but not text any tokenizer can encode
  (`invalid_training_file`);
- the longest prompt plus `max_response_tokens` must fit the model's context (the engine's
  `check_run_context`: `invalid_config` naming max_response_tokens, or `invalid_training_file` for a prompt
  that fills the context alone).
"""

import json
import re
from pathlib import Path
from typing import Any

from worker.engine.config import RunConfig
from worker.engine.context import check_run_context
from worker.engine.errors import DataFileError

_SURROGATE = re.compile("[\ud800-\udfff]")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in (*_strings(key), *_strings(item))]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def check_file(path: str | Path, param: str) -> None:
    """DataFileError for the first line that holds text no tokenizer can encode."""
    name = param.replace("_", " ")
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        try:
            item = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue  # the engine reports malformed lines with its own message
        if any(_SURROGATE.search(text) for text in _strings(item)):
            raise DataFileError(
                f"Line {number} of the {name} holds a lone UTF-16 surrogate (such as \\ud800), which is not "
                "valid text; fix the line and upload the file again.",
                param,
            )


def check_prompts(config: RunConfig) -> None:
    """Check the training and validation files of a run against its model (see the module docstring)."""
    check_file(config.train_file, "training_file")
    if config.validation_file:
        check_file(config.validation_file, "validation_file")
    check_run_context(config)
