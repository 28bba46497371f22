"""Hyperparameter defaults and their resolution: one rule for the API (at job creation) and the engine."""

from typing import Any

from app.schemas.method import ReinforcementHyperparameters
from jobspec.hyperparameters import (
    JOB_FIELDS,
    REFERENCE_DEFAULTS,
    job_values,
    model_defaults_for,
    resolve_defaults,
    resolved_hyperparameters,
)
from worker.engine.config import RunConfig

GRADER = {"type": "string_check", "name": "g", "input": "{{sample.output_text}}", "reference": "x",
          "operation": "eq"}  # fmt: skip
MODEL = {"learning_rate": 3e-4, "batch_size": 64, "algorithms": {"grpo": {"learning_rate": 1e-4}}}


def test_algorithm_section_overrides_the_top_level() -> None:
    assert model_defaults_for(MODEL, "grpo") == {"learning_rate": 1e-4, "batch_size": 64}
    assert model_defaults_for(MODEL, "sppo") == {"learning_rate": 3e-4, "batch_size": 64}


def test_default_batch_is_samples_per_step_for_every_algorithm() -> None:
    assert resolve_defaults(MODEL, {"algorithm": "sppo"})["batch_size"] == 64
    assert resolve_defaults(MODEL, {"algorithm": "grpo"})["batch_size"] == 8  # 8 prompts x 8 samples
    assert resolve_defaults(MODEL, {"algorithm": "grpo", "group_size": 4})["batch_size"] == 16
    # a batch the job sets is prompts, whatever the algorithm
    assert resolve_defaults(MODEL, {"algorithm": "grpo", "batch_size": 64})["batch_size"] == 64
    # rounded down to a multiple of the devices, at least one prompt each
    assert resolve_defaults(MODEL, {"algorithm": "grpo", "group_size": 6, "n_devices": 4})["batch_size"] == 8
    assert resolve_defaults({}, {"algorithm": "grpo", "group_size": 64, "n_devices": 8})["batch_size"] == 8


def test_learning_rate_is_the_algorithms_default_times_the_multiplier() -> None:
    values = job_values({"learning_rate_multiplier": 0.5, "n_epochs": "auto"}, algorithm="grpo",
                        grader=GRADER, model_defaults=MODEL)  # fmt: skip
    assert values == {"learning_rate": 5e-5, "critic_learning_rate": 5e-6, "pass_threshold": 1.0}


def test_resolved_hyperparameters_show_what_the_run_uses() -> None:
    hyper = {"group_size": 4, "reasoning_effort": "low", "critic_learning_rate_multiplier": 2}
    resolved = resolved_hyperparameters(hyper, algorithm="grpo", grader={**GRADER, "pass_threshold": 0.5},
                                        model_defaults=MODEL, has_validation_file=False)  # fmt: skip
    assert set(JOB_FIELDS) <= set(resolved)
    expected = {"batch_size": 16, "group_size": 4, "samples_per_step": 64, "n_epochs": 1,
                "learning_rate": 1e-4, "learning_rate_multiplier": 1.0, "critic_learning_rate": 1e-5,
                "max_response_tokens": 1024, "reasoning_effort": "low", "pass_threshold": 0.5,
                "eval_interval": "auto", "model_selection": "last"}  # fmt: skip
    assert {k: resolved[k] for k in expected} == expected


def test_compute_multiplier_scales_the_samples_per_prompt() -> None:
    assert resolve_defaults(MODEL, {"algorithm": "sppo", "compute_multiplier": 2.5})["batch_size"] == 21
    resolved = resolved_hyperparameters({"compute_multiplier": 1.5}, algorithm="grpo", grader=GRADER,
                                        model_defaults=MODEL, has_validation_file=False)  # fmt: skip
    assert (resolved["group_size"], resolved["batch_size"], resolved["samples_per_step"]) == (12, 5, 60)


def test_every_api_hyperparameter_is_resolved_or_named() -> None:
    """A new API hyperparameter must be an engine field (JOB_FIELDS) or be resolved by name here."""
    by_name = {"learning_rate_multiplier", "critic_learning_rate_multiplier", "reasoning_effort",
               "allow_constant_reward"}  # fmt: skip
    assert set(ReinforcementHyperparameters.model_fields) == set(JOB_FIELDS) | by_name
    assert set(JOB_FIELDS) <= set(RunConfig.model_fields)


def test_engine_config_reads_the_reference_defaults(tmp_path: Any) -> None:
    config = RunConfig.from_dict({"model": str(tmp_path), "train_file": "t", "grader": GRADER,
                                  "output_dir": str(tmp_path), "algorithm": "grpo"})  # fmt: skip
    assert config.batch_size == REFERENCE_DEFAULTS["batch_size"] // 8
    assert config.learning_rate == REFERENCE_DEFAULTS["learning_rate"]
