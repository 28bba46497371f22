"""The one settings object, read by the API, Alembic, the CLI and the Celery worker (env prefix `SPPO_`)."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, RedisDsn, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

_SUPPORTED_DRIVERS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg", "postgresql+psycopg": None}


class Settings(BaseSettings):
    """Service configuration; every field can be set as `SPPO_<NAME>` in the environment or a `.env` file."""

    model_config = SettingsConfigDict(env_prefix="SPPO_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path(".sppo"), description="Root of uploaded files and artifacts.")
    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL (sqlite or postgresql); default: a SQLite file under data_dir. "
        "Secret because a PostgreSQL URL may carry a password.",
    )
    redis_url: RedisDsn = Field(
        default=RedisDsn("redis://127.0.0.1:6379/0"), description="Celery broker and control/metrics store."
    )
    max_upload_bytes: int = Field(
        default=512 * 1024 * 1024, gt=0, description="Largest accepted file upload."
    )
    max_concurrent_jobs_per_tenant: int = Field(
        default=4, ge=1, description="Queued plus running jobs a tenant may have at once."
    )
    model_registry_dir: Path | None = Field(
        default=None,
        description="Directory of HF model folders (each with a config.json); default: data_dir/models.",
    )
    session_secret: SecretStr | None = Field(
        default=None,
        description="Key that signs dashboard session cookies; default: a random one kept in "
        "data_dir/session-secret (0600), so sessions survive restarts of a single-machine install.",
    )
    heartbeat_interval_s: float = Field(
        default=5.0, gt=0, description="How often a worker writes its running job's heartbeat."
    )
    heartbeat_lease_s: int = Field(
        default=120,
        ge=2,
        description="A running job whose heartbeat is older than this is presumed lost and requeued.",
    )
    reaper_interval_s: float = Field(
        default=15.0, gt=0, description="How often the API looks for lost jobs and undelivered tasks."
    )
    device: str | None = Field(
        default=None, description="Worker device (cpu, cuda, cuda:1, mps); default: cuda when available."
    )
    host: str = Field(default="127.0.0.1", description="Address `sppo serve` binds to.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port `sppo serve` listens on.")
    # A new user's first hour (issue 9): shared-Redis prefix, preflight and training-health alarms.
    redis_prefix: str = Field(
        default="sppo",
        pattern=r"^[A-Za-z0-9_.-]{1,32}$",
        description="Prefix of every Redis key and Celery queue, so several installs can share one Redis.",
    )
    preflight_items: int = Field(
        default=64, ge=1, description="Training items the base model is scored on before a job trains."
    )
    alarm_window_steps: int = Field(
        default=5,
        ge=2,
        description="Steps of identical all-0 or all-1 reward that raise a constant-reward alarm.",
    )
    # --- deployment: logs, graceful shutdown (issue 10) ---
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level of the API and the workers."
    )
    log_format: Literal["console", "json"] = Field(
        default="console",
        description="console: human-readable lines (`make run`); json: one JSON object per line carrying "
        "request_id, tenant_id and job_id (docker-compose.yml sets it).",
    )
    shutdown_grace_s: float = Field(
        default=20.0,
        gt=0,
        description="On SIGTERM the API stops accepting connections and lets in-flight requests finish for "
        "this long; live metric streams still open are then closed (clients reconnect with Last-Event-ID).",
    )

    @field_validator("data_dir", "model_registry_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Resolve once, so a later chdir (uvicorn reload, Celery) cannot silently move the data.
        return None if value is None else value.expanduser().resolve()

    @model_validator(mode="after")
    def _check_database_url(self) -> "Settings":
        if self.database_url is None:
            self.database_url = SecretStr(f"sqlite:///{self.data_dir / 'sppo.db'}")
        self.database_url = SecretStr(normalize_database_url(self.database_url.get_secret_value()))
        if self.session_secret is not None and len(self.session_secret.get_secret_value()) < 32:
            raise ValueError("SPPO_SESSION_SECRET must be at least 32 characters")
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise ValueError(f"SPPO_DATA_DIR {self.data_dir} exists and is not a directory")
        return self

    @property
    def db_url(self) -> str:
        """The database URL in plain text (for engines; never log it, use `safe_db_url`)."""
        assert self.database_url is not None  # filled by the validator
        return self.database_url.get_secret_value()

    @property
    def safe_db_url(self) -> str:
        return make_url(self.db_url).render_as_string(hide_password=True)

    @model_validator(mode="after")
    def _check_lease(self) -> "Settings":
        # A lease shorter than two heartbeats would requeue healthy jobs.
        if self.heartbeat_lease_s < 2 * self.heartbeat_interval_s:
            raise ValueError("SPPO_HEARTBEAT_LEASE_S must be at least twice SPPO_HEARTBEAT_INTERVAL_S")
        return self

    @property
    def jobs_dir(self) -> Path:
        """Per-job working directories: engine checkpoints, final adapters, evaluation results."""
        return self.data_dir / "jobs"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def registry_dir(self) -> Path:
        return self.model_registry_dir or self.data_dir / "models"


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
