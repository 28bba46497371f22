"""`/v1/chat/completions` and `/v1/completions`: OpenAI's endpoints, answered by the model server."""

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.api.deps import CurrentTenant, SessionDep, SettingsDep
from app.api.openapi import errors
from app.api.retry import ReadRetryRoute
from app.schemas.inference import ChatCompletionCreate, CompletionCreate
from app.services.inference import proxy_generate, resolve_model
from core.models import Tenant
from core.settings import Settings

router = APIRouter(tags=["inference"], route_class=ReadRetryRoute)


@router.post("/chat/completions", response_model=None, responses=errors(400, 404, 413))
async def create_chat_completion(
    body: ChatCompletionCreate, session: SessionDep, settings: SettingsDep, tenant: CurrentTenant
) -> Response:
    return await _generate(body, session=session, settings=settings, tenant=tenant)


@router.post("/completions", response_model=None, responses=errors(400, 404, 413))
async def create_completion(
    body: CompletionCreate, session: SessionDep, settings: SettingsDep, tenant: CurrentTenant
) -> Response:
    return await _generate(body, session=session, settings=settings, tenant=tenant)


async def _generate(
    body: ChatCompletionCreate | CompletionCreate, *, session: Session, settings: Settings, tenant: Tenant
) -> Response:
    target = await run_in_threadpool(
        resolve_model, session, settings=settings, tenant=tenant, model=body.model
    )
    session.close()  # no DB connection is held while the model generates
    return await proxy_generate(settings=settings, target=target, request=body.proxied(), stream=body.stream)
