import json
from pathlib import Path

import pytest

from worker.engine.config import RunConfig, model_defaults
from worker.engine.errors import ConfigError
from worker.engine.fixtures import FIXTURE_GRADER, Fixture

GRADER = {
    "type": "string_check",
    "name": "x",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
}


def base(tmp_path: Path) -> dict[str, object]:
    return {"model": str(tmp_path), "train_file": "t.jsonl", "grader": GRADER, "output_dir": str(tmp_path)}


def test_reference_defaults_without_model_defaults(tmp_path: Path) -> None:
    config = RunConfig.from_dict(base(tmp_path))
    assert config.learning_rate == 1e-5  # LoRA: 10x the authors' full-parameter 1e-6
    assert config.clip_epsilon == 0.2
    assert config.samples_per_prompt == 1


def test_fixture_defaults_override_reference_and_job_overrides_both(tiny: Fixture, tmp_path: Path) -> None:
    values = {**base(tmp_path), "model": str(tiny.model_dir), "grader": FIXTURE_GRADER, "batch_size": 8}
    config = RunConfig.from_dict(values)
    assert config.learning_rate == model_defaults(tiny.model_dir)["learning_rate"]
    assert config.batch_size == 8


def test_a_models_defaults_choose_its_precision_and_a_job_overrides_them(tmp_path: Path) -> None:
    (tmp_path / "sppo_defaults.json").write_text(
        json.dumps({"dtype": "float32", "gradient_checkpointing": True, "attn_implementation": "eager"})
    )
    config = RunConfig.from_dict(base(tmp_path))
    assert (config.dtype, config.gradient_checkpointing, config.attn_implementation) == (
        "float32", True, "eager"
    )  # fmt: skip
    job = RunConfig.from_dict({**base(tmp_path), "dtype": "bfloat16", "gradient_checkpointing": "auto"})
    assert (job.dtype, job.gradient_checkpointing) == ("bfloat16", "auto")


def test_yaml_round_trip(tmp_path: Path) -> None:
    config = RunConfig.from_dict({**base(tmp_path), "algorithm": "grpo", "seed": 3})
    config.to_yaml(tmp_path / "run.yaml")
    assert RunConfig.from_yaml(tmp_path / "run.yaml") == config
    assert config.samples_per_prompt == 8


@pytest.mark.parametrize(
    ("change", "samples"),
    [
        ({"compute_multiplier": 2.0}, 2),
        ({"compute_multiplier": 2.5}, 3),  # half up
        ({"compute_multiplier": 0.4}, 1),  # at least one
        ({"algorithm": "grpo", "compute_multiplier": 1.5}, 12),
        ({"algorithm": "grpo", "group_size": 3, "compute_multiplier": 0.5}, 2),
        ({"algorithm": "grpo", "group_size": 3}, 3),
    ],
)
def test_compute_multiplier_scales_the_samples_per_prompt(
    tmp_path: Path, change: dict[str, object], samples: int
) -> None:
    assert RunConfig.from_dict({**base(tmp_path), **change}).samples_per_prompt == samples


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"algorithm": "dpo"}, "algorithm"),
        ({"clip_epsilon": 1.5}, "clip_epsilon"),
        ({"batch_size": 0}, "batch_size"),
        ({"critic": "shared_lora", "use_lora": False}, "critic"),
        ({"critic": "shared_lora", "critic_layers": 2}, "critic_layers"),
        ({"critic_layers": 0}, "critic_layers"),
        ({"algorithm": "grpo", "group_size": 1}, "group_size"),
        ({"algorithm": "grpo", "compute_multiplier": 0.1}, "compute_multiplier"),  # 8 x 0.1: one sample
        ({"compute_multiplier": 0}, "compute_multiplier"),
        ({"learnin_rate": 1.0}, "learnin_rate"),
        ({"kl_coef": 0.05, "use_lora": False}, "kl_coef"),
        ({"rollout_backend": "sglang"}, "rollout_backend"),
        ({"rollout_backend": "vllm", "use_lora": False}, "rollout_backend"),
        ({"rollout_backend": "vllm", "n_devices": 2}, "rollout_backend"),
        ({"rollout_gpu_memory_utilization": 1.0}, "rollout_gpu_memory_utilization"),
        ({"dtype": "float16"}, "dtype"),  # would need loss scaling: not offered
        ({"attn_implementation": "flash_attention_3"}, "attn_implementation"),
        ({"gradient_checkpointing": 1}, "gradient_checkpointing"),
    ],
)
def test_invalid_values_name_the_param(tmp_path: Path, change: dict[str, object], param: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({**base(tmp_path), **change})
    assert info.value.param == param
    assert info.value.code == "invalid_config"


def test_missing_required_field(tmp_path: Path) -> None:
    values = base(tmp_path)
    del values["grader"]
    with pytest.raises(ConfigError, match="grader"):
        RunConfig.from_dict(values)
