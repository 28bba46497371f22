"""Webhooks in OpenAI's shape (an extension: OpenAI configures them in its dashboard, this service by API).

Signed as Standard Webhooks, as OpenAI signs them, so the official SDK's `client.webhooks.unwrap(body,
headers)` verifies a delivery: headers `webhook-id` (the event id, the same on every attempt),
`webhook-timestamp` (unix seconds of this attempt) and `webhook-signature` = `v1,` + base64 of
HMAC-SHA256 over `{id}.{timestamp}.{body}`, keyed with the bytes of the secret `whsec_<base64>`.

An endpoint's secret is derived from the operator's key (`SPPO_WEBHOOK_SIGNING_KEY`) and the endpoint's id,
so the database holds no secret and the API can show it once at creation while the workers can sign.

Events are enqueued (an outbox row per endpoint) inside the transaction of the transition that finished the
job or evaluation, so the event exists exactly when the new status does, and the transition waits on no
network: a worker sends them (worker/webhooks.py), found by the reaper (app/services/reaper.py).
"""

import base64
import hashlib
import hmac
import ipaddress
import json
import socket
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Evaluation, Job, JobStatus, WebhookDelivery, WebhookEndpoint, now
from core.security import operator_secret
from core.settings import Settings

KEY_FILE = "webhook-key"
SECRET_PREFIX = "whsec_"
MAX_BACKOFF_S = 3600.0

JOB_EVENTS = {
    JobStatus.succeeded: "fine_tuning.job.succeeded",
    JobStatus.failed: "fine_tuning.job.failed",
    JobStatus.cancelled: "fine_tuning.job.cancelled",
}
# OpenAI's eval runs say "canceled"; an evaluation of this service is cancelled only as a failed one.
EVALUATION_EVENTS = {
    JobStatus.succeeded: "eval.run.succeeded",
    JobStatus.failed: "eval.run.failed",
    JobStatus.cancelled: "eval.run.canceled",
}


class UnsafeWebhookURL(ValueError):
    """A URL the service refuses to send to: wrong scheme, or an address inside the operator's network."""


def _operator_key(settings: Settings) -> bytes:
    return operator_secret(settings.webhook_signing_key, settings.data_dir / KEY_FILE).encode()


def endpoint_secret(settings: Settings, endpoint_id: str) -> str:
    """The `whsec_...` secret of an endpoint: what the tenant gives `OpenAI(webhook_secret=...)`."""
    raw = hmac.new(_operator_key(settings), b"sppo.webhook:" + endpoint_id.encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(raw).decode()


def event_body(delivery: WebhookDelivery) -> bytes:
    """The JSON body OpenAI sends for this event type (`data` holds the job's or eval run's id)."""
    event = {
        "id": delivery.id,
        "object": "event",
        "type": delivery.event_type,
        "created_at": delivery.created_at,
        "data": {"id": delivery.object_id},
    }
    return json.dumps(event, separators=(",", ":")).encode()


def signed_headers(secret: str, *, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }


def retry_delay_s(settings: Settings, attempts: int) -> float:
    """Backoff after the `attempts`-th failed attempt: base, 2·base, 4·base, ... capped at an hour."""
    return float(min(settings.webhook_retry_base_s * 2 ** (attempts - 1), MAX_BACKOFF_S))


def _address_allowed(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return ip.is_global and not ip.is_multicast


def check_url(settings: Settings, url: str) -> None:
    """Raise UnsafeWebhookURL unless `url` may be sent to now (checked at registration and every attempt,
    since a name may resolve elsewhere later)."""
    parts = urlsplit(url)
    allowed_schemes = {"https", "http"} if settings.webhook_allow_http else {"https"}
    if parts.scheme not in allowed_schemes:
        raise UnsafeWebhookURL(f"The URL must use {' or '.join(sorted(allowed_schemes))}.")
    if not parts.hostname or parts.username or parts.password:
        raise UnsafeWebhookURL("The URL must name a host and carry no credentials.")
    if settings.webhook_allow_private_addresses:
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)}
    except (OSError, ValueError) as exc:
        raise UnsafeWebhookURL(f"The URL's host does not resolve: {exc}") from exc
    if not all(_address_allowed(str(address)) for address in addresses):
        raise UnsafeWebhookURL("The URL resolves to a private, loopback or link-local address.")


def _enqueue(session: Session, *, tenant_id: Any, event_type: str, object_id: str) -> None:
    endpoints = session.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.tenant_id).where(WebhookEndpoint.tenant_id == tenant_id)
    ).all()
    stamp = now()
    for endpoint_id, endpoint_tenant in endpoints:
        session.add(
            WebhookDelivery(
                tenant_id=endpoint_tenant,
                endpoint_id=endpoint_id,
                event_type=event_type,
                object_id=object_id,
                created_at=stamp,
                next_attempt_at=stamp,
            )
        )


def enqueue_job_event(session: Session, *, job_id: str, status: JobStatus) -> None:
    """Queue the job's terminal event for each endpoint of its tenant; nothing for other statuses."""
    if status in JOB_EVENTS:
        tenant = select(Job.tenant_id).where(Job.id == job_id).scalar_subquery()
        _enqueue(session, tenant_id=tenant, event_type=JOB_EVENTS[status], object_id=job_id)


def enqueue_evaluation_event(session: Session, *, evaluation_id: str, status: JobStatus) -> None:
    if status in EVALUATION_EVENTS:
        tenant = select(Evaluation.tenant_id).where(Evaluation.id == evaluation_id).scalar_subquery()
        _enqueue(session, tenant_id=tenant, event_type=EVALUATION_EVENTS[status], object_id=evaluation_id)
