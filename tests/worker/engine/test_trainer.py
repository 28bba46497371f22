import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModel

from grading.result import GradeResult
from worker.engine.algorithms import AdvantageInputs
from worker.engine.callbacks import Control, Level, StartInfo, TrainerCallbacks
from worker.engine.critic import SeparateCritic
from worker.engine.errors import ConfigError, TrainingDivergedError
from worker.engine.fixtures import Fixture
from worker.engine.run import run_training
from worker.engine.trainer import Trainer

from .conftest import tiny_config


class Recorder(TrainerCallbacks):
    def __init__(self, stop_at: int | None = None, signal: Control = "pause") -> None:
        self.steps: list[tuple[int, dict[str, float]]] = []
        self.events: list[tuple[str, str]] = []
        self.starts: list[StartInfo] = []
        self.stop_at, self.signal = stop_at, signal

    def on_start(self, info: StartInfo) -> None:
        self.starts.append(info)

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.steps.append((step, metrics))

    def on_event(self, level: Level, message: str, data: dict[str, Any] | None = None) -> None:
        self.events.append((level, message))

    def control(self) -> Control:
        if self.stop_at is not None and len(self.steps) >= self.stop_at:
            return self.signal
        return "continue"


@pytest.mark.parametrize(
    "overrides",
    [
        {"algorithm": "sppo", "critic": "separate"},
        # the critic takes one step per minibatch; a zero head and zero LoRA B reach LoRA A at the third
        {"algorithm": "sppo", "critic": "shared_lora", "minibatch_size": 2},
        # hot sampling and 8 groups: the shipped model answers consistently, and GRPO moves nothing
        # when every group's rewards are equal
        {"algorithm": "grpo", "batch_size": 8, "group_size": 4, "temperature": 2.0},
        {"algorithm": "ppo", "critic": "separate"},
        {"algorithm": "sppo", "use_lora": False},
        # a bf16 base under autocast around float32 LoRA, head, separate critic and full policy weights
        {"algorithm": "sppo", "critic": "separate", "dtype": "bfloat16"},
        {"algorithm": "sppo", "critic": "shared_lora", "minibatch_size": 2, "dtype": "bfloat16"},
        {"algorithm": "ppo", "critic": "separate", "dtype": "bfloat16"},
        {"algorithm": "sppo", "use_lora": False, "dtype": "bfloat16"},
    ],
    ids=[
        "sppo-separate", "sppo-shared_lora", "grpo", "ppo", "sppo-full",
        "sppo-separate-bf16", "sppo-shared_lora-bf16", "ppo-bf16", "sppo-full-bf16",
    ],
)  # fmt: skip
def test_every_trainable_parameter_changes_in_a_step(
    tiny: Fixture, tmp_path: Path, overrides: dict[str, object]
) -> None:
    trainer = Trainer(tiny_config(tiny, tmp_path, **overrides), TrainerCallbacks())
    params = trainer.opt.actor_params + trainer.opt.critic_params
    before = [p.detach().clone() for p in params]
    metrics = trainer.train_step()
    unchanged = [i for i, (p, b) in enumerate(zip(params, before, strict=True)) if torch.equal(p, b)]
    assert not unchanged, f"{len(unchanged)} of {len(params)} trainable tensors did not change"
    assert metrics["health/unchanged_param_frac"] == 0.0
    if overrides.get("use_lora", True):  # LoRA: the base weights stay frozen
        assert all(not p.requires_grad for n, p in trainer.policy.named_parameters() if "lora_" not in n)


def test_shared_lora_critic_holds_no_second_copy_of_the_base(tiny: Fixture, tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(tiny, tmp_path, critic="shared_lora"), TrainerCallbacks())
    assert trainer.critic is not None
    base_numel = sum(p.numel() for n, p in trainer.policy.named_parameters() if "lora_" not in n)
    critic_numel = sum(
        p.numel() for p in trainer.critic.parameters()
    )  # head only: adapter lives in the policy
    assert critic_numel < 1000 < base_numel
    assert "encoder" not in dict(trainer.critic.named_modules())


def test_a_smaller_separate_critic_is_the_first_layers_of_the_base(tiny: Fixture, tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(tiny, tmp_path, critic_layers=2), TrainerCallbacks())
    assert isinstance(trainer.critic, SeparateCritic)
    base = AutoModel.from_pretrained(tiny.model_dir)
    assert len(base.layers) == 4 and len(trainer.critic.encoder.layers) == 2
    base_weights = base.state_dict()
    for name, tensor in trainer.critic.encoder.state_dict().items():
        assert torch.equal(tensor, base_weights[name]), name
    with pytest.raises(ConfigError, match="has 4 layers") as info:
        Trainer(tiny_config(tiny, tmp_path / "too-deep", critic_layers=5), TrainerCallbacks())
    assert info.value.param == "critic_layers"


def test_run_reports_every_metric_and_evaluates(tiny: Fixture, tmp_path: Path) -> None:
    recorder = Recorder()
    config = tiny_config(tiny, tmp_path, max_steps=2, eval_interval=2, checkpoint_interval=1)
    result = run_training(config, recorder)
    assert result.status == "completed" and result.final_step == 2
    names = [
        "rollout/reward_mean", "rollout/accuracy", "rollout/response_length_mean", "train/policy_loss",
        "train/critic_loss", "train/value_mean", "train/advantage_abs_mean", "train/clipfrac",
        "train/approx_kl", "train/entropy", "train/grad_norm", "train/lr", "perf/samples", "perf/tokens",
        "perf/tokens_per_s", "perf/rollout_s", "perf/train_s", "perf/peak_memory_mb", "perf/elapsed_s",
        "health/zero_adv_frac", "eval/pass@1", "eval/avg@1",
    ]  # fmt: skip
    missing = [name for name in names if name not in recorder.steps[-1][1]]
    assert not missing
    assert result.eval["eval/pass@1"] == recorder.steps[-1][1]["eval/pass@1"]
    assert result.final_adapter_dir is not None
    assert (result.final_adapter_dir / "adapter_model.safetensors").exists()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2]  # step 0: the base model's validation score
    assert "eval/pass@1" in lines[0] and "train/policy_loss" not in lines[0]
    assert recorder.starts[0].total_steps == 2 and recorder.starts[0].start_step == 0


def test_cancel_stops_before_the_next_step(tiny: Fixture, tmp_path: Path) -> None:
    recorder = Recorder(stop_at=2, signal="cancel")  # after step 0 (the base model's score) and step 1
    result = run_training(tiny_config(tiny, tmp_path, max_steps=3, checkpoint_interval=10), recorder)
    assert result.status == "cancelled" and result.final_step == 1
    assert result.checkpoints == []


def test_nan_loss_stops_with_a_clear_error(tiny: Fixture, tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(tiny, tmp_path), TrainerCallbacks())
    # graders never give NaN (a grader's NaN is a flagged 0); NaN rewards stand for any broken arithmetic
    trainer.grade = lambda items, texts: [GradeResult(float("nan")) for _ in items]  # type: ignore[method-assign]
    with pytest.raises(TrainingDivergedError) as info:
        trainer.train_step()
    assert info.value.code == "training_diverged"


def test_base_score_at_step_0_and_about_five_evaluations_by_default(tiny: Fixture, tmp_path: Path) -> None:
    evaluations: list[tuple[int, dict[str, float]]] = []

    class Evaluations(TrainerCallbacks):
        def on_evaluation(self, step: int, scores: dict[str, float]) -> None:
            evaluations.append((step, scores))

    config = tiny_config(tiny, tmp_path, max_steps=3, checkpoint_interval=2)
    config.eval_interval = "auto"
    assert (
        Trainer(
            tiny_config(tiny, tmp_path / "t", max_steps=23, eval_interval="auto"), Evaluations()
        ).eval_interval
        == 4
    )
    run_training(config, Evaluations())
    assert [step for step, _ in evaluations] == [0, 1, 2, 3]  # auto: max(1, 3 // 5) = 1
    # greedy pass@1 at every evaluation; avg@k (k+1 times the cost) at checkpoints and the end only
    names = [sorted(name for name in scores if name.startswith("eval/")) for _, scores in evaluations]
    assert names[:2] == [["eval/pass@1", "eval/reward_mean"]] * 2
    assert {"eval/pass@1", "eval/avg@1"} <= set(evaluations[2][1]) and "eval/avg@1" in evaluations[3][1]


def test_grpo_groups_are_prompt_instances(tiny: Fixture, tmp_path: Path) -> None:
    """An item drawn twice in one batch (a one-item file) makes two groups of N, not one of 2N."""
    one_item = tmp_path / "one.jsonl"
    one_item.write_text(tiny.train_file.read_text().splitlines()[0] + "\n")
    config = tiny_config(
        tiny, tmp_path, algorithm="grpo", train_file=str(one_item), batch_size=2, group_size=2
    )
    trainer = Trainer(config, TrainerCallbacks())
    _, _, rows, group_index = trainer.collect(trainer.sampler.next_batch())
    assert rows == [0, 0, 0, 0] and group_index.tolist() == [0, 0, 1, 1]
    advantages, _ = trainer.algorithm.compute_advantages(
        AdvantageInputs(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.ones(4, 1), group_index)
    )
    assert advantages[:, 0].tolist() == pytest.approx([0.7071, -0.7071, 0.0, 0.0], abs=1e-4)


def test_kl_reference_forward_is_micro_batched_and_retried_on_oom(tiny: Fixture, tmp_path: Path) -> None:
    recorder = Recorder()
    trainer = Trainer(tiny_config(tiny, tmp_path, kl_coef=0.1, micro_batch_tokens=256), recorder)
    reference_shapes: list[tuple[int, int, int]] = []  # (rows, columns, token budget) per reference forward

    def reference_forward(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        lora_off = [m.disable_adapters for m in trainer.policy.modules() if hasattr(m, "lora_A")]
        if lora_off and all(lora_off):
            rows, columns = kwargs["input_ids"].shape
            reference_shapes.append((rows, columns, trainer.update.micro_batch_tokens))
            if len(reference_shapes) == 1:  # the first reference forward runs out of GPU memory
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by the test)")

    handle = trainer.policy.get_base_model().register_forward_pre_hook(reference_forward, with_kwargs=True)
    try:
        metrics = trainer.train_step()
    finally:
        handle.remove()
    assert "train/kl" in metrics and trainer.update.micro_batch_tokens == 128
    assert any("out of GPU memory" in message for _, message in recorder.events)
    assert len(reference_shapes) > 2
    assert all(rows == 1 or rows * columns <= budget for rows, columns, budget in reference_shapes)
