"""One run of the algorithm race: a (task, mode, variant, seed) trained to a CPU-second budget, then scored.

Used by benchmarks/algorithms.py, which runs each spec in its own single-threaded process.
"""

import resource
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from battery import BATTERY, data_files

from worker.engine.callbacks import Control, StartInfo, TrainerCallbacks
from worker.engine.config import RunConfig
from worker.engine.evaluate import evaluate
from worker.engine.fixtures import FIXTURE_GRADER, Fixture, ensure_fixture
from worker.engine.run import run_training

SAMPLES_PER_STEP = 64  # the same for every variant: prompts per step = 64 / samples per prompt
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}
SMALL_CRITIC_LAYERS = 2  # the "smaller separate critic": the policy's lower half (4 layers -> 2)
DATA_STEPS = 100  # a task variant's training file: 100 x the model's batch_size items (runs cycle through it)
MODEL_FILES = ("model.safetensors", "config.json", "generation_config.json")  # what a checkpoint's model/ has


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    overrides: dict[str, Any]


VARIANTS = {
    v.name: v
    for v in (
        Variant(
            "sppo",
            "SPPO (separate critic)",
            {"algorithm": "sppo", "critic": "separate", "critic_layers": None},
        ),
        Variant(
            "sppo_small_critic",
            "SPPO (2-layer separate critic)",
            {"algorithm": "sppo", "critic": "separate", "critic_layers": SMALL_CRITIC_LAYERS},
        ),
        Variant(
            "sppo_shared_lora", "SPPO (shared-LoRA critic)", {"algorithm": "sppo", "critic": "shared_lora"}
        ),
        Variant("grpo_n4", "GRPO N=4", {"algorithm": "grpo", "group_size": 4}),
        Variant("grpo_n8", "GRPO N=8", {"algorithm": "grpo", "group_size": 8}),
        # the paper's framing: equal prompts per step, so GRPO draws N times SPPO's samples per step
        Variant(
            "grpo_n8_prompts",
            "GRPO N=8, 64 prompts/step (paper framing)",
            {"algorithm": "grpo", "group_size": 8, "batch_size": SAMPLES_PER_STEP},
        ),
        Variant(
            "ppo_gae",
            "PPO-GAE (token critic)",
            {"algorithm": "ppo", "critic": "separate", "critic_layers": None},
        ),
        Variant("reinforce", "REINFORCE (batch-mean baseline)", {"algorithm": "reinforce"}),
    )
}
MODES = {"lora": True, "full": False}


@dataclass(frozen=True)
class RunSpec:
    task: str
    mode: str
    variant: str
    seed: int
    budget_s: float
    clock: str
    checkpoint_interval: int
    hyperparameters: dict[str, Any]
    """learning_rate, critic_learning_rate, temperature, lora_rank, lora_alpha, ... for this (task, mode)."""
    work_dir: str
    data: str | None = None
    """A task variant of benchmarks/battery.py to train and score on instead of the fixture's own data."""


@dataclass
class Point:
    """One scored checkpoint of a run."""

    step: int
    training_s: float
    """Budget clock at the end of the step (model loading, checkpoint writing and scoring excluded)."""
    wall_s: float
    samples: float
    train_accuracy: float
    """rollout/accuracy of that step: the policy's own sampled answers."""
    accuracy: float = 0.0
    """Validation greedy pass@1, filled in after the run."""
    sampled_accuracy: float = 0.0
    """Validation accuracy of one sample per item at the training temperature (avg@1)."""


@dataclass
class RunRecord:
    task: str
    mode: str
    variant: str
    seed: int
    points: list[Point]
    samples_per_s: float
    peak_memory_mb: float
    zero_adv_frac_mean: float
    steps: int
    hyperparameters: dict[str, Any] = field(default_factory=dict)


class BudgetCallbacks(TrainerCallbacks):
    """Pauses a run once its training clock passes the budget and copies the policy (adapter, or full
    model plus tokenizer) at every checkpoint. The clock starts after model loading and leaves out
    checkpoint writing (between on_step and on_checkpoint) and the callbacks' own work; "pause" makes the
    trainer checkpoint the last completed step before it returns, so the final state is scored too.
    """

    def __init__(self, budget_s: float, clock: Callable[[], float], copy_dir: Path, model_dir: Path) -> None:
        self.budget_s, self.clock, self.copy_dir, self.model_dir = budget_s, clock, copy_dir, model_dir
        self.started = clock()
        self.wall_started = time.perf_counter()
        self.excluded = 0.0
        self.step_ended_at: float | None = None
        self.last_step: tuple[int, float, float, dict[str, float]] | None = None
        self.points: list[Point] = []
        self.copies: list[Path] = []
        self.zero_adv: list[float] = []

    def training_s(self) -> float:
        return self.clock() - self.started - self.excluded

    def on_start(self, info: StartInfo) -> None:
        self.started, self.wall_started = self.clock(), time.perf_counter()

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.step_ended_at = self.clock()
        self.last_step = (step, self.training_s(), time.perf_counter() - self.wall_started, metrics)
        self.zero_adv.append(metrics.get("health/zero_adv_frac", 0.0))

    def copy_policy(self, checkpoint: Path, step: int) -> Path:
        target = self.copy_dir / f"step-{step:06d}"
        if (checkpoint / "adapter").is_dir():
            shutil.copytree(checkpoint / "adapter", target)
            return target
        shutil.copytree(checkpoint / "model", target)  # full fine-tuning: weights without a tokenizer
        for file in self.model_dir.iterdir():
            if file.is_file() and file.name not in MODEL_FILES:
                shutil.copy(file, target / file.name)
        return target

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        entered = self.clock()
        if self.step_ended_at is not None:
            self.excluded += entered - self.step_ended_at
            self.step_ended_at = None
        if self.last_step is not None and (not self.points or self.points[-1].step != step):
            _, training_s, wall_s, step_metrics = self.last_step
            self.copies.append(self.copy_policy(path, step))
            self.points.append(
                Point(
                    step, training_s, wall_s, step_metrics["perf/samples"], step_metrics["rollout/accuracy"]
                )
            )
        self.excluded += self.clock() - entered

    def control(self) -> Control:
        return "pause" if self.training_s() >= self.budget_s else "continue"


def race_fixture(task: str, data: str | None, work_dir: Path, seed: int = 0) -> Fixture:
    """The fixture, or its model with the files of a battery task variant (the training file seeded by `seed`,
    the validation file the same for every seed)."""
    fixture = ensure_fixture(task)
    if data is None:
        return fixture
    variant = BATTERY[data]
    if variant.model != task:
        raise ValueError(f"task variant {data} is for {variant.model}, not {task}")
    work_dir.mkdir(parents=True, exist_ok=True)
    train, validation = data_files(work_dir, variant, seed, steps=DATA_STEPS)
    return replace(fixture, train_file=train, validation_file=validation)


def run_config(fixture: Fixture, spec: RunSpec, output_dir: Path) -> RunConfig:
    variant = VARIANTS[spec.variant]
    group_size = int(variant.overrides.get("group_size", 1))
    return RunConfig.from_dict(
        {
            "model": str(fixture.model_dir),
            "train_file": str(fixture.train_file),
            "grader": FIXTURE_GRADER,
            "output_dir": str(output_dir),
            "use_lora": MODES[spec.mode],
            "batch_size": SAMPLES_PER_STEP // group_size,
            "max_steps": 1_000_000,  # the budget ends the run
            "checkpoint_interval": spec.checkpoint_interval,
            "keep_checkpoints": 1,
            "seed": spec.seed,
            "device": "cpu",
            "max_response_tokens": fixture.max_response_tokens,
            **spec.hyperparameters,
            **variant.overrides,
        }
    )


def score(
    fixture: Fixture, policy: Path | None, temperature: float, full_model: bool, max_items: int | None
) -> tuple[float, float]:
    """(greedy pass@1, avg@1 sampled at the training temperature) on the validation file."""
    model_dir, adapter = (policy, None) if full_model and policy is not None else (fixture.model_dir, policy)
    result = evaluate(
        model_dir or fixture.model_dir,
        adapter,
        fixture.validation_file,
        FIXTURE_GRADER,
        samples=1,
        temperature=temperature,
        max_response_tokens=fixture.max_response_tokens,
        max_items=max_items,
        device="cpu",
    )
    return result.pass_at_1, result.avg_at_k


def run_one(spec: RunSpec, max_items: int | None = None) -> RunRecord:
    """Train one spec to its budget, then score its checkpoints. Runs in a child process."""
    torch.set_num_threads(1)
    work_dir = Path(spec.work_dir) / f"{spec.task}-{spec.mode}-{spec.variant}-seed{spec.seed}"
    fixture = race_fixture(spec.task, spec.data, work_dir / "data", spec.seed)
    callbacks = BudgetCallbacks(spec.budget_s, CLOCKS[spec.clock], work_dir / "policies", fixture.model_dir)
    result = run_training(run_config(fixture, spec, work_dir / "run"), callbacks)
    peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before scoring loads more
    temperature = float(spec.hyperparameters["temperature"])
    for point, copy in zip(callbacks.points, callbacks.copies, strict=True):
        point.accuracy, point.sampled_accuracy = score(
            fixture, copy, temperature, spec.mode == "full", max_items
        )
    last = callbacks.points[-1]
    shutil.rmtree(work_dir, ignore_errors=True)
    return RunRecord(
        task=spec.task,
        mode=spec.mode,
        variant=spec.variant,
        seed=spec.seed,
        points=callbacks.points,
        samples_per_s=last.samples / last.training_s,
        peak_memory_mb=peak_memory_mb,
        zero_adv_frac_mean=statistics.fmean(callbacks.zero_adv),
        steps=result.final_step,
        hyperparameters=spec.hyperparameters,
    )
