"""Engine test helpers; the `tiny` fixture model itself comes from tests/conftest.py."""

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from worker.engine.config import RunConfig
from worker.engine.fixture_build import write_jsonl
from worker.engine.fixture_tasks import short_problem
from worker.engine.fixtures import Fixture
from worker.engine.run import run_training

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


@dataclass(frozen=True)
class HeldOutRun:
    """A learning run scored on fresh held-out problems: the step-0 and final evaluations, every line."""

    before: dict[str, float]
    after: dict[str, float]
    lines: list[dict[str, Any]]
    seconds: float


def held_out_run(
    tiny: Fixture,
    tmp_path: Path,
    *,
    grader: dict[str, Any],
    steps: int,
    items: int,
    seed: int,
    overrides: dict[str, Any] | None = None,
) -> HeldOutRun:
    """The fixture's defaults (LoRA, the API's mode) with `overrides` for `steps`, evaluated at step 0 and
    at the end on `items` problems drawn fresh from the fixture's task with `seed` (the same on every
    machine)."""
    rng = random.Random(seed)
    held_out = tmp_path / "held_out.jsonl"
    write_jsonl(held_out, [short_problem(rng) for _ in range(items)])
    config = RunConfig.from_dict(
        {
            "model": str(tiny.model_dir),
            "train_file": str(tiny.train_file),
            "validation_file": str(held_out),
            "grader": grader,
            "output_dir": str(tmp_path / "run"),
            "max_steps": steps,
            "eval_interval": steps,
            "eval_samples": 1,
            "checkpoint_interval": steps,
            "seed": 0,
            **(overrides or {}),
        }
    )
    started = time.perf_counter()
    result = run_training(config)
    seconds = time.perf_counter() - started
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    before = next(line for line in lines if line["step"] == 0 and "eval/pass@1" in line)
    return HeldOutRun(before, result.eval, lines, seconds)
