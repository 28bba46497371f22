"""The graders API (OpenAI's `fine_tuning.alpha.graders`): validate a grader, run it on one sample."""

from typing import Any

from pydantic import BaseModel, Field

from app.schemas.common import StrictModel
from jobspec.graders import Grader


class GraderValidateRequest(StrictModel):
    grader: Grader


class GraderValidateResponse(BaseModel):
    grader: dict[str, Any]


class GraderRunRequest(StrictModel):
    grader: Grader
    model_sample: str = Field(max_length=1_000_000, description="The completion to grade (`sample`).")
    item: dict[str, Any] = Field(default_factory=dict, description="The data item (`item`).")


class GraderRunErrors(BaseModel):
    formula_parse_error: bool
    invalid_variable_error: bool
    model_grader_parse_error: bool
    model_grader_refusal_error: bool
    model_grader_server_error: bool
    model_grader_server_error_details: str | None
    other_error: bool
    python_grader_runtime_error: bool
    python_grader_runtime_error_details: str | None
    python_grader_server_error: bool
    python_grader_server_error_type: str | None
    sample_parse_error: bool
    truncated_observation_error: bool
    unresponsive_reward_error: bool


class GraderRunMetadata(BaseModel):
    name: str
    type: str
    errors: GraderRunErrors
    execution_time: float
    scores: dict[str, Any]
    token_usage: int | None
    sampled_model_name: str | None


class GraderRunResponse(BaseModel):
    reward: float
    metadata: GraderRunMetadata
    sub_rewards: dict[str, Any]
    model_grader_token_usage_per_model: dict[str, Any]
