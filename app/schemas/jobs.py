"""Fine-tuning job schemas: create request, job, event and checkpoint objects (OpenAI shapes + extensions)."""

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.schemas.common import Metadata, StrictModel
from app.schemas.method import Method
from core.models import Checkpoint, Job, JobEvent
from jobspec.integrations import Integration

MAX_SEED = 2**31 - 1


class JobCreate(StrictModel):
    model: str = Field(min_length=1, max_length=256)
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(default=None, min_length=1, max_length=64)
    method: Method
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    suffix: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    metadata: Metadata | None = None
    # OpenAI's `wandb` integration, and `mlflow` as an extension (jobspec/integrations.py)
    integrations: list[Integration] | None = Field(default=None, max_length=2)


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobHyperparameters(BaseModel):
    n_epochs: int | str | None = None
    batch_size: int | str | None = None
    learning_rate_multiplier: float | str | None = None


class Alarm(BaseModel):
    """A training-health alarm (extension): raised once, later occurrences counted."""

    code: str
    level: Literal["warn", "error"]
    message: str
    count: int
    first_step: int
    last_step: int
    active: bool


class JobPublic(BaseModel):
    """OpenAI's `fine_tuning.job`; `current_step`, `total_steps`, `attempt`, `worker_losses`, `status_detail`,
    `alarms`, `started_at` (first claim by a worker: a duration from it excludes queue time) and
    `fine_tuned_model_step` (the step of the checkpoint that is `fine_tuned_model`) are extensions, and so is
    the lineage: `base_model` (the registry model the job trains on) and `parent_model` (the fine-tuned
    model or checkpoint whose adapter it continues, the `model` it was created with; null for a fresh
    start). `attempt` counts runs that ended without progress (a lost worker after a new checkpoint costs
    none); `worker_losses` counts every lost worker since the job was created or last resumed."""

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    fine_tuned_model_step: int | None = None
    finished_at: int | None
    hyperparameters: JobHyperparameters
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: str
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None
    integrations: list[Any] = []
    metadata: dict[str, str] | None
    method: dict[str, Any]
    user_provided_suffix: str | None
    current_step: int
    total_steps: int | None
    attempt: int
    worker_losses: int = 0
    status_detail: str | None = None
    alarms: list[Alarm] = []
    started_at: int | None = None
    base_model: str | None = None
    parent_model: str | None = None

    @classmethod
    def of(cls, job: Job) -> "JobPublic":
        # Once the worker has resolved "auto" and defaults, show those; until then, what was asked for.
        hyper = job.resolved_hyperparameters or job.hyperparameters
        method = {**job.method, "reinforcement": {**job.method["reinforcement"], "hyperparameters": hyper}}
        error = None
        if job.error_code is not None:
            error = JobError(code=job.error_code, message=job.error_message or "", param=job.error_param)
        return cls(
            id=job.id,
            created_at=job.created_at,
            error=error,
            fine_tuned_model=job.fine_tuned_model,
            fine_tuned_model_step=job.fine_tuned_model_step,
            finished_at=job.finished_at,
            hyperparameters=JobHyperparameters.model_validate(
                {k: hyper.get(k) for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
            ),
            model=job.model,
            organization_id=job.tenant_id,
            result_files=list(job.result_files),
            seed=job.seed,
            status=job.status,
            trained_tokens=job.trained_tokens,
            training_file=job.training_file,
            validation_file=job.validation_file,
            estimated_finish=job.estimated_finish,
            metadata=job.metadata_,
            integrations=list(job.integrations or []),
            method=method,
            user_provided_suffix=job.suffix,
            current_step=job.current_step,
            total_steps=job.total_steps,
            attempt=job.attempt,
            worker_losses=job.worker_losses,
            status_detail=job.status_detail,
            alarms=[Alarm.model_validate(alarm) for alarm in job.alarms or []],
            started_at=job.started_at,
            base_model=job.base_model,
            parent_model=job.parent_model,
        )


class EventPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any] | None

    @classmethod
    def of(cls, event: JobEvent) -> "EventPublic":
        return cls(
            id=event.id,
            created_at=event.created_at,
            level=event.level,
            message=event.message,
            type=event.type,
            data=event.data,
        )


class CheckpointPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, Any]
    step_number: int

    @classmethod
    def of(cls, checkpoint: Checkpoint) -> "CheckpointPublic":
        return cls(
            id=checkpoint.id,
            created_at=checkpoint.created_at,
            fine_tuned_model_checkpoint=checkpoint.fine_tuned_model_checkpoint,
            fine_tuning_job_id=checkpoint.job_id,
            metrics=dict(checkpoint.metrics),
            step_number=checkpoint.step_number,
        )
