"""Engine test helpers; the `tiny` fixture model itself comes from tests/conftest.py."""

from pathlib import Path

import torch
from safetensors.torch import load_file

from worker.engine.config import RunConfig
from worker.engine.fixtures import Fixture

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


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    """A finished run's final LoRA adapter or, fully fine-tuned, its model weights."""
    final = output_dir / "final"
    path = final / "adapter" / "adapter_model.safetensors"
    return load_file(str(path if path.exists() else final / "model" / "model.safetensors"))
