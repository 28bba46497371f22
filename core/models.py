"""SQLAlchemy 2 models: the whole schema. Alembic migrations (migrations/) are the only way it is created.

Timestamps are integer unix seconds everywhere (the OpenAI API speaks unix seconds; integers compare the
same on SQLite and PostgreSQL). Every tenant-owned row carries `tenant_id`, and services filter on it.
"""

import enum
import secrets
import time
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints, so migrations can alter them identically on SQLite (batch mode) and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY, PostgreSQL needs BIGINT for long-lived tables.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


def now() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    """A public object id such as `ftjob-3f9c...`: random, so ids leak neither counts nor order."""
    return f"{prefix}-{secrets.token_hex(12)}"


def _same_as_model(context: Any) -> str:
    """A job that continues no parent trains on the model it names."""
    return str(context.get_current_parameters()["model"])


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {int: BigInteger, dict[str, Any]: JSON, list[Any]: JSON}


class JobStatus(enum.StrEnum):
    validating_files = "validating_files"
    queued = "queued"
    running = "running"
    paused = "paused"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


ACTIVE_STATUSES = (JobStatus.validating_files, JobStatus.queued, JobStatus.running)
FINISHED_STATUSES = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("org"))
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[int] = mapped_column(default=now)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("key"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    # sha256 hex of the key; the key itself is shown once and never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[int] = mapped_column(default=now)
    last_used_at: Mapped[int | None]
    revoked_at: Mapped[int | None]


class File(Base):
    __tablename__ = "files"
    __table_args__ = (Index("ix_files_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("file"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(512))  # client's name: metadata only, never a path
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    storage_uri: Mapped[str] = mapped_column(String(1024))  # relative to data_dir, or a URL later
    status: Mapped[str] = mapped_column(String(16), default="processed")
    line_count: Mapped[int] = mapped_column(default=0)
    # Item fields present on every line: grader templates may only reference these.
    item_fields: Mapped[list[Any]] = mapped_column(default=list)
    # Characters of the longest prompt (all message contents of a line): checked against a model's context.
    max_prompt_chars: Mapped[int | None]
    created_at: Mapped[int] = mapped_column(default=now)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_jobs_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("ftjob"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(256))  # as the user sent it (OpenAI's field)
    # Lineage: the registry model the job trains on, and the fine-tuned model or checkpoint whose LoRA
    # adapter it continues (a warm start; NULL: a fresh adapter on `base_model`, which is then `model`).
    base_model: Mapped[str] = mapped_column(String(256), default=_same_as_model)
    parent_model: Mapped[str | None] = mapped_column(String(256))
    # File ids without a foreign key: a finished job keeps naming its file after the file is deleted.
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32), default=JobStatus.queued)
    # Lease and retry bookkeeping, owned by the worker and the reaper (app/services/reaper.py). `attempt`
    # counts runs that ended without progress: a lost worker costs one only when no checkpoint newer than
    # `run_start_step` (where the current run started) was recorded; `worker_losses` counts every loss.
    attempt: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    worker_losses: Mapped[int] = mapped_column(default=0, server_default="0")
    run_start_step: Mapped[int] = mapped_column(default=0, server_default="0")
    heartbeat_at: Mapped[int | None]
    worker_id: Mapped[str | None] = mapped_column(String(128))
    # NULL while queued and not yet handed to the broker (e.g. broker down): re-dispatched later.
    dispatched_at: Mapped[int | None]
    # When the user asked a running job to pause; the worker reads it with its heartbeat, so a pause
    # reaches it when the Redis control key cannot (Redis down, or restarted empty).
    pause_requested_at: Mapped[int | None]
    # Progress.
    current_step: Mapped[int] = mapped_column(default=0)
    total_steps: Mapped[int | None]
    trained_tokens: Mapped[int | None]
    estimated_finish: Mapped[int | None]
    # What the worker is doing right now when the status alone does not say it ("preparing sppo-tiny ...").
    status_detail: Mapped[str | None] = mapped_column(Text)
    # Training-health alarms (worker/alarms.py): one entry per kind, repeats counted, not repeated.
    alarms: Mapped[list[Any] | None]
    # Outcome.
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_param: Mapped[str | None] = mapped_column(String(256))
    fine_tuned_model: Mapped[str | None] = mapped_column(String(256))
    # The step whose checkpoint is the fine-tuned model: the best by validation pass@1, or the last step.
    fine_tuned_model_step: Mapped[int | None]
    result_files: Mapped[list[Any]] = mapped_column(default=list)
    # Request as given, plus what the worker resolved ("auto" and defaults filled in).
    method: Mapped[dict[str, Any]] = mapped_column(default=dict)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    resolved_hyperparameters: Mapped[dict[str, Any] | None]
    seed: Mapped[int]
    suffix: Mapped[str | None] = mapped_column(String(64))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata")
    # Experiment trackers as asked for, minus secrets (jobspec/integrations.py), and those secrets sealed
    # (core/sealing.py) by integration type: never shown, opened only by the worker running the job.
    integrations: Mapped[list[Any] | None]
    sealed_secrets: Mapped[dict[str, Any] | None]
    created_at: Mapped[int] = mapped_column(default=now)
    updated_at: Mapped[int] = mapped_column(default=now, onupdate=now)
    started_at: Mapped[int | None]
    finished_at: Mapped[int | None]


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_seq", "job_id", "seq"),)

    # seq orders events written within the same second; id is the public handle.
    seq: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, default=lambda: new_id("ftevent"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[int] = mapped_column(default=now)
    level: Mapped[str] = mapped_column(String(8), default="info")  # info | warn | error (OpenAI's names)
    type: Mapped[str] = mapped_column(String(16), default="message")  # message | metrics
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None]


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step_number"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("ftckpt"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step_number: Mapped[int]
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(256))
    uri: Mapped[str] = mapped_column(String(1024))  # checkpoint directory (relative to data_dir or a URL)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[int] = mapped_column(default=now)


class MetricPoint(Base):
    """One training step's metrics (names as in INTERFACES: `rollout/reward_mean`, `train/clipfrac`, ...)."""

    __tablename__ = "metric_points"
    __table_args__ = (UniqueConstraint("job_id", "step"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int]
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[int] = mapped_column(default=now)


class TrainingSample(Base):
    """One of a step's kept completions (worker/engine/samples.py: a few per step, each text cut to
    SPPO_SAMPLE_MAX_CHARS). Completions are the model's untrusted text: always escaped when shown."""

    __tablename__ = "training_samples"
    __table_args__ = (UniqueConstraint("job_id", "step", "position"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int]
    position: Mapped[int]  # the row in the step's batch
    prompt: Mapped[str] = mapped_column(Text)
    completion: Mapped[str] = mapped_column(Text)
    reward: Mapped[float]
    sub_rewards: Mapped[dict[str, Any]] = mapped_column(default=dict)
    truncated: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[int] = mapped_column(default=now)


class FineTunedModel(Base):
    __tablename__ = "fine_tuned_models"

    id: Mapped[str] = mapped_column(String(256), primary_key=True)  # e.g. ft:sppo-tiny:org:suffix:job
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    base_model: Mapped[str] = mapped_column(String(256))
    adapter_uri: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[int] = mapped_column(default=now)


class Evaluation(Base):
    __tablename__ = "evaluations"
    __table_args__ = (Index("ix_evaluations_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("eval"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(32), default=JobStatus.queued)
    model: Mapped[str] = mapped_column(String(256))  # base model, fine-tuned model or checkpoint name
    file_id: Mapped[str] = mapped_column(String(64))
    grader: Mapped[dict[str, Any]] = mapped_column(default=dict)
    samples: Mapped[int] = mapped_column(default=1)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)  # temperature, max_response_tokens, ...
    scores: Mapped[dict[str, Any] | None]  # eval/pass@1, eval/avg@k
    result_uri: Mapped[str | None] = mapped_column(String(1024))  # per-item results
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata")
    created_at: Mapped[int] = mapped_column(default=now)
    finished_at: Mapped[int | None]
    # Lease and retry bookkeeping, as for jobs: the reaper requeues a running evaluation that went silent.
    attempt: Mapped[int] = mapped_column(default=0, server_default="0")
    max_attempts: Mapped[int] = mapped_column(default=3, server_default="3")
    heartbeat_at: Mapped[int | None]
    worker_id: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[int | None]
    # When the task was last sent to the broker (NULL: at creation, before migration 0008); a queued
    # evaluation sent long ago whose message the broker no longer holds is sent again (app/services/reaper).
    dispatched_at: Mapped[int | None]


class DashboardSession(Base):
    """A signed-in dashboard session; deleting the row (sign-out) ends it whatever cookie is replayed."""

    __tablename__ = "dashboard_sessions"

    # sha256 hex of the session token the cookie carries, so a database read gives no usable session.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[int] = mapped_column(default=now)
    expires_at: Mapped[int]


class WebhookEndpoint(Base):
    """A tenant's URL that receives terminal job and evaluation events (core/webhooks.py, an extension).

    No secret is stored: an endpoint's signing secret is derived from the operator's key and the endpoint's
    id (core/webhooks.py), so a copy of the database alone cannot forge a delivery.
    """

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("wh"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    created_at: Mapped[int] = mapped_column(default=now)


class WebhookDelivery(Base):
    """An outbox row: one event for one endpoint, written in the transition's transaction, sent by a worker.

    `id` is the event's id and the `webhook-id` header, the same on every attempt, so receivers can
    deduplicate (delivery is at least once).
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("evt"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str] = mapped_column(String(64))  # the job or evaluation the event is about
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[int] = mapped_column(default=now)
    # When the task was last sent to the broker; NULL: due to be sent (app/services/reaper.py).
    dispatched_at: Mapped[int | None]
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(default=now)
    delivered_at: Mapped[int | None]
