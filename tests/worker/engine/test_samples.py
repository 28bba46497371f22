"""What a step keeps of what the policy wrote: which rows, cut how, and that each step reports them."""

from pathlib import Path
from typing import Any

from worker.engine.callbacks import TrainerCallbacks
from worker.engine.evaluate import completions
from worker.engine.fixtures import Fixture
from worker.engine.run import run_training
from worker.engine.samples import Sample, chosen_rows, keep_samples
from worker.engine.trainer import Trainer

from .conftest import tiny_config


def test_the_best_the_worst_then_the_first_rows_in_batch_order() -> None:
    rewards = [0.5, 0.2, 0.9, 0.2, 0.7, 0.1]
    assert chosen_rows(rewards, 4) == [0, 1, 2, 5]
    assert chosen_rows(rewards, 3) == [0, 2, 5]
    assert chosen_rows(rewards, 2) == [2, 5]
    assert chosen_rows(rewards, 1) == [0]
    assert chosen_rows(rewards, 0) == []
    assert chosen_rows(rewards, 6) == chosen_rows(rewards, 9) == [0, 1, 2, 3, 4, 5]
    assert chosen_rows([1.0, 1.0, 0.0, 0.0], 2) == [0, 2]  # the first row of a tie
    assert chosen_rows([0.3, 0.3, 0.3], 2) == [0, 1]  # all equal: best and worst are one row


def test_kept_text_is_cut_and_says_so_and_only_kept_prompts_are_read() -> None:
    asked: list[int] = []

    def prompt_of(row: int) -> str:
        asked.append(row)
        return f"prompt {row}"

    kept = keep_samples(
        prompt_of,
        ["short", "a long answer", "x", "<script>"],
        [0.0, 1.0, 0.5, 0.25],
        [{"a": 0.0}, {"a": 1.0}, {"a": 0.5}, {"a": 0.25}],
        k=2,
        max_chars=8,
    )
    assert kept == [
        Sample(0, "prompt 0", "short", 0.0, {"a": 0.0}, truncated=False),
        Sample(1, "prompt 1", "a long a", 1.0, {"a": 1.0}, truncated=True),
    ]
    assert asked == [0, 1]
    assert kept[1].to_dict() == {
        "index": 1, "prompt": "prompt 1", "completion": "a long a", "reward": 1.0,
        "sub_rewards": {"a": 1.0}, "truncated": True,
    }  # fmt: skip


def test_a_step_keeps_its_batch_rows_by_the_rule(tiny: Fixture, tmp_path: Path) -> None:
    config = tiny_config(tiny, tmp_path, samples_kept=3, sample_max_chars=12)
    trainer = Trainer(config, TrainerCallbacks())
    rollout, rewards, rows, _ = trainer.collect(trainer.sampler.next_batch())
    texts = completions(trainer.tokenizer, rollout)
    kept = chosen_rows(rewards.tolist(), 3)
    assert [s.index for s in trainer.step_samples] == kept
    assert [s.completion for s in trainer.step_samples] == [texts[i][:12] for i in kept]
    assert [s.prompt for s in trainer.step_samples] == [
        trainer.tokenizer.decode(trainer.prompts[rows[i]], skip_special_tokens=True)[:12] for i in kept
    ]
    assert [s.reward for s in trainer.step_samples] == [rewards[i].item() for i in kept]


class SampleRecorder(TrainerCallbacks):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, Any]] = []

    def on_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        self.calls.append(("on_samples", step, samples))

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.calls.append(("on_step", step, None))


def test_each_step_reports_its_samples_once_before_its_metrics(tiny: Fixture, tmp_path: Path) -> None:
    recorder = SampleRecorder()
    config = tiny_config(tiny, tmp_path, max_steps=2, eval_interval=1, samples_kept=2)
    run_training(config, recorder)
    # step 0 is the base model's evaluation: it samples nothing to train on
    assert [(call, step) for call, step, _ in recorder.calls] == [
        ("on_step", 0), ("on_samples", 1), ("on_step", 1), ("on_samples", 2), ("on_step", 2),
    ]  # fmt: skip
    samples = recorder.calls[1][2]
    assert len(samples) == 2 and set(samples[0]) == {
        "index", "prompt", "completion", "reward", "sub_rewards", "truncated"
    }  # fmt: skip
