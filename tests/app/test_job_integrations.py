"""`integrations` on job create: OpenAI's wandb shape (the SDK sends and parses it), mlflow as an extension,
the operator's limits as 400s naming the param, and a tenant's W&B key sealed, never shown."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from sqlalchemy import select

from core.db import session_scope
from core.models import Job
from core.sealing import unseal
from core.settings import Settings

from .conftest import ITEM, MLFLOW_URIS, Server, assert_error, method

KEY = "wandb-key-" + "x" * 30
W, M = "integrations[0].wandb", "integrations[0].mlflow"


@pytest.fixture
def body(upload: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    training_file = upload()["id"]
    return lambda integrations: {
        "model": "sppo-tiny",
        "training_file": training_file,
        "method": method(batch_size=8),
        "integrations": integrations,
    }


def test_the_sdk_creates_a_job_with_integrations_and_parses_them_back(
    server: Server, key: str, tmp_path: Path
) -> None:
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
    path = tmp_path / "train.jsonl"
    path.write_text(ITEM * 4)
    file = client.files.create(file=path.open("rb"), purpose="fine-tune")
    wandb = {"project": "rft", "entity": "team", "name": "run-1", "tags": ["a", "b"], "api_key": KEY}
    job = client.fine_tuning.jobs.create(
        model="sppo-tiny",
        training_file=file.id,
        method=method(batch_size=4),
        integrations=[
            {"type": "wandb", "wandb": wandb},  # type: ignore[typeddict-unknown-key]
            {"type": "mlflow", "mlflow": {"experiment": "rft"}},  # type: ignore[list-item, typeddict-item]
        ],
    )
    for shown in (job, client.fine_tuning.jobs.retrieve(job.id)):
        assert shown.integrations is not None
        first = shown.integrations[0]
        assert first.type == "wandb" and first.wandb.project == "rft" and first.wandb.tags == ["a", "b"]
        assert first.wandb.entity == "team" and first.wandb.name == "run-1"
        assert not hasattr(first.wandb, "api_key")  # never echoed
        # the SDK's one integration type is wandb's: the extension comes through as an extra field
        mlflow = shown.integrations[1]
        assert mlflow.type == "mlflow" and (mlflow.model_extra or {})["mlflow"] == {"experiment": "rft"}
    assert KEY not in client.fine_tuning.jobs.with_raw_response.retrieve(job.id).text

    with session_scope(server.db_url) as session:
        row = session.scalar(select(Job).where(Job.id == job.id))
        assert row is not None and row.sealed_secrets is not None
        assert KEY not in str(row.sealed_secrets) and KEY not in str(row.integrations)
        # the worker opens it with the same operator key (the data dir's, as under `sppo run`)
        assert unseal(Settings(data_dir=server.data_dir), row.sealed_secrets["wandb"]) == KEY


def test_a_job_without_integrations_shows_an_empty_list(api: httpx.Client, body: Callable[..., Any]) -> None:
    created = api.post("/v1/fine_tuning/jobs", json={**body(None)})
    assert created.status_code == 200, created.text
    assert created.json()["integrations"] == []


@pytest.mark.parametrize(
    ("integrations", "param", "words"),
    [
        ([{"type": "tensorboard", "tensorboard": {}}], "integrations[0].type", "mlflow"),
        ([{"type": "wandb", "wandb": {}}], f"{W}.project", "required"),
        ([{"type": "wandb", "wandb": {"project": "a/b", "api_key": KEY}}], f"{W}.project", ""),
        ([{"type": "wandb", "wandb": {"project": "p", "api_key": KEY, "x": 1}}], f"{W}.x", ""),
        ([{"type": "wandb", "wandb": {"project": "p", "tags": ["t" * 65], "api_key": KEY}}],
         f"{W}.tags[0]", "64"),
        # no key of the tenant's and none of the operator's (the test server sets none, and is online)
        ([{"type": "wandb", "wandb": {"project": "p"}}], f"{W}.api_key", "SPPO_WANDB_API_KEY"),
        ([{"type": "mlflow", "mlflow": {"experiment": "e"}}] * 2, "integrations[1]", "one 'mlflow'"),
        ([{"type": "mlflow", "mlflow": {"experiment": "e", "tracking_uri": "file:///etc"}}],
         f"{M}.tracking_uri", "file:"),
        ([{"type": "mlflow", "mlflow": {"experiment": "e", "tracking_uri": "sqlite:///x.db"}}],
         f"{M}.tracking_uri", "http(s)"),
        ([{"type": "mlflow", "mlflow": {"experiment": "e", "tracking_uri": "https://u:p@mlflow.example.com"}}],
         f"{M}.tracking_uri", "credentials"),
        ([{"type": "mlflow", "mlflow": {"experiment": "e", "tracking_uri": "http://10.0.0.1:5000"}}],
         f"{M}.tracking_uri", MLFLOW_URIS[0]),
        ([{"type": "wandb", "mlflow": {"experiment": "e"}}], "integrations[0]", "settings under 'wandb'"),
        ([{"type": "mlflow", "mlflow": {}}], f"{M}.experiment", "required"),
    ],
)  # fmt: skip
def test_invalid_integrations_are_400s_naming_the_param(
    api: httpx.Client, body: Callable[..., Any], integrations: list[Any], param: str, words: str
) -> None:
    error = assert_error(api.post("/v1/fine_tuning/jobs", json=body(integrations)), 400, param)
    assert words in error["message"], error


def test_an_allowed_mlflow_server_is_accepted_with_or_without_its_trailing_slash(
    api: httpx.Client, body: Callable[..., Any]
) -> None:
    for uri in ("http://127.0.0.1:5999", MLFLOW_URIS[0] + "/"):
        integration = {"type": "mlflow", "mlflow": {"experiment": "e", "tracking_uri": uri}}
        created = api.post("/v1/fine_tuning/jobs", json=body([integration]))
        assert created.status_code == 200, created.text
        assert created.json()["integrations"] == [integration]
        assert api.post(f"/v1/fine_tuning/jobs/{created.json()['id']}/cancel").status_code == 200
