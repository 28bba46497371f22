"""A job's experiment trackers at creation: the operator's limits (allowed MLflow servers, a W&B key to log
with), checked once here so a job that reaches the worker can log; the tenant's keys sealed for the worker."""

from collections.abc import Sequence
from typing import Any

from app.errors import InvalidRequest
from core.sealing import seal
from core.settings import Settings
from jobspec.integrations import (
    Integration,
    IntegrationError,
    check_unique_types,
    mlflow_tracking_uri,
    public_integrations,
)


def check_integrations(
    settings: Settings, integrations: Sequence[Integration]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(what the job stores and shows, sealed secrets by integration type); 400 naming the param."""
    sealed: dict[str, str] = {}
    try:
        check_unique_types(integrations)
        for index, integration in enumerate(integrations):
            param = f"integrations[{index}]"
            if integration.mlflow is not None:
                mlflow_tracking_uri(integration.mlflow, allowed=settings.mlflow_tracking_uris, param=param)
                continue
            assert integration.wandb is not None  # the model holds the settings of its type
            if integration.wandb.api_key is not None:
                sealed[integration.type] = seal(settings, integration.wandb.api_key)
            elif settings.wandb_api_key is None and settings.wandb_mode == "online":
                raise IntegrationError(
                    "This service has no W&B API key of its own: give yours as wandb.api_key (it is stored "
                    "sealed and never shown), or ask the operator to set SPPO_WANDB_API_KEY.",
                    param=f"{param}.wandb.api_key",
                )
    except IntegrationError as exc:
        raise InvalidRequest(str(exc), param=exc.param) from None
    return public_integrations(integrations), sealed
