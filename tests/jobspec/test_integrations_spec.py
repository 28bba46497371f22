"""The integrations spec: OpenAI's wandb shape, the mlflow extension, the operator's server list, no secret
in what a job stores."""

import pytest
from pydantic import TypeAdapter, ValidationError

from jobspec.integrations import (
    Integration,
    IntegrationError,
    MlflowSettings,
    check_unique_types,
    mlflow_tracking_uri,
    public_integrations,
)

ADAPTER = TypeAdapter(list[Integration])
ALLOWED = ["https://mlflow.example.com/", "http://10.1.2.3:5000"]


def test_the_stored_form_drops_the_key_and_the_unset_fields() -> None:
    parsed = ADAPTER.validate_python(
        [{"type": "wandb", "wandb": {"project": "p", "tags": ["t"], "api_key": "k" * 40}},
         {"type": "mlflow", "mlflow": {"experiment": "e"}}]
    )  # fmt: skip
    assert public_integrations(parsed) == [
        {"type": "wandb", "wandb": {"project": "p", "tags": ["t"]}},
        {"type": "mlflow", "mlflow": {"experiment": "e"}},
    ]
    with pytest.raises(IntegrationError, match="Only one 'wandb'"):
        check_unique_types([parsed[0], parsed[0]])


@pytest.mark.parametrize(
    ("uri", "expected"),
    [(None, "https://mlflow.example.com"), ("http://10.1.2.3:5000/", "http://10.1.2.3:5000"),
     ("https://mlflow.example.com", "https://mlflow.example.com")],
)  # fmt: skip
def test_an_allowed_server_or_the_default(uri: str | None, expected: str) -> None:
    spec = MlflowSettings(experiment="e", tracking_uri=uri)
    assert mlflow_tracking_uri(spec, allowed=ALLOWED, param="integrations.0") == expected


def test_other_servers_and_local_stores_are_refused() -> None:
    with pytest.raises(IntegrationError, match="not one this service logs to") as refused:
        mlflow_tracking_uri(
            MlflowSettings(experiment="e", tracking_uri="http://169.254.169.254"),
            allowed=ALLOWED,
            param="i.0",
        )
    assert refused.value.param == "i.0.mlflow.tracking_uri"
    with pytest.raises(IntegrationError, match="SPPO_MLFLOW_TRACKING_URIS"):
        mlflow_tracking_uri(MlflowSettings(experiment="e"), allowed=[], param="i.0")
    for uri in (
        "file:///tmp/x",
        "sqlite:///m.db",
        "/var/mlruns",
        "databricks",
        "https://a:b@mlflow.example.com",
    ):
        with pytest.raises(ValidationError):
            MlflowSettings(experiment="e", tracking_uri=uri)
