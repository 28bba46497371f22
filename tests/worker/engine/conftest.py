"""Engine test fixtures: the tiny model is built once per machine into a cache keyed by its version."""

import os
from pathlib import Path

import pytest
import torch

from worker.engine.fixtures import FIXTURE_VERSION, MODEL_NAME, Fixture, ensure_fixture

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def tiny() -> Fixture:
    """The `sppo-tiny` fixture ($SPPO_FIXTURE_DIR, else <repo>/.sppo/fixtures/sppo-tiny-<version>)."""
    torch.set_num_threads(2)
    explicit = os.environ.get("SPPO_FIXTURE_DIR")
    cache = Path(explicit) if explicit else ROOT / ".sppo" / "fixtures" / f"{MODEL_NAME}-{FIXTURE_VERSION}"
    return ensure_fixture(cache)
