"""Engine test fixtures: the tiny model is built once per machine into a cache keyed by its version."""

import os
from pathlib import Path

import pytest
import torch

from worker.engine.config import RunConfig
from worker.engine.fixtures import FIXTURE_VERSION, MODEL_NAME, Fixture, ensure_fixture

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def tiny() -> Fixture:
    """The `sppo-tiny` fixture ($SPPO_FIXTURE_DIR, else <repo>/.sppo/fixtures/sppo-tiny-<version>)."""
    # one thread: on a shared 2-core machine, two OpenMP threads per process thrash under load
    torch.set_num_threads(1)
    explicit = os.environ.get("SPPO_FIXTURE_DIR")
    cache = Path(explicit) if explicit else ROOT / ".sppo" / "fixtures" / f"{MODEL_NAME}-{FIXTURE_VERSION}"
    return ensure_fixture(cache)


# Rewards that are mixed on almost every step (a "7" somewhere in the answer): tests that need every
# parameter to receive a gradient cannot rely on the task's low initial success rate.
MIXED_GRADER = {
    "type": "string_check",
    "name": "has_seven",
    "input": "{{sample.output_text}}",
    "reference": "7",
    "operation": "like",
}


def tiny_config(tiny: Fixture, output_dir: Path, **overrides: object) -> RunConfig:
    """A run on the fixture small enough for a unit test (seconds per step)."""
    values: dict[str, object] = {
        "model": str(tiny.model_dir),
        "train_file": str(tiny.train_file),
        "validation_file": str(tiny.validation_file),
        "grader": MIXED_GRADER,
        "output_dir": str(output_dir),
        "batch_size": 8,
        "minibatch_size": 4,
        "ppo_epochs": 2,
        "max_steps": 1,
        "eval_interval": 100,
        "eval_samples": 1,
        "eval_max_items": 8,
        "seed": 1,
        "temperature": 1.0,  # diverse samples, so rewards within a GRPO group differ
    }
    values.update(overrides)
    return RunConfig.from_dict(values)
