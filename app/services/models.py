"""The models a tenant can see: registry base models and its own fine-tuned models."""

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import FineTunedModel, Tenant
from app.registry import list_base_models
from app.schemas.models import ModelObject
from app.settings import Settings


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
