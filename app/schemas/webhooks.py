"""Webhook endpoints and their deliveries (an extension: OpenAI configures webhooks in its dashboard)."""

from typing import Literal

from pydantic import BaseModel, Field

from app.schemas.common import StrictModel
from core.models import WebhookDelivery, WebhookEndpoint


class WebhookCreate(StrictModel):
    url: str = Field(min_length=1, max_length=2048, description="https:// URL that receives the events.")


class WebhookPublic(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    created_at: int
    secret: str | None = Field(
        default=None, description="`whsec_...`, for `OpenAI(webhook_secret=...)`: shown only at creation."
    )

    @classmethod
    def of(cls, endpoint: WebhookEndpoint, secret: str | None = None) -> "WebhookPublic":
        return cls(id=endpoint.id, url=endpoint.url, created_at=endpoint.created_at, secret=secret)


class WebhookDeliveryPublic(BaseModel):
    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    type: str
    data: dict[str, str]
    status: str
    attempts: int
    next_attempt_at: int | None
    last_status_code: int | None
    last_error: str | None
    created_at: int
    delivered_at: int | None

    @classmethod
    def of(cls, delivery: WebhookDelivery) -> "WebhookDeliveryPublic":
        return cls(
            id=delivery.id,
            type=delivery.event_type,
            data={"id": delivery.object_id},
            status=delivery.status,
            attempts=delivery.attempts,
            next_attempt_at=delivery.next_attempt_at if delivery.status == "pending" else None,
            last_status_code=delivery.last_status_code,
            last_error=delivery.last_error,
            created_at=delivery.created_at,
            delivered_at=delivery.delivered_at,
        )
