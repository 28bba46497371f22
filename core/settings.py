"""The one settings object, read by the API, Alembic, the CLI, the Celery worker and the model server (env
prefix `SPPO_`). One class per concern; `Settings` composes them and holds the rules that tie two together.
"""

from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

import fsspec
from fsspec.core import split_protocol
from pydantic import Field, RedisDsn, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

_SUPPORTED_DRIVERS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg", "postgresql+psycopg": None}


class StorageSettings(BaseSettings):
    """Where this host's files and the artifacts live, and the model registry."""

    data_dir: Path = Field(
        default=Path(".sppo"),
        description="This host's files: the SQLite DB, logs and local copies of artifacts (the artifacts "
        "themselves unless artifact_store is set).",
    )
    artifact_store: str | None = Field(
        default=None,
        description="Where uploads, checkpoints and adapters are stored, as a URI: unset (or data_dir) "
        "keeps them in data_dir; an fsspec URL (s3://bucket/prefix with the `s3` extra, "
        "file:///srv/artifacts) lets workers on other hosts reach them without a shared disk.",
    )
    model_registry_dir: Path | None = Field(
        default=None,
        description="Directory of HF model folders (each with a config.json); default: data_dir/models.",
    )

    @field_validator("data_dir", "model_registry_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Resolve once, so a later chdir (uvicorn reload, Celery) cannot silently move the data.
        return None if value is None else value.expanduser().resolve()

    @field_validator("data_dir")
    @classmethod
    def _a_directory(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError(f"SPPO_DATA_DIR {value} exists and is not a directory")
        return value

    @field_validator("artifact_store")
    @classmethod
    def _known_store(cls, value: str | None) -> str | None:
        # Fail at start-up, not at the first upload, on a typo or a backend that is not installed.
        if value is None:
            return None
        protocol = split_protocol(value)[0]
        try:
            fsspec.get_filesystem_class(protocol or "file")
        except ImportError as exc:  # e.g. "Install s3fs to access S3"
            hint = "pip install 'sppo-service[s3]'"
            raise ValueError(f"SPPO_ARTIFACT_STORE {value!r}: {exc} ({hint})") from None
        except ValueError as exc:
            raise ValueError(f"SPPO_ARTIFACT_STORE {value!r}: {exc}") from None
        return value

    @property
    def jobs_dir(self) -> Path:
        """Per-job working directories: engine checkpoints, final adapters, evaluation results."""
        return self.data_dir / "jobs"

    @property
    def registry_dir(self) -> Path:
        return self.model_registry_dir or self.data_dir / "models"


class DatabaseSettings(BaseSettings):
    """The database and the connections to it (the default database is a file under data_dir)."""

    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL (sqlite or postgresql); default: a SQLite file under data_dir. "
        "Secret because a PostgreSQL URL may carry a password.",
    )
    db_pool_size: int = Field(default=10, ge=1, description="DB connections each API process keeps open.")
    db_max_overflow: int = Field(default=10, ge=0, description="Extra DB connections opened under load.")
    db_pool_timeout_s: float = Field(
        default=3.0, gt=0, description="Longest wait for a DB connection before answering 503."
    )
    db_retry_s: float = Field(
        default=120.0,
        gt=0,
        description="How long a worker retries its DB writes through dropped connections before it gives "
        "the job up to the reaper (a flaky database delays a job, it never fails it).",
    )

    @property
    def db_url(self) -> str:
        """The database URL in plain text (for engines; never log it, use `safe_db_url`)."""
        assert self.database_url is not None  # filled by Settings' validator
        return self.database_url.get_secret_value()

    @property
    def safe_db_url(self) -> str:
        return make_url(self.db_url).render_as_string(hide_password=True)


class RedisSettings(BaseSettings):
    """Redis: the Celery broker, control keys and the live metrics streams."""

    redis_url: RedisDsn = Field(
        default=RedisDsn("redis://127.0.0.1:6379/0"), description="Celery broker and control/metrics store."
    )
    redis_prefix: str = Field(
        default="sppo",
        pattern=r"^[A-Za-z0-9_.-]{1,32}$",
        description="Prefix of every Redis key and Celery queue, so several installs can share one Redis.",
    )
    stream_tail_records: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Records a live metrics stream sends first to a subscriber that names no id to start "
        "after (no Last-Event-ID or `from`): the newest ones, then each new step.",
    )


class ApiServerSettings(BaseSettings):
    """The API server: address, processes, and how much work one process takes on at once (issue 13: sized
    together with the DB pool so that a burst slows the API down, never wedges it; see Settings)."""

    host: str = Field(default="127.0.0.1", description="Address `sppo serve` binds to.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port `sppo serve` listens on.")
    api_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Processes of `sppo serve` (uvicorn workers) on one port; about one per core the API "
        "may use. Each has its own DB pool (db_pool_size + db_max_overflow connections).",
    )
    api_max_in_flight: int = Field(
        default=16,
        ge=1,
        description="Requests an API process works on at once; the rest wait in line. At most the pool "
        "(size + overflow) less 2 (the reaper, stream status checks), so a request never waits for a "
        "connection while holding a thread another request needs.",
    )
    api_queue_timeout_s: float = Field(
        default=5.0, gt=0, description="Longest wait in line before a request is answered 503 + Retry-After."
    )
    thread_pool_size: int = Field(
        default=40, ge=1, description="Worker threads for sync routes; at least api_max_in_flight."
    )
    auth_cache_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="How long an API process trusts an API key it has checked, without asking the DB "
        "again; a revoked key is refused within this time. 0: every request asks the DB.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Time a client has to send a whole request head (app/http_protocol.py); then 408.",
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="Time a client has to send a request body (plus the rate allowance)."
    )
    min_body_rate_bytes_s: int = Field(
        default=64 * 1024,
        gt=0,
        description="Upload speed allowance: a body may take body_timeout_s plus "
        "its size at this rate; a slower sender is cut off with 408.",
    )
    shutdown_drain_s: int = Field(
        default=3, ge=0, description="On SIGTERM, how long open requests and streams may take to finish."
    )
    reaper_interval_s: float = Field(
        default=5.0, gt=0, description="How often the API looks for lost work and undelivered tasks."
    )


class SecuritySettings(BaseSettings):
    """Per-key rate limits and quotas (app/throttle.py, shared by all API processes through Redis; 0 turns a
    limit off), request sizes, and dashboard sessions behind a TLS-terminating proxy."""

    max_upload_bytes: int = Field(
        default=512 * 1024 * 1024, gt=0, description="Largest accepted file upload."
    )
    max_json_body_bytes: int = Field(
        default=1024 * 1024, gt=0, description="Largest JSON (or form) body of any request but an upload."
    )
    max_concurrent_jobs_per_tenant: int = Field(
        default=4, ge=1, description="Queued plus running jobs a tenant may have at once."
    )
    rate_limit_requests_per_second: int = Field(
        default=300, ge=0, description="Requests one key (or dashboard session) may make per second."
    )
    rate_limit_requests_per_minute: int = Field(
        default=12000, ge=0, description="Requests one key (or dashboard session) may make per minute."
    )
    rate_limit_uploads_per_hour: int = Field(default=300, ge=0, description="File uploads per key per hour.")
    rate_limit_evaluations_per_hour: int = Field(
        default=300, ge=0, description="Evaluations one key may create per hour."
    )
    rate_limit_grader_runs_per_minute: int = Field(
        default=120,
        ge=0,
        description="POST /v1/fine_tuning/alpha/graders/run calls one key may make a minute.",
    )
    rate_limit_streams: int = Field(
        default=32, ge=0, description="Live metric streams (SSE) one key may hold open at once."
    )
    session_secret: SecretStr | None = Field(
        default=None,
        description="Key that signs dashboard session cookies; default: a random one kept in "
        "data_dir/session-secret (0600), so sessions survive restarts of a single-machine install.",
    )
    session_cookie_secure: bool | None = Field(
        default=None,
        description="Mark the session cookie Secure and send HSTS: true behind a TLS proxy, false never; "
        "default: when the request's scheme is https.",
    )
    forwarded_allow_ips: str | None = Field(
        default=None,
        description="Proxy addresses (comma-separated, or *) whose X-Forwarded-Proto/-For `sppo serve` "
        "trusts; default: none, so a client cannot claim https or another address.",
    )

    @field_validator("session_secret")
    @classmethod
    def _long_session_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("SPPO_SESSION_SECRET must be at least 32 characters")
        return value


class WorkerSettings(BaseSettings):
    """Training workers: devices, the job lease, rollouts, preflight, alarms and kept samples."""

    device: str | None = Field(
        default=None, description="Worker device (cpu, cuda, cuda:1, mps); default: cuda when available."
    )
    training_device_counts: list[int] = Field(
        default=[1],
        min_length=1,
        description="Device counts the deployment's training workers offer (JSON list, e.g. [1, 2]): a job "
        "asking for another n_devices is refused at creation, since no worker would ever take it.",
    )
    worker_devices: int = Field(
        default=1, ge=1, description="Devices this worker offers one job (`sppo worker --devices`)."
    )
    heartbeat_interval_s: float = Field(
        default=3.0,
        gt=0,
        description="How often a worker writes its running job's or evaluation's heartbeat.",
    )
    heartbeat_lease_s: int = Field(
        default=30,
        ge=2,
        description="A running job or evaluation whose heartbeat is older than this is presumed lost and "
        "requeued (a killed worker's work restarts within about the lease plus one reaper interval).",
    )
    max_worker_losses: int = Field(
        default=20,
        ge=1,
        description="Worker losses a job survives in all. A loss costs one of the job's attempts only when "
        "no new checkpoint was recorded since its run started, so this caps a job that keeps moving but "
        "keeps losing its worker (a leak, a flapping node); the next loss fails it with worker_lost, "
        "which `resume` continues from the last checkpoint.",
    )
    rollout_backend: str = Field(
        default="hf",
        pattern="^(hf|vllm)$",
        description="What samples a training job's rollouts on this worker: hf (transformers generate) or "
        "vllm (GPU, the optional `vllm` extra; LoRA jobs on one device).",
    )
    rollout_gpu_memory_utilization: float = Field(
        default=0.3, gt=0, lt=1, description="With rollout_backend vllm: the GPU memory share of its engine."
    )
    preflight_items: int = Field(
        default=64, ge=1, description="Training items the base model is scored on before a job trains."
    )
    alarm_window_steps: int = Field(
        default=5,
        ge=2,
        description="Steps of identical all-0 or all-1 reward that raise a constant-reward alarm.",
    )
    samples_kept_per_step: int = Field(
        default=4,
        ge=0,
        le=64,
        description="Completions kept per training step for the samples API and the job page: the batch's "
        "best and worst rewards, then its first rows (0: none).",
    )
    sample_max_chars: int = Field(
        default=2000,
        ge=1,
        le=100_000,
        description="A kept prompt or completion longer than this many characters is stored cut to it "
        "(and marked truncated).",
    )

    @field_validator("training_device_counts")
    @classmethod
    def _device_counts(cls, counts: list[int]) -> list[int]:
        if any(n < 1 for n in counts):
            raise ValueError("SPPO_TRAINING_DEVICE_COUNTS must list device counts >= 1")
        return sorted(set(counts))

    @model_validator(mode="after")
    def _check_lease(self) -> Self:
        # A lease shorter than two heartbeats would requeue healthy jobs.
        if self.heartbeat_lease_s < 2 * self.heartbeat_interval_s:
            raise ValueError("SPPO_HEARTBEAT_LEASE_S must be at least twice SPPO_HEARTBEAT_INTERVAL_S")
        return self


class InferenceSettings(BaseSettings):
    """The model server `sppo serve-models` and the API's proxy to it."""

    inference_url: str = Field(
        default="http://127.0.0.1:8001", description="Where the API finds `sppo serve-models`."
    )
    inference_host: str = Field(
        default="127.0.0.1",
        description="Address `sppo serve-models` binds to (0.0.0.0 in docker-compose.yml, where the model "
        "server has a container of its own).",
    )
    inference_port: int = Field(default=8001, ge=1, le=65535, description="Port `sppo serve-models` binds.")
    inference_secret: SecretStr | None = Field(
        default=None,
        description="The shared secret (32+ characters) the API and the workers' graders show the model "
        "server, which answers 401 to any other caller and refuses to start without one; set the same "
        "value for all of them. `sppo run` draws one per run when unset.",
    )
    inference_allow_no_secret: bool = Field(
        default=False,
        description="Development only: let `sppo serve-models` start without SPPO_INFERENCE_SECRET, on a "
        "loopback address, answering any local process with any tenant's adapter.",
    )
    inference_backend: str = Field(
        default="transformers",
        pattern="^(transformers|vllm)$",
        description="transformers (CPU or GPU) or vllm (GPU, the optional `vllm` extra).",
    )
    inference_device: str = Field(default="cpu", description="Device of the transformers backend.")
    inference_max_batch_size: int = Field(
        default=16, ge=1, description="Sequences decoded together in one batch (1: one at a time)."
    )
    inference_batch_wait_ms: float = Field(
        default=5.0, ge=0, description="How long the batcher waits for more requests before a batch starts."
    )
    inference_max_pending: int = Field(
        default=64, ge=1, description="Requests waiting for a batch; beyond it the service answers 429."
    )
    inference_max_adapters: int = Field(
        default=8, ge=1, description="LoRA adapters kept loaded per base model (least recently used leave)."
    )
    inference_max_base_models: int = Field(default=2, ge=1, description="Base models kept loaded.")
    inference_max_n: int = Field(
        default=16,
        ge=1,
        description="Largest `n` (choices per request), checked by the API and again by the model server.",
    )
    inference_max_request_bytes: int = Field(
        default=1024 * 1024, gt=0, description="Largest chat/completions request body."
    )
    inference_timeout_s: float = Field(
        default=300.0, gt=0, description="How long the API waits on the model server for a whole answer."
    )

    @field_validator("inference_secret")
    @classmethod
    def _long_inference_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("SPPO_INFERENCE_SECRET must be at least 32 characters")
        return value


class GraderSettings(BaseSettings):
    """Graders (docs/graders.md): the Python sandbox, model judges and embeddings."""

    python_grader_sandbox: Literal["bwrap", "none"] = Field(
        default="bwrap",
        description="How Python graders are contained: bwrap (bubblewrap: no network, a read-only minimal "
        "filesystem, CPU/memory/process/output limits) or none — the same limits without the sandbox, ONLY "
        "for a trusted single-tenant install. Without bubblewrap, jobs with Python graders fail before "
        "their first step (python_grader_unavailable).",
    )
    python_grader_pool_size: int = Field(
        default=2, ge=1, le=64, description="Warm sandboxes that grade one job's samples in parallel."
    )
    python_grader_cpu_s: float = Field(default=2.0, gt=0, le=60, description="CPU seconds per grader call.")
    python_grader_wall_s: float = Field(
        default=5.0, gt=0, le=120, description="Wall seconds per grader call."
    )
    python_grader_memory_mb: int = Field(default=512, ge=64, le=16384, description="Memory per grader call.")
    judge_base_url: str | None = Field(
        default=None,
        description="An OpenAI-compatible endpoint (e.g. https://api.openai.com/v1) for score_model and "
        "label_model judges that are not models of this service; unset: only this service's models judge.",
    )
    judge_api_key: SecretStr | None = Field(default=None, description="Bearer key for judge_base_url.")
    judge_allowed_models: list[str] = Field(
        default=[],
        description='The models of judge_base_url tenants may name (JSON list, e.g. ["gpt-4.1-mini"]); '
        "empty: any. Every call is paid with the operator's key.",
    )
    judge_timeout_s: float = Field(default=60.0, gt=0, le=600, description="Timeout of one judge call.")
    judge_concurrency: int = Field(default=8, ge=1, le=256, description="Judge calls in flight per grader.")
    grader_embeddings_model: str | None = Field(
        default=None,
        description="The embeddings model of text_similarity `cosine`: a registry model served by the model "
        "server (mean-pooled hidden states), or, with grader_embeddings_url, a model of that endpoint.",
    )
    grader_embeddings_url: str | None = Field(
        default=None,
        description="An OpenAI-compatible endpoint for grader_embeddings_model (key: judge_api_key); unset: "
        "this service's model server.",
    )
    grader_runs_concurrency: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Grader runs (POST /v1/fine_tuning/alpha/graders/run, the dashboard's test) one API "
        "process grades at once; more are answered 429 with Retry-After, so slow graders never hold every "
        "thread.",
    )


class WebhookSettings(BaseSettings):
    """Webhooks (docs/api.md#webhooks): terminal job and evaluation events, signed as OpenAI signs them."""

    webhook_signing_key: SecretStr | None = Field(
        default=None,
        description="Operator key every endpoint's signing secret is derived from (HMAC of the endpoint id), "
        "so the database holds no secret; the API (which shows a secret once) and the workers (which sign) "
        "need the same value. Default: a random one kept in data_dir/webhook-key (0600), enough where they "
        "share data_dir (`sppo run`). Changing it changes every endpoint's secret.",
    )
    webhook_allow_http: bool = Field(
        default=False,
        description="Development only: accept http:// webhook URLs (otherwise https:// only).",
    )
    webhook_allow_private_addresses: bool = Field(
        default=False,
        description="Let webhooks reach loopback, private and link-local addresses (otherwise refused at "
        "registration and again at every delivery, so a tenant cannot aim the workers at internal services).",
    )
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=60, description="Timeout of one delivery attempt.")
    webhook_max_attempts: int = Field(
        default=8, ge=1, le=32, description="Delivery attempts per event before it is recorded as failed."
    )
    webhook_retry_base_s: float = Field(
        default=5.0,
        gt=0,
        description="Backoff before the second attempt; it doubles with every further attempt (capped at "
        "an hour).",
    )


class TrackerSettings(BaseSettings):
    """Experiment trackers (docs/trackers.md): a job's `integrations` log its run to W&B or MLflow."""

    wandb_api_key: SecretStr | None = Field(
        default=None,
        description="The operator's W&B API key, used for jobs whose wandb integration brings no api_key "
        "of its own; without either a wandb integration is refused (unless wandb_mode is offline).",
    )
    wandb_mode: Literal["online", "offline"] = Field(
        default="online",
        description="offline: W&B runs are written under data_dir/trackers/<job id> only (air-gapped "
        "hosts; `wandb sync` uploads them later) and need no key.",
    )
    mlflow_tracking_uris: list[str] = Field(
        default_factory=list,
        description="The http(s) MLflow tracking servers jobs may log to (a request cannot name any other, "
        "so no tenant makes a worker write files or reach internal hosts); the first is the default. "
        "Empty: mlflow integrations are refused.",
    )
    mlflow_tracking_token: SecretStr | None = Field(
        default=None, description="Bearer token sent to the MLflow servers (those behind authentication)."
    )
    tracker_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="Timeout of one call to a tracker's server; a tracker that fails or falls behind is "
        "turned off for the rest of the run (an event and an alarm), never failing or slowing the job.",
    )
    secrets_key: SecretStr | None = Field(
        default=None,
        description="Operator key that seals the secrets tenants give with a job (a W&B api_key) in the "
        "database; the API and every worker need the same value. Default: a random one kept in "
        "data_dir/secrets-key (0600), enough where they share data_dir (`sppo run`).",
    )


class LogSettings(BaseSettings):
    """Logs of the API and the workers."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level of the API and the workers."
    )
    log_format: Literal["console", "json"] = Field(
        default="console",
        description="console: human-readable lines (`make run`); json: one JSON object per line carrying "
        "request_id, tenant_id and job_id (docker-compose.yml sets it).",
    )


class Settings(
    StorageSettings,
    DatabaseSettings,
    RedisSettings,
    ApiServerSettings,
    SecuritySettings,
    WorkerSettings,
    InferenceSettings,
    GraderSettings,
    WebhookSettings,
    TrackerSettings,
    LogSettings,
):
    """Service configuration; every field can be set as `SPPO_<NAME>` in the environment or a `.env` file."""

    model_config = SettingsConfigDict(env_prefix="SPPO_", env_file=".env", extra="ignore")

    @model_validator(mode="after")
    def _check_database_url(self) -> Self:
        if self.database_url is None:
            self.database_url = SecretStr(f"sqlite:///{self.data_dir / 'sppo.db'}")
        self.database_url = SecretStr(normalize_database_url(self.database_url.get_secret_value()))
        return self

    @model_validator(mode="after")
    def _check_capacity(self) -> Self:
        if self.api_max_in_flight > self.db_pool_size + self.db_max_overflow - 2:
            raise ValueError(
                "SPPO_API_MAX_IN_FLIGHT must be at most SPPO_DB_POOL_SIZE + SPPO_DB_MAX_OVERFLOW - 2"
            )
        if self.thread_pool_size < self.api_max_in_flight:
            raise ValueError("SPPO_THREAD_POOL_SIZE must be at least SPPO_API_MAX_IN_FLIGHT")
        return self


def normalize_database_url(url: str) -> str:
    """Validate a database URL and pin the driver we ship (psycopg 3); reject unsafe ones early."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(f"SPPO_DATABASE_URL is not a valid database URL: {exc}") from None
    if parsed.drivername not in _SUPPORTED_DRIVERS:
        raise ValueError(f"SPPO_DATABASE_URL must use sqlite or postgresql, not {parsed.drivername!r}")
    if parsed.drivername == "sqlite" and parsed.database in (None, "", ":memory:"):
        # Each connection of an in-memory database is a different, empty database.
        raise ValueError("SPPO_DATABASE_URL must name a SQLite file, not an in-memory database")
    driver = _SUPPORTED_DRIVERS[parsed.drivername]
    if driver is not None:
        parsed = parsed.set(drivername=driver)
    return parsed.render_as_string(hide_password=False)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
