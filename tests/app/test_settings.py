"""Settings fail fast on unsafe values and pin the database driver."""

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from core.settings import Settings


def test_defaults_put_everything_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.db_url == f"sqlite:///{tmp_path / 'sppo.db'}"
    assert settings.registry_dir == tmp_path / "models"
    assert settings.artifact_store is None  # the data dir itself is the artifact store


def test_postgres_url_gets_psycopg_and_password_is_hidden() -> None:
    settings = Settings(database_url=SecretStr("postgresql://u:hunter2@db:5432/sppo"))
    assert settings.db_url == "postgresql+psycopg://u:hunter2@db:5432/sppo"
    assert "hunter2" not in settings.safe_db_url and "hunter2" not in repr(settings)


@pytest.mark.parametrize(
    "values",
    [
        {"database_url": SecretStr("mysql://u@h/db")},
        {"database_url": SecretStr("sqlite:///:memory:")},
        {"database_url": SecretStr("not a url")},
        {"max_upload_bytes": 0},
        {"max_concurrent_jobs_per_tenant": 0},
        {"redis_url": "http://127.0.0.1:6379"},
        {"port": 70000},
    ],
)
def test_unsafe_values_are_rejected(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**values)  # type: ignore[arg-type]


def test_data_dir_must_be_a_directory(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(ValidationError):
        Settings(data_dir=not_a_dir)


def test_redis_prefix_names_every_key_and_broker_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.queues import broker_options, control_key
    from core.settings import get_settings
    from core.streams import metrics_stream_key

    monkeypatch.setenv("SPPO_REDIS_PREFIX", "second")
    get_settings.cache_clear()
    try:
        assert control_key("ftjob-1") == "second:jobs:ftjob-1:control"
        assert metrics_stream_key("ftjob-1") == "second:jobs:ftjob-1:metrics"
        assert broker_options() == {"global_keyprefix": "second:"}  # kombu's queues and bindings too
    finally:
        get_settings.cache_clear()
    with pytest.raises(ValueError, match="redis_prefix"):
        Settings(redis_prefix="has space")
