"""The base-model registry: a directory of Hugging Face model folders, plus the built-in fixture
model(s) shipped with the engine.

A request's model name is only ever matched against this listing, never joined onto a path, so no
request string can reach the filesystem. The worker resolves names with the same function.
"""

from dataclasses import dataclass
from pathlib import Path

from app.settings import Settings

FIXTURE_MODEL = "sppo-tiny"
# shipped with the engine (worker/engine/fixture_models); "sppo-tiny-long" joins once its weights ship
FIXTURE_MODELS = (FIXTURE_MODEL,)


@dataclass(frozen=True)
class BaseModelEntry:
    name: str
    path: Path | None  # None for a built-in fixture, which ships with the engine
    created: int


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def list_base_models(settings: Settings) -> list[BaseModelEntry]:
    """The fixtures plus every `<dir>` and `<org>/<dir>` under the registry holding a config.json."""
    entries = [BaseModelEntry(name, None, 0) for name in FIXTURE_MODELS]
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
