"""The limits of the hyperparameters, written once: what the engine refuses the API refuses at job creation,
so a job it accepts is never failed by the worker for a value out of range."""

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.schemas.method import ReinforcementHyperparameters
from jobspec.hyperparameters import JOB_FIELDS, resolve_defaults
from jobspec.limits import device_share, early_stopping, hyperparameter_refusal
from worker.engine.config import RunConfig

GRADER = {"type": "string_check", "name": "g", "input": "{{sample.output_text}}", "reference": "x",
          "operation": "eq"}  # fmt: skip
# no "auto": the API takes it for "the default", and job_values leaves it out of what reaches the engine
PROBES: tuple[Any, ...] = (-1, 0, 0.005, 0.5, 1, 1.0, 1.5, 2, 8, 5000, 1e309, "x", "8", True, [1])


def engine_refuses(config: RunConfig, name: str, value: Any) -> bool:
    """Whether the field alone refuses the value (a rule joining it to another field is not its limit)."""
    try:
        setattr(config, name, value)
    except ValidationError as exc:
        return any(error["loc"][:1] == (name,) for error in exc.errors())
    return False


def api_refuses(name: str, value: Any) -> bool:
    try:
        ReinforcementHyperparameters.model_validate({name: value})
    except ValidationError:
        return True
    return False


@pytest.mark.parametrize("name", JOB_FIELDS)
def test_what_the_engine_refuses_the_api_refuses(tmp_path: Path, name: str) -> None:
    config = RunConfig.from_dict(
        {"model": str(tmp_path), "train_file": "t", "grader": GRADER, "output_dir": str(tmp_path)}
    )
    refused = [value for value in PROBES if engine_refuses(config, name, value)]
    assert refused, f"no probe tells {name}'s limits"
    assert [value for value in refused if not api_refuses(name, value)] == []


def test_device_share_checks_what_is_resolved() -> None:
    assert device_share({"batch_size": 8, "minibatch_size": "auto"}, 4) is None
    refusal = device_share({"batch_size": 8, "minibatch_size": 6}, 4)
    assert refusal is not None and refusal.param == "minibatch_size"
    assert "6 cannot be shared equally by 4 devices" in refusal.message


def test_early_stopping_needs_a_validation_file() -> None:
    assert early_stopping(None, has_validation_file=False) is None
    assert early_stopping(3, has_validation_file=True) is None
    refusal = early_stopping(3, has_validation_file=False)
    assert refusal is not None and refusal.param == "early_stopping_patience"


@pytest.mark.parametrize(
    ("model_defaults", "job", "param"),
    [
        ({}, {"algorithm": "grpo", "group_size": 1}, "group_size"),
        ({}, {"algorithm": "grpo", "compute_multiplier": 0.1}, "compute_multiplier"),
        ({}, {"critic": "shared_lora", "critic_layers": 2}, "critic_layers"),
        ({}, {"init_adapter": "parent", "use_lora": False}, "init_adapter"),
        ({}, {"n_devices": 2, "batch_size": 8, "minibatch_size": 3}, "minibatch_size"),
        ({}, {"early_stopping_patience": 3}, "early_stopping_patience"),
        ({"use_lora": False}, {"critic": "shared_lora"}, "critic"),  # the model's default makes the conflict
        ({"use_lora": False}, {"kl_coef": 0.05}, "kl_coef"),
        ({"use_lora": False, "kl_coef": 0.05}, {}, "kl_coef"),
    ],
)
def test_hyperparameter_refusal_names_the_field_of_the_first_broken_rule(
    model_defaults: dict[str, Any], job: dict[str, Any], param: str
) -> None:
    refusal = hyperparameter_refusal(resolve_defaults(model_defaults, job), has_validation_file=False)
    assert refusal is not None and refusal.param == param


@pytest.mark.parametrize(
    ("model_defaults", "job"),
    [
        ({}, {}),
        ({}, {"algorithm": "grpo"}),
        ({}, {"algorithm": "grpo", "group_size": 1, "compute_multiplier": 2.0}),
        ({}, {"critic": "shared_lora", "kl_coef": 0.05}),
        ({"critic_layers": 2}, {"critic": "shared_lora"}),  # a model's smaller critic is for a separate one
        ({"use_lora": False}, {"algorithm": "reinforce"}),
    ],
)
def test_hyperparameter_refusal_passes_values_that_agree(
    model_defaults: dict[str, Any], job: dict[str, Any]
) -> None:
    assert hyperparameter_refusal(resolve_defaults(model_defaults, job), has_validation_file=False) is None


def test_a_validation_file_allows_early_stopping() -> None:
    values = resolve_defaults({}, {"early_stopping_patience": 3})
    assert hyperparameter_refusal(values, has_validation_file=True) is None
