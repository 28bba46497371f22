"""Keeping the best model: which step a run returns (model_selection), early stopping, and both across a
resume. The runs train the fixture with a learning rate (1e-3) that degrades it within a few steps, so the
best trained step is not the last: validation pass@1 on 16 items is 0.3125 (base), then 0.1875, 0.1875,
0.125, 0.0 for steps 1-4 (seed 1, eval every step; CPU runs are reproducible)."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from worker.engine.callbacks import Control, Level, TrainerCallbacks
from worker.engine.checkpoint import checkpoint_path, list_checkpoints
from worker.engine.config import RunConfig
from worker.engine.errors import ConfigError
from worker.engine.evaluate import evaluate
from worker.engine.fixtures import FIXTURE_GRADER, Fixture
from worker.engine.run import run_training
from worker.engine.selection import best_step, evaluations_without_improvement

PASS_AT_1 = [0.3125, 0.1875, 0.1875, 0.125, 0.0]  # steps 0..4, as the module docstring says


def degrading_config(tiny: Fixture, output_dir: Path, **overrides: Any) -> RunConfig:
    values: dict[str, Any] = {
        "model": str(tiny.model_dir),
        "train_file": str(tiny.train_file),
        "validation_file": str(tiny.validation_file),
        "grader": FIXTURE_GRADER,
        "output_dir": str(output_dir),
        "batch_size": 8,
        "minibatch_size": 8,
        "ppo_epochs": 1,
        "max_steps": 3,
        "eval_interval": 1,
        "eval_samples": 1,
        "eval_max_items": 16,
        "keep_checkpoints": 1,
        "seed": 1,
        "learning_rate": 1e-3,
    }
    return RunConfig.from_dict({**values, **overrides})


class Events(TrainerCallbacks):
    def __init__(self, pause_after: int | None = None) -> None:
        self.events: list[tuple[str, dict[str, Any] | None]] = []
        self.pause_after, self.seen = pause_after, 0

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.seen = step

    def on_event(self, level: Level, message: str, data: dict[str, Any] | None = None) -> None:
        self.events.append((message, data))

    def control(self) -> Control:
        return "pause" if self.pause_after is not None and self.seen >= self.pause_after else "continue"


def _adapter(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "adapter_model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def _pass_at_1(output_dir: Path) -> list[tuple[int, float]]:
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [(line["step"], line["eval/pass@1"]) for line in lines if "eval/pass@1" in line]


# ---- the pure selection functions ------------------------------------------------------------------


def test_best_step_is_the_highest_candidate_and_the_earlier_on_a_tie() -> None:
    history = [(0, 0.9), (4, 0.5), (8, 0.7), (12, 0.7), (16, 0.6)]
    assert best_step(history, {4, 8, 12, 16}) == 8  # 12 ties with 8: the earlier step
    assert best_step(history, {4, 12, 16}) == 12  # a pruned step is no candidate
    assert best_step(history, {0, 4, 8}) == 0
    assert best_step(history, {5, 20}) is None
    assert best_step([], {1}) is None


def test_evaluations_without_improvement_counts_since_the_last_new_best() -> None:
    assert evaluations_without_improvement([]) == 0
    assert evaluations_without_improvement([(0, 0.3)]) == 0
    assert evaluations_without_improvement([(0, 0.3), (5, 0.4)]) == 0
    # an equal score is no gain
    assert evaluations_without_improvement([(0, 0.3), (5, 0.4), (10, 0.4), (15, 0.2)]) == 2
    assert evaluations_without_improvement([(0, 0.3), (5, 0.2), (10, 0.31)]) == 0
    assert evaluations_without_improvement([(0, 0.5), (5, 0.2), (10, 0.4)]) == 2  # the base model counts


# ---- real runs ---------------------------------------------------------------------------------------


def test_the_model_is_the_best_checkpoint_and_scores_its_evaluation(tiny: Fixture, tmp_path: Path) -> None:
    config = degrading_config(tiny, tmp_path)
    result = run_training(config)
    assert _pass_at_1(tmp_path) == list(enumerate(PASS_AT_1[:4]))  # the case this test needs
    # step 1 ties step 2 at 0.1875: the earlier is the model; keep_checkpoints=1 keeps step 3 and the model
    assert result.status == "completed" and result.final_step == 3 and result.model_step == 1
    assert [step for step, _ in list_checkpoints(tmp_path)] == [1, 3]
    assert result.model_eval == {"eval/pass@1": 0.1875, "eval/reward_mean": 0.1875}
    assert result.eval["eval/pass@1"] == 0.125  # the last evaluation's, as before
    assert result.final_adapter_dir == tmp_path / "final" / "adapter"
    final = _adapter(result.final_adapter_dir)
    assert _same(final, _adapter(checkpoint_path(tmp_path, 1) / "adapter"))
    assert not _same(final, _adapter(checkpoint_path(tmp_path, 3) / "adapter"))
    scored = evaluate(
        config.model, result.final_adapter_dir, tiny.validation_file, FIXTURE_GRADER, samples=0,
        temperature=config.temperature, max_response_tokens=config.max_response_tokens, max_items=16,
        device="cpu", token_budget=config.micro_batch_tokens,
    )  # fmt: skip
    assert scored.pass_at_1 == 0.1875  # the registered model scores its best evaluation


def test_model_selection_last_returns_the_last_step(tiny: Fixture, tmp_path: Path) -> None:
    result = run_training(degrading_config(tiny, tmp_path, model_selection="last"))
    assert result.model_step == 3 and result.model_eval["eval/pass@1"] == 0.125
    assert result.final_adapter_dir is not None
    assert _same(_adapter(result.final_adapter_dir), _adapter(checkpoint_path(tmp_path, 3) / "adapter"))
    # pruning still keeps the best checkpoint
    assert [step for step, _ in list_checkpoints(tmp_path)] == [1, 3]


def test_every_evaluation_is_a_checkpoint_and_a_coinciding_one_is_written_once(
    tiny: Fixture, tmp_path: Path
) -> None:
    saved: list[int] = []

    class Saves(TrainerCallbacks):
        def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
            saved.append(step)

    config = degrading_config(tiny, tmp_path, max_steps=5, eval_interval=2, checkpoint_interval=4)
    run_training(config, Saves())
    assert saved == [2, 4, 5]  # evaluations at 2, 4 (also periodic: once) and 5 (the end)


def test_early_stopping_ends_the_run_with_the_best_model(tiny: Fixture, tmp_path: Path) -> None:
    events = Events()
    result = run_training(degrading_config(tiny, tmp_path, max_steps=4, early_stopping_patience=2), events)
    # no evaluation beat the base model's 0.3125: step 1 is the first, step 2 the second without a gain
    assert result.status == "completed" and result.final_step == 2 and result.total_steps == 4
    assert result.model_step == 1
    assert _pass_at_1(tmp_path) == list(enumerate(PASS_AT_1[:3]))
    message, data = events.events[-1]
    assert message == (
        "Stopped early at step 2 of 4: validation pass@1 has not improved for 2 evaluations "
        "(early_stopping_patience 2); the best, 0.312, was at step 0"
    )
    assert data == {"step": 2, "best_step": 0, "eval/pass@1": 0.3125}


def test_a_resumed_run_keeps_its_best_model(tiny: Fixture, tmp_path: Path) -> None:
    straight = run_training(degrading_config(tiny, tmp_path / "straight"))
    paused = run_training(degrading_config(tiny, tmp_path / "resumed"), Events(pause_after=2))
    assert paused.status == "paused" and paused.final_step == 2
    resumed = run_training(degrading_config(tiny, tmp_path / "resumed"))
    # the history came back from the checkpoint: step 1 survived the pruning after the resume
    assert resumed.model_step == straight.model_step == 1
    assert [step for step, _ in list_checkpoints(tmp_path / "resumed")] == [1, 3]
    assert straight.final_adapter_dir is not None and resumed.final_adapter_dir is not None
    assert _same(_adapter(resumed.final_adapter_dir), _adapter(straight.final_adapter_dir))


def test_a_run_resumed_after_it_stalled_stops_without_training(tiny: Fixture, tmp_path: Path) -> None:
    """The stop is a function of the saved history: a worker killed between the checkpoint of the stalling
    evaluation and the end of the run does not train on when the job resumes."""
    paused = run_training(degrading_config(tiny, tmp_path, max_steps=4), Events(pause_after=2))
    assert paused.final_step == 2
    result = run_training(degrading_config(tiny, tmp_path, max_steps=4, early_stopping_patience=2))
    assert result.final_step == 2 and result.model_step == 1


def test_an_old_checkpoint_resumes_with_its_best_evaluation(tiny: Fixture, tmp_path: Path) -> None:
    """Checkpoints written before the history was kept hold `best` = (step, pass@1) only."""
    run_training(degrading_config(tiny, tmp_path, max_steps=4), Events(pause_after=2))
    state_file = checkpoint_path(tmp_path, 2) / "state.pt"
    state = torch.load(state_file, weights_only=True)
    del state["evaluations"]
    torch.save({**state, "best": (1, 0.1875)}, state_file)
    result = run_training(degrading_config(tiny, tmp_path, max_steps=4))
    assert result.final_step == 4 and result.model_step == 1


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"model_selection": "first"}, "model_selection"),
        ({"early_stopping_patience": 0}, "early_stopping_patience"),
        ({"early_stopping_patience": 2, "validation_file": None}, "early_stopping_patience"),
    ],
)
def test_selection_settings_are_checked(
    tiny: Fixture, tmp_path: Path, overrides: dict[str, Any], param: str
) -> None:
    with pytest.raises(ConfigError) as info:
        degrading_config(tiny, tmp_path, **overrides)
    assert info.value.param == param


def test_without_a_validation_file_the_model_is_the_last_step(tiny: Fixture, tmp_path: Path) -> None:
    assert degrading_config(tiny, tmp_path, validation_file=None).model_selection == "last"
    assert degrading_config(tiny, tmp_path).model_selection == "best"
