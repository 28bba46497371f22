"""`/v1/models`: base models from the registry and the tenant's fine-tuned models; retrieve, delete and
(an extension) download a base model's files."""

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app.api.deps import CurrentTenant, SessionDep, SettingsDep
from app.api.openapi import errors
from app.api.retry import ReadRetryRoute
from app.errors import NotFound
from app.schemas.common import DeletedPublic, ListPublic
from app.schemas.models import ModelObject
from app.services.inference import proxy_model_files
from app.services.models import delete_model, get_model, list_models
from core.registry import find_base_model

router = APIRouter(prefix="/models", tags=["models"], route_class=ReadRetryRoute)


@router.get("", response_model=ListPublic[ModelObject])
def list_all_models(
    session: SessionDep, settings: SettingsDep, tenant: CurrentTenant
) -> ListPublic[ModelObject]:
    models = list_models(session, settings=settings, tenant=tenant)
    return ListPublic.page(models, has_more=False, ids=[m.id for m in models])


# Registered before `/{model_id:path}`, which would otherwise take ".../files" as part of the id.
@router.get("/{model_id:path}/files", response_class=StreamingResponse, responses=errors(400, 404))
async def download_model_files(
    settings: SettingsDep, tenant: CurrentTenant, model_id: str
) -> StreamingResponse:
    """Extension: a base model's files as `<name>.tar.gz`, to use a downloaded adapter off the server."""
    if await run_in_threadpool(find_base_model, settings, model_id) is None:
        raise NotFound(
            f"'{model_id}' is not a base model; only base models' files can be downloaded "
            "(a fine-tuned model's adapter comes from its job's checkpoints).",
            param="model", code="model_not_found",
        )  # fmt: skip
    return await proxy_model_files(settings=settings, name=model_id)


@router.get("/{model_id:path}", response_model=ModelObject, responses=errors(400, 404))
def retrieve_model(
    session: SessionDep, settings: SettingsDep, tenant: CurrentTenant, model_id: str
) -> ModelObject:
    return get_model(session, settings=settings, tenant=tenant, model_id=model_id)


@router.delete("/{model_id:path}", response_model=DeletedPublic, responses=errors(400, 403, 404))
def remove_model(
    session: SessionDep, settings: SettingsDep, tenant: CurrentTenant, model_id: str
) -> DeletedPublic:
    delete_model(session, settings=settings, tenant=tenant, model_id=model_id)
    return DeletedPublic(id=model_id, object="model")
