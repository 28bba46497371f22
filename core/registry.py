"""The base-model registry: a directory of Hugging Face model folders, plus the built-in fixture
model(s) shipped with the engine.

A request's model name is only ever matched against this listing, never joined onto a path, so no
request string can reach the filesystem. The worker resolves names with the same function.

A folder is offered only when it holds a config, weights and a tokenizer. It may declare the grader that
fits its output (`sppo_grader.json`, a grader in the API's format) and its context length is read from
`config.json`, so the API can default to a working grader and reject budgets the model cannot hold. The
API never loads the engine: the fixture's files are read by path from where the engine ships them.
"""

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from core.settings import Settings
from jobspec.context import read_context_length
from jobspec.graders import Grader
from jobspec.hyperparameters import DEFAULTS_FILE

log = logging.getLogger(__name__)

FIXTURE_MODEL = "sppo-tiny"
# shipped with the engine (worker/engine/fixture_models)
FIXTURE_MODELS = (FIXTURE_MODEL, "sppo-tiny-long")
# Where the engine ships the fixtures' files; read by path, never imported.
FIXTURES_ROOT = Path(__file__).resolve().parents[1] / "worker" / "engine" / "fixture_models"
GRADER_FILE = "sppo_grader.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")  # fmt: skip
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
_GRADER = TypeAdapter(Grader)
# The fewest tokens a prompt of n characters can be: the fixture's tokenizer has one token per character;
# for other models no common tokenizer averages more than this many characters per token.
_MAX_CHARS_PER_TOKEN = 32


@dataclass(frozen=True)
class BaseModelEntry:
    name: str
    path: Path | None  # None for a built-in fixture, which ships with the engine
    created: int
    recommended_grader: dict[str, Any] | None = None
    context_length: int | None = None
    defaults: dict[str, Any] | None = None  # the model's sppo_defaults.json

    @property
    def files(self) -> Path:
        """The folder its config and tokenizer are read from (a fixture's: where the engine ships it)."""
        return self.path if self.path is not None else FIXTURES_ROOT / self.name / "model"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        log.warning("ignoring unreadable %s", path)
        return None


def _grader(model_dir: Path) -> dict[str, Any] | None:
    spec = _read_json(model_dir / GRADER_FILE)
    if spec is None:
        return None
    try:
        return _GRADER.validate_python(spec).model_dump(mode="json")
    except ValidationError:
        log.warning("ignoring %s: not a valid grader", model_dir / GRADER_FILE)
        return None


def _entry(name: str, path: Path | None, model_dir: Path, created: int) -> BaseModelEntry:
    defaults = _read_json(model_dir / DEFAULTS_FILE)
    return BaseModelEntry(
        name=name,
        path=path,
        created=created,
        recommended_grader=_grader(model_dir),
        context_length=read_context_length(model_dir),
        defaults=defaults if isinstance(defaults, dict) else None,
    )


def is_complete_model_dir(path: Path) -> bool:
    """A loadable folder: config, weights and a tokenizer (a folder with only config.json is not)."""
    return (
        path.is_dir()
        and (path / "config.json").is_file()
        and any((path / name).is_file() for name in WEIGHT_FILES)
        and any((path / name).is_file() for name in TOKENIZER_FILES)
    )


def list_base_models(settings: Settings) -> list[BaseModelEntry]:
    """The fixtures plus every complete `<dir>` and `<org>/<dir>` model folder under the registry."""
    entries = [_entry(name, None, FIXTURES_ROOT / name / "model", 0) for name in FIXTURE_MODELS]
    root = settings.registry_dir
    if not root.is_dir():
        return entries
    for child in sorted(root.iterdir()):
        if child.name.startswith("."):
            continue
        candidates = (
            [child]
            if (child / "config.json").is_file()
            else sorted(child.iterdir())
            if child.is_dir()
            else []
        )
        for candidate in candidates:
            if is_complete_model_dir(candidate) and not candidate.name.startswith("."):
                name = candidate.relative_to(root).as_posix()
                created = int((candidate / "config.json").stat().st_mtime)
                entries.append(_entry(name, candidate, candidate, created))
    return entries


def find_base_model(settings: Settings, name: str) -> BaseModelEntry | None:
    return next((entry for entry in list_base_models(settings) if entry.name == name), None)


def fewest_tokens(entry: BaseModelEntry, chars: int) -> int:
    """A lower bound on the tokens of a prompt of `chars` characters for this model."""
    return chars if entry.path is None else math.ceil(chars / _MAX_CHARS_PER_TOKEN)
