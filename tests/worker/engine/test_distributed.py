"""Two gloo ranks on the same global batch train exactly as one process does.

Live sampling differs between 1 and 2 processes (each rank samples its shard from its own stream), so
these tests replace `generate` with canned responses fixed by each prompt's tokens: the global batch is
then the same however it is sharded, and every difference left is the distributed maths (gathered
rewards and values, global token-mean weights, summed gradients, summed metrics).
"""

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import free_port
from worker.engine import step as step_module
from worker.engine.callbacks import TrainerCallbacks
from worker.engine.config import RunConfig
from worker.engine.distributed import STOP
from worker.engine.fixtures import Fixture
from worker.engine.rollout import Rollout, rollout_from_tokens
from worker.engine.run import run_training

from .conftest import final_weights, tiny_config

# |2 ranks − 1 process| allowed on every logged number: float sums taken in another order, nothing more
TOLERANCE = 1e-5
# on the weights: Adam divides by sqrt(v), which magnifies those last-bit differences where gradients are ~0
WEIGHT_TOLERANCE = 1e-4
STEPS = 3


def canned_generate(policy: Any, prompts: list[list[int]], *, pad_id: int, eos_id: int, **_: Any) -> Rollout:
    """A response of 3-9 digit-ish tokens and EOS per prompt, a function of that prompt's tokens only."""
    responses = []
    for prompt in prompts:
        seed = sum(t * (i + 1) for i, t in enumerate(prompt))
        responses.append([prompt[(seed * (k + 3)) % len(prompt)] for k in range(3 + seed % 7)] + [eos_id])
    device = next(policy.parameters()).device
    return rollout_from_tokens(prompts, responses, pad_id=pad_id, eos_id=eos_id, device=device)


def _rank(rank: int, world_size: int, port: int, config: dict[str, Any]) -> None:
    """One spawned rank: the launcher's `main` without torchrun and without a relay."""
    from worker.engine.launch import exit_rank, follow
    from worker.engine.trainer import Trainer

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), RANK=str(rank),
        LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    step_module.generate = canned_generate  # type: ignore[assignment]
    trainer = Trainer(RunConfig.from_dict(config), TrainerCallbacks())
    if rank == 0:
        trainer.run()
        trainer.dist.command(STOP)
    else:
        follow(trainer)
    torch.distributed.destroy_process_group()
    exit_rank()


def _steps(output_dir: Path) -> list[dict[str, float]]:
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    counted = ("perf/samples", "perf/tokens")  # timings differ; these counts must not
    return [{k: v for k, v in line.items() if not k.startswith("perf/") or k in counted} for line in lines]


@pytest.mark.parametrize(
    "overrides",
    [
        {"algorithm": "sppo"},
        # 4 prompts x 4 samples: a rank holds two whole groups, whose baselines need no other rank
        {"algorithm": "grpo", "batch_size": 4, "group_size": 4},
        # token-level critic: its (B, R) values are gathered across ranks of different widths
        {"algorithm": "ppo"},
        # full fine-tuning: the policy is sharded (FSDP2) instead of replicated
        {"algorithm": "sppo", "use_lora": False, "learning_rate": 3e-5},
        {"algorithm": "grpo", "batch_size": 4, "group_size": 4, "use_lora": False, "learning_rate": 3e-5},
    ],
    ids=["sppo", "grpo", "ppo", "sppo-full", "grpo-full"],
)
def test_two_ranks_match_one_process_on_the_same_global_batch(
    tiny: Fixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any]
) -> None:
    # one minibatch per epoch: 1 and 2 processes then update on the same samples in every optimizer step
    options: dict[str, Any] = {"max_steps": STEPS, "ppo_epochs": 2, "minibatch_size": 16, "batch_size": 16}
    options.update(overrides)
    monkeypatch.setattr(step_module, "generate", canned_generate)
    single = run_training(tiny_config(tiny, tmp_path / "one", validation_file=None, **options))
    config = tiny_config(tiny, tmp_path / "two", validation_file=None, n_devices=2, **options).to_dict()
    Path(config["output_dir"]).mkdir()
    mp.spawn(_rank, args=(2, free_port(), config), nprocs=2, join=True)

    one, two = _steps(tmp_path / "one"), _steps(tmp_path / "two")
    assert [line["step"] for line in two] == list(range(1, STEPS + 1))
    for expected, actual in zip(one, two, strict=True):
        assert expected.keys() == actual.keys()
        for name, value in expected.items():
            assert actual[name] == pytest.approx(value, rel=TOLERANCE, abs=TOLERANCE), name
    assert single.final_adapter_dir is not None
    weights_one, weights_two = (final_weights(tmp_path / run) for run in ("one", "two"))
    assert weights_two.keys() == weights_one.keys()  # the same files, however many ranks wrote them
    for name, tensor in weights_one.items():
        torch.testing.assert_close(weights_two[name], tensor, rtol=0, atol=WEIGHT_TOLERANCE)
