"""How a caller (Celery worker, CLI, test) watches and steers a run without the engine knowing it."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Control = Literal["continue", "cancel", "pause"]
Level = Literal["info", "warning", "error"]
Status = Literal["completed", "cancelled", "paused"]


@dataclass(frozen=True)
class StartInfo:
    total_steps: int
    start_step: int
    """> 0 when the run resumed from a checkpoint."""
    output_dir: Path


class TrainerCallbacks:
    """No-op base class: override what you need. control() is polled between steps and during generation."""

    def on_start(self, info: StartInfo) -> None:
        pass

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def on_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        """A few of the step's prompts, completions and rewards (samples.py's `Sample.to_dict`), just
        before its on_step."""

    def on_event(self, level: Level, message: str, data: dict[str, Any] | None = None) -> None:
        pass

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        pass

    def on_evaluation(self, step: int, scores: dict[str, float]) -> None:
        pass

    def control(self) -> Control:
        return "continue"


@dataclass
class TrainingResult:
    status: Status
    final_step: int
    total_steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    """The last step's metrics."""
    eval: dict[str, float] = field(default_factory=dict)
    """The last evaluation's scores."""
    final_adapter_dir: Path | None = None
    """The run's model: a peft adapter (or the full model when use_lora is false) under final/, of step
    `model_step`; None unless completed."""
    checkpoints: list[Path] = field(default_factory=list)
    model_step: int | None = None
    """The step whose weights final_adapter_dir holds: the best checkpoint by validation pass@1
    (model_selection best) or the last step; None unless completed."""
    model_eval: dict[str, float] = field(default_factory=dict)
    """The evaluation scores of `model_step` (empty when it was not evaluated)."""
