"""A job's experiment trackers (`integrations`): OpenAI's `wandb` shape exactly (the SDK's
`FineTuningJobWandbIntegrationObject`), plus `mlflow` as an extension.

The API validates a request with these models and the worker reads the stored ones back with them. A tenant
never chooses where a worker writes: an MLflow tracking URI must be an http(s) server the operator allows
(`SPPO_MLFLOW_TRACKING_URIS`), never `file:`, a database URI or any other store the MLflow client would open
on the worker's host. A W&B API key given with a job (`wandb.api_key`, an extension) is stored sealed and
never shown again; without one the operator's key is used.
"""

from collections.abc import Sequence
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobspec.text import check_texts

# W&B refuses these characters in project and entity names; a run then fails long after the job started.
_WANDB_NAME_PATTERN = r"^[^/\\#?%:]+$"
WandbName = Annotated[str, Field(min_length=1, max_length=128, pattern=_WANDB_NAME_PATTERN)]
WandbTag = Annotated[str, Field(min_length=1, max_length=64)]  # W&B's limit on a tag
MAX_TAGS = 64


class IntegrationError(ValueError):
    """An integration the operator's settings do not allow; `param` names the field."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _clean_text(cls, value: Any) -> Any:
        return check_texts(value)


class WandbSettings(_Spec):
    project: WandbName
    entity: WandbName | None = None
    name: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    """The run's display name; the job id when absent (as OpenAI does)."""
    tags: Annotated[list[WandbTag], Field(max_length=MAX_TAGS)] | None = None
    api_key: Annotated[str, Field(min_length=20, max_length=256, pattern=r"^\S+$")] | None = None
    """Extension: the tenant's own W&B key, sealed at rest and never echoed; else the operator's."""


class MlflowSettings(_Spec):
    tracking_uri: Annotated[str, Field(min_length=1, max_length=2048)] | None = None
    """One of the operator's allowed servers; the first allowed one when absent."""
    experiment: Annotated[str, Field(min_length=1, max_length=256)]
    run_name: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    """The run's name; the job id when absent."""

    @field_validator("tracking_uri")
    @classmethod
    def _http_only(cls, uri: str | None) -> str | None:
        if uri is None:
            return None
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "must be an http(s) URL of an MLflow tracking server (file:, database and other local "
                "stores are not allowed: the run is logged by the service's workers)"
            )
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not hold credentials (the operator configures the server's access)")
        return uri


class Integration(_Spec):
    """`{"type": "wandb", "wandb": {...}}` or `{"type": "mlflow", "mlflow": {...}}`: the settings under the
    type's own key, as OpenAI shapes it (one model rather than a tagged union, so an error's param is the
    field's path, `integrations[0].wandb.project`)."""

    type: Literal["wandb", "mlflow"]
    wandb: WandbSettings | None = None
    mlflow: MlflowSettings | None = None

    @model_validator(mode="after")
    def _settings_of_its_type(self) -> "Integration":
        other = "mlflow" if self.type == "wandb" else "wandb"
        if getattr(self, self.type) is None:
            raise ValueError(f"a '{self.type}' integration needs its settings under '{self.type}'")
        if getattr(self, other) is not None:
            raise ValueError(f"a '{self.type}' integration takes no '{other}' settings")
        return self


def check_unique_types(integrations: Sequence[Integration]) -> None:
    """One integration per tracker type: a job logs to one W&B run and one MLflow run at most."""
    seen: set[str] = set()
    for index, integration in enumerate(integrations):
        if integration.type in seen:
            raise IntegrationError(
                f"Only one '{integration.type}' integration per job.", param=f"integrations[{index}]"
            )
        seen.add(integration.type)


def _normalized(uri: str) -> str:
    return uri.rstrip("/")


def mlflow_tracking_uri(mlflow: MlflowSettings, *, allowed: Sequence[str], param: str) -> str:
    """The server of a job's MLflow run: the one asked for if the operator allows it, else the default."""
    if not allowed:
        raise IntegrationError(
            "MLflow is not available on this service: the operator has configured no tracking server "
            "(SPPO_MLFLOW_TRACKING_URIS).",
            param=param,
        )
    if mlflow.tracking_uri is None:
        return _normalized(allowed[0])
    if _normalized(mlflow.tracking_uri) not in {_normalized(uri) for uri in allowed}:
        raise IntegrationError(
            f"MLflow tracking server '{mlflow.tracking_uri}' is not one this service logs to; "
            f"allowed: {', '.join(allowed)} (or leave tracking_uri out for {allowed[0]}).",
            param=f"{param}.mlflow.tracking_uri",
        )
    return _normalized(mlflow.tracking_uri)


def public_integrations(integrations: Sequence[Integration]) -> list[dict[str, Any]]:
    """What the job stores and shows: everything but secrets."""
    return [
        integration.model_dump(mode="json", exclude_none=True, exclude={"wandb": {"api_key"}})
        for integration in integrations
    ]
