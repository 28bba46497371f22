"""A run that continues another run's LoRA adapter (RunConfig.init_adapter): it starts where the parent ended
(its step-0 validation score is the parent's final one) and trains that adapter further."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from worker.engine.callbacks import TrainerCallbacks
from worker.engine.errors import ConfigError
from worker.engine.fixtures import FIXTURE_GRADER, Fixture
from worker.engine.run import run_training

from .conftest import final_weights, tiny_config

GREEDY = ("eval/pass@1", "eval/reward_mean")  # greedy completions: no sampling RNG in them


class Evaluations(TrainerCallbacks):
    def __init__(self) -> None:
        self.scores: dict[int, dict[str, float]] = {}

    def on_evaluation(self, step: int, scores: dict[str, float]) -> None:
        self.scores[step] = scores


def test_a_continued_adapter_starts_at_the_parents_final_score(tiny: Fixture, tmp_path: Path) -> None:
    # a rank and alpha that are not the fixture's defaults, and a learning rate that moves the answers
    lora = {"lora_rank": 4, "lora_alpha": 8}
    common = {"grader": FIXTURE_GRADER, "eval_max_items": 16, "model_selection": "last", **lora}
    parent = Evaluations()
    run_training(
        tiny_config(tiny, tmp_path / "parent", max_steps=2, eval_interval=2, learning_rate=3e-3, **common),
        parent,
    )
    parent_adapter = tmp_path / "parent" / "final" / "adapter"
    assert [parent.scores[0][n] for n in GREEDY] != [parent.scores[2][n] for n in GREEDY]  # it learned

    child = Evaluations()
    config = tiny_config(tiny, tmp_path / "child", max_steps=1, init_adapter=str(parent_adapter), **common)
    run_training(config, child)
    assert [child.scores[0][n] for n in GREEDY] == [parent.scores[2][n] for n in GREEDY]

    child_adapter = tmp_path / "child" / "final" / "adapter"
    assert json.loads((child_adapter / "adapter_config.json").read_text())["r"] == 4
    before = load_file(str(parent_adapter / "adapter_model.safetensors"))
    after = final_weights(tmp_path / "child")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[name], after[name]) for name in before)  # trained further


def test_only_a_lora_policy_continues_an_adapter(tiny: Fixture, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        tiny_config(tiny, tmp_path, use_lora=False, init_adapter=str(tmp_path))
    assert caught.value.param == "init_adapter"
