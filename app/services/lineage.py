"""What a new job's `model` means: the registry model it trains on and, for a warm start, the parent it
continues (one of the tenant's fine-tuned models or checkpoints) with that parent's adapter config.

The name resolves with core.model_targets, the one resolver of a tenant's model names. A name the tenant
cannot use (unknown, deleted, another tenant's) is one 404, whose answer never tells whether someone
else's model exists. What a parent fixes and what it refuses is jobspec.warmstart's rule, which the worker
applies again when it builds the run.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.errors import InvalidRequest, NotFound
from core.model_targets import find_model_target
from core.models import Tenant
from core.registry import BaseModelEntry, find_base_model, list_base_models
from core.settings import Settings
from core.storage import artifact_store
from jobspec.warmstart import ADAPTER_CONFIG, WarmStartError, adapter_values, continued_hyperparameters

MODELS_LISTED = 20  # an unknown model's error lists this many names; GET /v1/models has them all


@dataclass(frozen=True)
class Lineage:
    entry: BaseModelEntry
    """The registry model the job trains on."""
    parent_model: str | None = None
    """The fine-tuned model or checkpoint whose adapter the job continues; None: a fresh adapter."""
    adapter_config: Mapping[str, Any] | None = None
    """The parent's adapter_config.json."""

    def hyperparameters(self, hyper: Mapping[str, Any]) -> dict[str, Any]:
        """The job's hyperparameters with what its parent fixes; 400 naming a setting that conflicts."""
        if self.parent_model is None or self.adapter_config is None:
            return dict(hyper)
        try:
            return continued_hyperparameters(hyper, self.adapter_config, parent=self.parent_model)
        except WarmStartError as exc:
            raise InvalidRequest(exc.message, param=exc.param) from None

    def engine_values(self) -> dict[str, Any]:
        """The engine fields the parent's adapter fixes (use_lora and the adapter's shape), as the worker
        sets them; none for a fresh adapter. Call after `hyperparameters`, which refuses a parent that
        cannot be continued."""
        if self.parent_model is None or self.adapter_config is None:
            return {}
        return adapter_values(self.adapter_config, parent=self.parent_model)


def resolve_lineage(session: Session, *, settings: Settings, tenant: Tenant, model: str) -> Lineage:
    """A registry model, or the tenant's fine-tuned model or checkpoint to continue; 404 otherwise."""
    target = find_model_target(session, settings=settings, tenant_id=tenant.id, model=model)
    # a parent whose base model has left the registry cannot be trained either
    entry = None if target is None else find_base_model(settings, target.base_model)
    if target is None or entry is None:
        names = ", ".join(e.name for e in list_base_models(settings)[:MODELS_LISTED])
        raise NotFound(
            f"Model '{model}' is not available for fine-tuning; the models are: {names} (GET /v1/models), "
            "or a fine-tuned model or checkpoint of yours to continue.",
            param="model",
            code="model_not_found",
        )
    if target.adapter_uri is None:
        return Lineage(entry)
    return Lineage(entry, model, _adapter_config(settings, uri=target.adapter_uri, model=model))


def _adapter_config(settings: Settings, *, uri: str, model: str) -> dict[str, Any]:
    try:
        with artifact_store(settings).open(f"{uri}/{ADAPTER_CONFIG}") as handle:
            config = json.load(handle)
    except (OSError, ValueError):  # none stored: a policy trained in full keeps model weights instead
        config = None
    if not isinstance(config, dict):
        raise InvalidRequest(
            f"Model '{model}' has no stored LoRA adapter to continue (a model trained in full cannot be "
            "continued yet).",
            param="model",
        )
    return config
