"""The "Try it" box: shown only on a succeeded job with a fine-tuned model; its POST is CSRF-checked and
reaches the model proxy (no model server runs in these tests: 503)."""

from collections.abc import Callable
from typing import Any

from sqlalchemy import update

from core.db import session_scope
from core.models import FineTunedModel, Job

from ..conftest import Server
from .conftest import Browser


def test_try_it_box(server: Server, browser: Browser, new_job: Callable[..., dict[str, Any]]) -> None:
    job = new_job()
    path = f"/ui/jobs/{job['id']}/try"
    assert 'id="try-it"' not in browser.get(f"/jobs/{job['id']}").text
    headers = {"X-CSRF-Token": browser.csrf}
    assert browser.http.post(path, json={"prompt": "1+2+3="}).status_code == 403  # no CSRF token
    assert browser.http.post(path, json={"prompt": "1+2+3="}, headers=headers).status_code == 409
    model = f"ft:sppo-tiny:x::{job['id']}"
    with session_scope(server.db_url) as session:
        tenant_id = session.get(Job, job["id"]).tenant_id  # type: ignore[union-attr]
        session.execute(
            update(Job).where(Job.id == job["id"]).values(status="succeeded", fine_tuned_model=model)
        )
        session.add(FineTunedModel(id=model, tenant_id=tenant_id, job_id=job["id"], base_model="sppo-tiny",
                                   adapter_uri=f"jobs/{job['id']}/adapter"))  # fmt: skip
    page = browser.get(f"/jobs/{job['id']}").text
    assert 'id="try-it"' in page and "/static/tryit.js" in page
    assert browser.http.post(path, json={"prompt": "1+2+3="}, headers=headers).status_code == 503
    assert browser.http.post(path, json={"prompt": ""}, headers=headers).status_code in (400, 422)
