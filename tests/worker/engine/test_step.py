"""One training step (step.py) of the fixture's SPPO run: what the advantage estimator is given."""

import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch

from worker.engine.algorithms import AdvantageInputs
from worker.engine.callbacks import TrainerCallbacks
from worker.engine.fixtures import Fixture
from worker.engine.rollout import Rollout
from worker.engine.trainer import Trainer

from .conftest import tiny_config


def test_an_sppo_baseline_is_read_before_the_critic_has_trained_on_its_sample(
    tiny: Fixture, tmp_path: Path
) -> None:
    """The critic takes one step per minibatch of 4 rows (8 samples); the baselines the estimator gets for
    minibatch k are the critic's values as they were when minibatch k's critic step began, never after
    it: a baseline that has seen its own sample's reward biases A = R − σ(v)."""
    # a critic learning rate that moves the values visibly in one step
    trainer = Trainer(tiny_config(tiny, tmp_path, critic_learning_rate=1e-3), TrainerCallbacks())
    critic, critic_optimizer = trainer.critic, trainer.opt.critic
    assert critic is not None and critic_optimizer is not None
    before_each_step: list[dict[str, torch.Tensor]] = []  # the critic's weights at each optimizer step
    critic_optimizer.register_step_pre_hook(
        lambda *_: before_each_step.append(copy.deepcopy(critic.state_dict()))
    )
    seen: dict[str, Any] = {}
    collect, estimate = trainer.collect, trainer.algorithm.compute_advantages

    def collect_and_keep(item_indices: list[int]) -> tuple[Rollout, torch.Tensor, list[int], torch.Tensor]:
        seen["rollout"], *rest = collect(item_indices)
        return seen["rollout"], *rest  # type: ignore[return-value]

    def estimate_and_keep(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
        seen["values"] = inputs.values.clone()  # type: ignore[union-attr]
        return estimate(inputs)

    trainer.collect = collect_and_keep  # type: ignore[method-assign]
    trainer.algorithm = dataclasses.replace(trainer.algorithm, compute_advantages=estimate_and_keep)
    trainer.train_step()

    rollout: Rollout = seen["rollout"]
    assert len(before_each_step) == 2
    probe = copy.deepcopy(critic)
    for k, weights in enumerate(before_each_step):
        rows = slice(4 * k, 4 * k + 4)
        probe.load_state_dict(weights)
        with torch.no_grad():
            expected = probe(rollout.input_ids[rows], rollout.attention_mask[rows], rollout.prompt_length)
        torch.testing.assert_close(seen["values"][rows], expected, rtol=0, atol=1e-6)
    with torch.no_grad():  # the check has teeth: every value moved in the steps after it was read
        trained = critic(rollout.input_ids, rollout.attention_mask, rollout.prompt_length)
    assert (trained - seen["values"]).abs().min() > 1e-4
