"""The tiny local base models `sppo-tiny` and `sppo-tiny-long`, shipped built with the package.

No model hub is reachable, so the fixtures are built here once (worker/engine/fixture_build.py, see
`sppo fixture build --rebuild`) and their weights are committed under worker/engine/fixture_models/<name>/:
`model/` (safetensors, config, tokenizer, `sppo_defaults.json`, `sppo_grader.json`), `train.jsonl`,
`validation.jsonl` and `fixture.json` (base accuracies, how it was built, sha256 of every model file).
Every machine therefore trains the same base model; loading checks the checksums and never builds.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from worker.engine.fixture_tasks import FIXTURE_GRADER, TASKS

__all__ = [
    "FIXTURE_GRADER",
    "FIXTURE_VERSION",
    "Fixture",
    "FixtureError",
    "default_fixture_dir",
    "ensure_fixture",
]

FIXTURE_VERSION = "v3"
MODEL_NAME = "sppo-tiny"
SHIPPED_DIR = Path(__file__).resolve().parent / "fixture_models"
FIXTURE_NAMES = tuple(name for name in TASKS if (SHIPPED_DIR / name / "fixture.json").is_file())
"""The fixtures whose built weights ship in SHIPPED_DIR."""


class FixtureError(RuntimeError):
    """A fixture directory is missing, incomplete or does not match its recorded checksums."""


@dataclass(frozen=True)
class Fixture:
    """Where a fixture lives and what its base model scores."""

    name: str
    model_dir: Path
    train_file: Path
    validation_file: Path
    base_accuracy: float
    """Greedy pass@1 of the base model on validation_file."""
    max_response_tokens: int


def default_fixture_dir(name: str = MODEL_NAME) -> Path:
    """The shipped copy of fixture `name`."""
    if name not in TASKS:
        raise FixtureError(f"unknown fixture {name!r}; known: {', '.join(FIXTURE_NAMES)}")
    return SHIPPED_DIR / name


def sha256(path: Path) -> str:
    """The hex sha256 of a file (fixture.json records one per model file)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_fixture(path: Path) -> Fixture:
    """The fixture in `path`, after checking every model file against fixture.json's sha256."""
    try:
        manifest = json.loads((path / "fixture.json").read_text())
    except (OSError, ValueError) as exc:
        raise FixtureError(
            f"no readable fixture.json in {path} ({exc}); build it with"
            f" `sppo fixture build --name {path.name} --rebuild`"
        ) from exc
    for file_name, expected in manifest["sha256"].items():
        file = path / "model" / file_name
        if not file.is_file() or sha256(file) != expected:
            raise FixtureError(f"{file} is missing or does not match its checksum in {path / 'fixture.json'}")
    return Fixture(
        name=manifest["name"],
        model_dir=path / "model",
        train_file=path / "train.jsonl",
        validation_file=path / "validation.jsonl",
        base_accuracy=float(manifest["base_accuracy"]),
        max_response_tokens=TASKS[manifest["name"]].max_response_tokens,
    )


def ensure_fixture(name: str = MODEL_NAME) -> Fixture:
    """The shipped fixture `name`, checksum-verified (it is never built on demand)."""
    return load_fixture(default_fixture_dir(name))
