"""A tenant's webhook endpoints: register (the secret is returned once), list, delete, and their deliveries.
Every query is filtered by the tenant."""

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.errors import InvalidRequest, NotFound
from app.services.pagination import page
from core.models import Tenant, WebhookDelivery, WebhookEndpoint
from core.settings import Settings
from core.webhooks import UnsafeWebhookURL, check_url, endpoint_secret

MAX_ENDPOINTS_PER_TENANT = 10


def create_endpoint(
    session: Session, *, settings: Settings, tenant: Tenant, url: str
) -> tuple[WebhookEndpoint, str]:
    """Register `url`; returns the endpoint and its signing secret (never shown again)."""
    try:
        check_url(settings, url)
    except UnsafeWebhookURL as exc:
        raise InvalidRequest(str(exc), param="url") from exc
    count = session.scalar(select(func.count()).where(WebhookEndpoint.tenant_id == tenant.id)) or 0
    if count >= MAX_ENDPOINTS_PER_TENANT:
        raise InvalidRequest(f"A tenant may register at most {MAX_ENDPOINTS_PER_TENANT} webhook endpoints.")
    endpoint = WebhookEndpoint(tenant_id=tenant.id, url=url)
    session.add(endpoint)
    session.commit()
    return endpoint, endpoint_secret(settings, endpoint.id)


def get_endpoint(session: Session, *, tenant: Tenant, endpoint_id: str) -> WebhookEndpoint:
    endpoint = session.scalar(
        select(WebhookEndpoint).where(
            WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant_id == tenant.id
        )
    )
    if endpoint is None:
        raise NotFound(f"No webhook endpoint with id '{endpoint_id}'.", param="webhook_id")
    return endpoint


def list_endpoints(session: Session, *, tenant: Tenant) -> list[WebhookEndpoint]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant.id)
    return list(session.scalars(query.order_by(WebhookEndpoint.created_at.desc(), WebhookEndpoint.id.desc())))


def delete_endpoint(session: Session, *, tenant: Tenant, endpoint_id: str) -> None:
    """Delete the endpoint and its deliveries (pending ones are never sent)."""
    endpoint = get_endpoint(session, tenant=tenant, endpoint_id=endpoint_id)
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id))
    session.delete(endpoint)
    session.commit()


def list_deliveries(
    session: Session, *, tenant: Tenant, endpoint_id: str, after: str | None, limit: int
) -> tuple[list[WebhookDelivery], bool]:
    endpoint = get_endpoint(session, tenant=tenant, endpoint_id=endpoint_id)
    query = select(WebhookDelivery).where(
        WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.tenant_id == tenant.id
    )
    return page(
        session, query, key=WebhookDelivery.created_at, ident=WebhookDelivery.id, after=after, limit=limit
    )
