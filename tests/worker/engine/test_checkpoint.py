import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from worker.engine import checkpoint
from worker.engine.callbacks import Control, TrainerCallbacks
from worker.engine.errors import CheckpointError
from worker.engine.fixtures import Fixture
from worker.engine.policy import load_base_model
from worker.engine.run import run_training

from .conftest import final_weights, tiny_config


class PauseAfter(TrainerCallbacks):
    def __init__(self, steps: int) -> None:
        self.steps, self.seen = steps, 0

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.seen = step

    def control(self) -> Control:
        return "pause" if self.seen >= self.steps else "continue"


class PauseDuringEvaluation(TrainerCallbacks):
    """Pauses from inside the evaluation that follows step `step` (while its completions generate)."""

    def __init__(self, step: int) -> None:
        self.step, self.seen, self.paused = step, 0, False

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.seen = step

    def control(self) -> Control:
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_name != "evaluate_policy":
            frame = frame.f_back  # type: ignore[assignment]
        if frame is not None and self.seen == self.step - 1 and not self.paused:
            self.paused = True
            return "pause"
        return "continue"


def _metric_lines(output_dir: Path) -> list[dict[str, float]]:
    """metrics.jsonl without the timings, which differ from run to run."""
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if not k.startswith("perf/") or k in COUNTERS} for line in lines]


COUNTERS = ("perf/samples", "perf/tokens")


def _weights(result_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(result_dir / "adapter_model.safetensors"))


def test_resume_is_exact(tiny: Fixture, tmp_path: Path) -> None:
    """4 steps straight == 2 steps, pause (checkpoint), resume, 2 more steps."""
    options: dict[str, Any] = {
        "max_steps": 4,
        "checkpoint_interval": 2,
        "eval_interval": 2,
        "eval_max_items": 4,
    }
    straight = run_training(tiny_config(tiny, tmp_path / "straight", **options))
    paused = run_training(tiny_config(tiny, tmp_path / "resumed", **options), PauseAfter(2))
    assert paused.status == "paused" and paused.final_step == 2
    resumed = run_training(tiny_config(tiny, tmp_path / "resumed", **options))
    assert resumed.status == "completed" and resumed.final_step == 4
    assert straight.final_adapter_dir is not None and resumed.final_adapter_dir is not None
    expected, actual = _weights(straight.final_adapter_dir), _weights(resumed.final_adapter_dir)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-6, rtol=0)
    critic_a = torch.load(straight.checkpoints[-1] / "critic.pt", weights_only=True)["weights"]
    critic_b = torch.load(resumed.checkpoints[-1] / "critic.pt", weights_only=True)["weights"]
    for name in critic_a:
        torch.testing.assert_close(critic_b[name], critic_a[name], atol=1e-6, rtol=0)
    assert straight.metrics["rollout/reward_mean"] == resumed.metrics["rollout/reward_mean"]
    assert straight.eval == resumed.eval


@pytest.mark.parametrize("use_lora", [True, False], ids=["lora", "full"])
def test_resume_is_exact_in_bf16(tiny: Fixture, tmp_path: Path, use_lora: bool) -> None:
    """bf16 forwards around float32 trained weights: 4 steps straight == 2 steps, pause, resume, 2 more,
    bit for bit (the frozen bf16 base is reloaded from the model as it was; the trained float32 state
    comes back from the checkpoint)."""
    options: dict[str, Any] = {"max_steps": 4, "checkpoint_interval": 2, "eval_interval": 2,
                               "eval_max_items": 4, "dtype": "bfloat16", "use_lora": use_lora}  # fmt: skip
    straight = run_training(tiny_config(tiny, tmp_path / "straight", **options))
    paused = run_training(tiny_config(tiny, tmp_path / "resumed", **options), PauseAfter(2))
    assert paused.status == "paused" and paused.final_step == 2
    resumed = run_training(tiny_config(tiny, tmp_path / "resumed", **options))
    assert resumed.status == "completed" and resumed.final_step == 4
    expected, actual = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert expected.keys() == actual.keys()
    assert {tensor.dtype for tensor in actual.values()} == {torch.float32}
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name
    critic_a = torch.load(straight.checkpoints[-1] / "critic.pt", weights_only=True)["weights"]
    critic_b = torch.load(resumed.checkpoints[-1] / "critic.pt", weights_only=True)["weights"]
    for name in critic_a:
        assert torch.equal(critic_b[name], critic_a[name]), name
    assert _metric_lines(tmp_path / "resumed") == _metric_lines(tmp_path / "straight")


def test_pause_during_an_evaluation_resumes_exactly(tiny: Fixture, tmp_path: Path) -> None:
    """3 steps straight == 2 steps, a pause while step 2's evaluation generates, resume, 1 more step:
    the same weights, critic, and metrics lines (step 2's included, with its evaluation)."""
    options: dict[str, Any] = {
        "max_steps": 3,
        "checkpoint_interval": 1,
        "eval_interval": 2,
        "eval_max_items": 4,
        "max_response_tokens": 48,
    }
    straight = run_training(tiny_config(tiny, tmp_path / "straight", **options))
    pauser = PauseDuringEvaluation(step=2)
    paused = run_training(tiny_config(tiny, tmp_path / "resumed", **options), pauser)
    assert pauser.paused and paused.status == "paused" and paused.final_step == 2
    resumed = run_training(tiny_config(tiny, tmp_path / "resumed", **options))
    assert resumed.status == "completed" and resumed.final_step == 3
    assert straight.final_adapter_dir is not None and resumed.final_adapter_dir is not None
    expected, actual = _weights(straight.final_adapter_dir), _weights(resumed.final_adapter_dir)
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name
    critic_a = torch.load(straight.checkpoints[-1] / "critic.pt", weights_only=False)["weights"]
    critic_b = torch.load(resumed.checkpoints[-1] / "critic.pt", weights_only=False)["weights"]
    for name in critic_a:
        assert torch.equal(critic_b[name], critic_a[name]), name
    assert _metric_lines(tmp_path / "resumed") == _metric_lines(tmp_path / "straight")
    assert [line["step"] for line in _metric_lines(tmp_path / "straight")] == [0, 1, 2, 3]


def test_crash_mid_save_keeps_the_previous_checkpoint(
    tiny: Fixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config(tiny, tmp_path, max_steps=1, checkpoint_interval=1, keep_checkpoints=1)
    first = run_training(config)
    [(step, path)] = checkpoint.list_checkpoints(tmp_path)
    assert step == 1 and first.checkpoints == [path]
    before = {p.name: p.read_bytes() for p in path.rglob("*") if p.is_file()}

    real_save = torch.save

    def crash_on_trainer_state(obj: object, target: Path) -> None:
        if Path(target).name == "state.pt":
            raise OSError("disk full")
        real_save(obj, target)

    monkeypatch.setattr(checkpoint.torch, "save", crash_on_trainer_state)
    with pytest.raises(OSError, match="disk full"):
        run_training(tiny_config(tiny, tmp_path, max_steps=2, checkpoint_interval=1, keep_checkpoints=1))
    monkeypatch.undo()
    assert checkpoint.list_checkpoints(tmp_path) == [(1, path)]  # the half-written step 2 is invisible
    assert {p.name: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before
    assert list((tmp_path / "checkpoints").glob(".tmp-*"))
    resumed = run_training(
        tiny_config(tiny, tmp_path, max_steps=2, checkpoint_interval=1, keep_checkpoints=1)
    )
    assert resumed.status == "completed" and resumed.final_step == 2
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    # keep_checkpoints=1 keeps step 2, and step 1 too if it is still the best by validation score
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)][-1] == 2


def test_prune_keeps_last_k_and_best(tmp_path: Path) -> None:
    for step in range(1, 6):
        (tmp_path / "checkpoints" / f"step-{step:06d}").mkdir(parents=True)
    checkpoint.prune(tmp_path, keep_last=2, best_step=2)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [2, 4, 5]


class Payload:
    """An arbitrary object: unpickling it with weights_only=False would call `__reduce__`'s function."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("code ran while loading a checkpoint",))


def test_a_checkpoint_holding_a_pickled_object_is_refused(tiny: Fixture, tmp_path: Path) -> None:
    run_training(tiny_config(tiny, tmp_path, max_steps=1, checkpoint_interval=1))
    [(_, path)] = checkpoint.list_checkpoints(tmp_path)
    state = torch.load(path / "state.pt", weights_only=True)  # what the engine writes loads safely
    torch.save({**state, "sampler": Payload()}, path / "state.pt")
    with pytest.raises(CheckpointError, match="objects other than tensors"):
        run_training(tiny_config(tiny, tmp_path, max_steps=2, checkpoint_interval=1))


def test_weights_of_another_model_are_refused_not_silently_skipped(tiny: Fixture, tmp_path: Path) -> None:
    full = {"use_lora": False, "learning_rate": 3e-5, "checkpoint_interval": 1, "validation_file": None}
    run_training(tiny_config(tiny, tmp_path, max_steps=1, **full))
    [(_, path)] = checkpoint.list_checkpoints(tmp_path)
    weights = load_file(str(path / "model" / "model.safetensors"))
    weights["model.norm.scale"] = weights.pop("model.norm.weight")  # another architecture's name
    save_file(weights, str(path / "model" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="do not fit the model"):
        run_training(tiny_config(tiny, tmp_path, max_steps=2, **full))


def test_model_weights_reads_a_save_pretrained_folder_split_in_shards(tiny: Fixture, tmp_path: Path) -> None:
    model = load_base_model(tiny.model_dir, torch.device("cpu"))
    model.save_pretrained(tmp_path / "model", max_shard_size="1MB")  # the 3 MB fixture in several files
    assert (tmp_path / "model" / "model.safetensors.index.json").exists()
    loaded = checkpoint.model_weights(tmp_path / "model")
    expected = model.state_dict()
    assert set(loaded) == set(expected) - checkpoint.tied_names(model)
    for name, tensor in loaded.items():
        assert tensor.equal(expected[name]), name
