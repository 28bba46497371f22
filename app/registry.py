"""The base-model registry: a directory of Hugging Face model folders, plus the built-in `sppo-tiny` fixture.

A request's model name is only ever matched against this listing, never joined onto a path, so no
request string can reach the filesystem. The worker resolves names with the same function.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

from app.settings import Settings

FIXTURE_MODEL = "sppo-tiny"
FIXTURE_CONTEXT = 64  # the fixture's config.json max_position_embeddings (a test checks it still is)
# The fewest tokens a prompt of n characters can be: the fixture's tokenizer has one token per character;
# for other models no common tokenizer averages more than this many characters per token.
_MAX_CHARS_PER_TOKEN = 32


@dataclass(frozen=True)
class BaseModelEntry:
    name: str
    path: Path | None  # None for the built-in fixture, which the engine builds on demand
    created: int


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def list_base_models(settings: Settings) -> list[BaseModelEntry]:
    """`sppo-tiny` plus every `<dir>` and `<org>/<dir>` under the registry holding a config.json."""
    entries = [BaseModelEntry(FIXTURE_MODEL, None, 0)]
    root = settings.registry_dir
    if not root.is_dir():
        return entries
    for child in sorted(root.iterdir()):
        if child.name.startswith("."):
            continue
        candidates = [child] if _is_model_dir(child) else sorted(child.iterdir()) if child.is_dir() else []
        for candidate in candidates:
            if _is_model_dir(candidate) and not candidate.name.startswith("."):
                name = candidate.relative_to(root).as_posix()
                entries.append(
                    BaseModelEntry(name, candidate, int((candidate / "config.json").stat().st_mtime))
                )
    return entries


def find_base_model(settings: Settings, name: str) -> BaseModelEntry | None:
    return next((entry for entry in list_base_models(settings) if entry.name == name), None)


def context_length(entry: BaseModelEntry) -> int | None:
    """The model's context in tokens, from its config.json (read as JSON: the API never loads a model)."""
    if entry.path is None:
        return FIXTURE_CONTEXT
    try:
        config = json.loads((entry.path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = config.get(key) if isinstance(config, dict) else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def fewest_tokens(entry: BaseModelEntry, chars: int) -> int:
    """A lower bound on the tokens of a prompt of `chars` characters for this model."""
    return chars if entry.path is None else math.ceil(chars / _MAX_CHARS_PER_TOKEN)
