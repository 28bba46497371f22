"""What grading one sample gives: a reward in [0, 1] plus OpenAI's run metadata."""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# OpenAI's `metadata.errors` flags (GraderRunResponse); a flagged result has reward 0
ERROR_FLAGS = (
    "formula_parse_error",
    "invalid_variable_error",
    "model_grader_parse_error",
    "model_grader_refusal_error",
    "model_grader_server_error",
    "other_error",
    "python_grader_runtime_error",
    "python_grader_server_error",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
)
# the field of OpenAI's `metadata.errors` that carries a flag's details, for the flags that have one
DETAIL_FIELDS = {
    "model_grader_server_error": "model_grader_server_error_details",
    "python_grader_runtime_error": "python_grader_runtime_error_details",
    "python_grader_server_error": "python_grader_server_error_type",
}


def openai_errors(errors: Mapping[str, str]) -> dict[str, bool | str | None]:
    """A result's flags (flag → details) as OpenAI's `metadata.errors`: every flag, then the details."""
    shape: dict[str, bool | str | None] = {flag: flag in errors for flag in ERROR_FLAGS}
    shape |= {field: errors.get(flag) for flag, field in DETAIL_FIELDS.items()}
    return shape


def flags_set(shape: Mapping[str, Any]) -> dict[str, str | None]:
    """OpenAI's `metadata.errors` read back: the flags that are set, each with its details (or None)."""
    return {
        flag: shape.get(DETAIL_FIELDS.get(flag, "")) or None
        for flag in ERROR_FLAGS
        if shape.get(flag) is True
    }


@dataclass
class GradeResult:
    """One sample's grade. `reward` is always a finite float in [0, 1] (0 whenever `errors` has a flag)."""

    reward: float
    errors: dict[str, str] = field(default_factory=dict)  # flag → details ("" when there are none)
    sub_rewards: dict[str, float] = field(default_factory=dict)  # a multi grader's rewards by name
    scores: dict[str, Any] = field(default_factory=dict)  # raw values: a judge's score, a label, a metric
    token_usage: int = 0  # judge tokens (prompt + completion)
    execution_time: float = 0.0  # seconds

    @classmethod
    def failed(cls, flag: str, details: str = "", **extra: Any) -> "GradeResult":
        """Reward 0 with one error flag set."""
        assert flag in ERROR_FLAGS, flag
        return cls(0.0, errors={flag: details}, **extra)

    @property
    def ok(self) -> bool:
        return not self.errors


def clip_reward(value: Any) -> float | None:
    """A grader's raw value as a reward in [0, 1]; None when it is not a finite real number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    if not math.isfinite(number):
        return None
    return min(1.0, max(0.0, number))
