"""`/v1/models`: base models from the registry and the tenant's fine-tuned models."""

from fastapi import APIRouter

from app.api.deps import CurrentTenant, SessionDep, SettingsDep
from app.schemas.common import ListPublic
from app.schemas.models import ModelObject
from app.services.models import list_models

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=ListPublic[ModelObject])
def list_all_models(
    session: SessionDep, settings: SettingsDep, tenant: CurrentTenant
) -> ListPublic[ModelObject]:
    models = list_models(session, settings=settings, tenant=tenant)
    return ListPublic.page(models, has_more=False, ids=[m.id for m in models])
