"""The models a tenant can see: registry base models and its own fine-tuned models."""

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import PermissionDenied
from app.schemas.models import ModelObject
from app.services.inference import model_not_found
from core.models import Checkpoint, FineTunedModel, Tenant
from core.registry import find_base_model, list_base_models
from core.settings import Settings
from core.storage import artifact_store


def list_models(session: Session, *, settings: Settings, tenant: Tenant) -> list[ModelObject]:
    models = [
        ModelObject(
            id=entry.name,
            created=entry.created,
            owned_by="system",
            recommended_grader=entry.recommended_grader,
            context_length=entry.context_length,
        )
        for entry in list_base_models(settings)
    ]
    fine_tuned = session.scalars(
        select(FineTunedModel)
        .where(FineTunedModel.tenant_id == tenant.id)
        .order_by(FineTunedModel.created_at)
    )
    models += [ModelObject(id=m.id, created=m.created_at, owned_by=tenant.id) for m in fine_tuned]
    return models


def get_model(session: Session, *, settings: Settings, tenant: Tenant, model_id: str) -> ModelObject:
    """A base model or one of the tenant's fine-tuned models; 404 `model_not_found` otherwise."""
    entry = find_base_model(settings, model_id)
    if entry is not None:
        return ModelObject(id=entry.name, created=entry.created, owned_by="system")
    row = _own_fine_tuned(session, tenant=tenant, model_id=model_id)
    return ModelObject(id=row.id, created=row.created_at, owned_by=tenant.id)


def delete_model(session: Session, *, settings: Settings, tenant: Tenant, model_id: str) -> None:
    """Unregister a fine-tuned model and remove its adapter files; base models cannot be deleted (403).

    The job's checkpoints go with it (rows and files): they are the same model at earlier steps, so a deleted
    model answers to none of its names (`ft:...`, `ftckpt-...`, `...:ckpt-step-N`) in chat, evaluations,
    judges or downloads.
    """
    if find_base_model(settings, model_id) is not None:
        raise PermissionDenied(
            f"The model '{model_id}' is a base model of the service and cannot be deleted.", param="model"
        )
    row = _own_fine_tuned(session, tenant=tenant, model_id=model_id)
    checkpoints = list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == row.job_id)))
    artifacts = [row.adapter_uri, *(checkpoint.uri for checkpoint in checkpoints)]
    for checkpoint in checkpoints:
        session.delete(checkpoint)
    session.delete(row)
    session.commit()
    store = artifact_store(settings)
    for uri in artifacts:
        if uri.startswith("jobs/"):  # never an artifact outside the jobs' own
            store.delete(uri)


def _own_fine_tuned(session: Session, *, tenant: Tenant, model_id: str) -> FineTunedModel:
    row = session.scalar(
        select(FineTunedModel).where(FineTunedModel.id == model_id, FineTunedModel.tenant_id == tenant.id)
    )
    if row is None:
        raise model_not_found(model_id)
    return row
