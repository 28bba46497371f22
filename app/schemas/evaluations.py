"""Evaluation objects (an extension): score a base model, checkpoint or fine-tuned model on a file."""

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.schemas.common import Metadata, StrictModel
from app.schemas.jobs import JobError
from core.models import Evaluation
from jobspec.graders import Grader


class EvaluationCreate(StrictModel):
    model: str = Field(
        min_length=1, max_length=256, description="Base model, fine-tuned model or checkpoint."
    )
    file: str = Field(min_length=1, max_length=64, description="Id of a fine-tune file with the items.")
    grader: Grader
    samples: int = Field(default=4, ge=1, le=64, description="k of avg@k: sampled completions per item.")
    temperature: float | None = Field(
        default=None,
        ge=0.01,
        le=2,
        description="Sampling temperature for avg@k; default: the model's training temperature "
        "(sppo_defaults.json), so scores agree with the evaluations a training job reports.",
    )
    top_p: float | None = Field(default=None, gt=0, le=1, description="Nucleus sampling; default 1.0.")
    max_response_tokens: int | None = Field(default=None, ge=1, le=32768)
    metadata: Metadata | None = None


class EvaluationPublic(BaseModel):
    id: str
    object: Literal["evaluation"] = "evaluation"
    created_at: int
    finished_at: int | None
    status: str
    model: str
    file: str
    grader: dict[str, Any]
    samples: int
    temperature: float | None  # None until the worker has resolved the model's default
    top_p: float | None = None
    max_response_tokens: int | None
    scores: dict[str, float] | None
    # GET /v1/evaluations/{id}/results: one JSON line per item: prompt, reference, greedy completion and
    # reward, sampled completions and their rewards.
    results_url: str | None
    error: JobError | None
    metadata: dict[str, str] | None

    @classmethod
    def of(cls, evaluation: Evaluation) -> "EvaluationPublic":
        error = None
        if evaluation.error_code is not None:
            error = JobError(code=evaluation.error_code, message=evaluation.error_message or "")
        return cls(
            id=evaluation.id,
            created_at=evaluation.created_at,
            finished_at=evaluation.finished_at,
            status=evaluation.status,
            model=evaluation.model,
            file=evaluation.file_id,
            grader=evaluation.grader,
            samples=evaluation.samples,
            temperature=evaluation.params.get("temperature"),
            top_p=evaluation.params.get("top_p"),
            max_response_tokens=evaluation.params.get("max_response_tokens"),
            scores=evaluation.scores,
            results_url=f"/v1/evaluations/{evaluation.id}/results" if evaluation.result_uri else None,
            error=error,
            metadata=evaluation.metadata_,
        )
