"""`/v1/webhooks` (extension: OpenAI configures webhooks in its dashboard): endpoints that receive
`fine_tuning.job.*` and `eval.run.*` events, signed so the OpenAI SDK's `webhooks.unwrap` verifies them."""

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import After, CurrentTenant, SessionDep, SettingsDep
from app.api.openapi import errors
from app.api.retry import ReadRetryRoute
from app.schemas.common import DeletedPublic, ListPublic
from app.schemas.webhooks import WebhookCreate, WebhookDeliveryPublic, WebhookPublic
from app.services import webhooks

router = APIRouter(prefix="/webhooks", tags=["webhooks"], route_class=ReadRetryRoute)


@router.post("", response_model=WebhookPublic, responses=errors(400))
def create_webhook(
    session: SessionDep, settings: SettingsDep, tenant: CurrentTenant, body: WebhookCreate
) -> WebhookPublic:
    endpoint, secret = webhooks.create_endpoint(session, settings=settings, tenant=tenant, url=body.url)
    return WebhookPublic.of(endpoint, secret)


@router.get("", response_model=ListPublic[WebhookPublic])
def list_webhooks(session: SessionDep, tenant: CurrentTenant) -> ListPublic[WebhookPublic]:
    rows = webhooks.list_endpoints(session, tenant=tenant)
    return ListPublic.page([WebhookPublic.of(e) for e in rows], has_more=False, ids=[e.id for e in rows])


@router.get("/{webhook_id}", response_model=WebhookPublic, responses=errors(404))
def retrieve_webhook(session: SessionDep, tenant: CurrentTenant, webhook_id: str) -> WebhookPublic:
    return WebhookPublic.of(webhooks.get_endpoint(session, tenant=tenant, endpoint_id=webhook_id))


@router.delete("/{webhook_id}", response_model=DeletedPublic, responses=errors(404))
def delete_webhook(session: SessionDep, tenant: CurrentTenant, webhook_id: str) -> DeletedPublic:
    webhooks.delete_endpoint(session, tenant=tenant, endpoint_id=webhook_id)
    return DeletedPublic(id=webhook_id, object="webhook_endpoint")


@router.get(
    "/{webhook_id}/deliveries", response_model=ListPublic[WebhookDeliveryPublic], responses=errors(400, 404)
)
def list_deliveries(
    session: SessionDep,
    tenant: CurrentTenant,
    webhook_id: str,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ListPublic[WebhookDeliveryPublic]:
    rows, has_more = webhooks.list_deliveries(
        session, tenant=tenant, endpoint_id=webhook_id, after=after, limit=limit
    )
    return ListPublic.page(
        [WebhookDeliveryPublic.of(d) for d in rows], has_more=has_more, ids=[d.id for d in rows]
    )
