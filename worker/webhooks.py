"""Sending one webhook delivery (an outbox row of core/webhooks.py): sign, POST, record the attempt.

No DB session is held across the HTTP call. An attempt succeeds on any 2xx; anything else (another status,
a redirect, which is never followed, a timeout, a refused address) is recorded with its status or error and
retried after an exponential backoff (`webhook_retry_base_s`, doubling) until `webhook_max_attempts`,
when the delivery is recorded as failed. The reaper sends a delivery again when it is due.
"""

import logging
from dataclasses import dataclass

import httpx
from sqlalchemy import select, update

from core.db import get_sessionmaker
from core.models import WebhookDelivery, WebhookEndpoint, now
from core.settings import Settings
from core.webhooks import (
    UnsafeWebhookURL,
    check_url,
    endpoint_secret,
    event_body,
    retry_delay_s,
    signed_headers,
)

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class Attempt:
    status_code: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _post(settings: Settings, url: str, secret: str, delivery: WebhookDelivery) -> Attempt:
    body = event_body(delivery)
    headers = signed_headers(secret, webhook_id=delivery.id, timestamp=now(), body=body)
    try:
        check_url(settings, url)
        with httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False) as client:
            response = client.post(url, content=body, headers=headers)
    except (UnsafeWebhookURL, httpx.HTTPError) as exc:
        return Attempt(None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])
    error = None if response.is_success else f"HTTP {response.status_code}"
    return Attempt(response.status_code, error)


def _record(settings: Settings, delivery: WebhookDelivery, attempt: Attempt) -> str:
    attempts = delivery.attempts + 1
    values: dict[str, object] = {
        "attempts": attempts,
        "last_status_code": attempt.status_code,
        "last_error": attempt.error,
        "dispatched_at": None,
    }
    if attempt.ok:
        outcome = "delivered"
        values.update(status="delivered", delivered_at=now())
    elif attempts >= settings.webhook_max_attempts:
        outcome = "failed"
        values["status"] = "failed"
    else:
        outcome = "retrying"
        values["next_attempt_at"] = now() + round(retry_delay_s(settings, attempts))
    with get_sessionmaker(settings.db_url)() as session:
        # Guarded by the attempt count read, so a duplicate message's attempt is recorded only once.
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery.id, WebhookDelivery.attempts == delivery.attempts)
            .values(**values)
        )
        session.commit()
    return outcome


def deliver(delivery_id: str, *, settings: Settings) -> str:
    """One attempt at a pending delivery; returns what became of it (for the task's log line)."""
    with get_sessionmaker(settings.db_url)() as session:
        found = session.execute(
            select(WebhookDelivery, WebhookEndpoint.url)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending")
        ).one_or_none()
        if found is None:
            return "nothing to send"  # delivered, failed, or its endpoint was deleted
        delivery, url = found
        session.expunge(delivery)
    attempt = _post(settings, url, endpoint_secret(settings, delivery.endpoint_id), delivery)
    outcome = _record(settings, delivery, attempt)
    if not attempt.ok:
        log.warning("webhook %s to %s: %s (%s)", delivery_id, url, attempt.error, outcome)
    return outcome
