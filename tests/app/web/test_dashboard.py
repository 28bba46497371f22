"""The dashboard against a live server: sign-in, sessions and CSRF, tenant isolation, pages and the stream."""

import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import redis
from sqlalchemy import select, update

from app.services.keys import revoke_key
from core.db import session_scope
from core.lifecycle import transition
from core.models import ApiKey, Checkpoint, Job, JobStatus
from core.security import hash_api_key
from core.streams import encode_step, metrics_stream_key
from worker.records import replace_samples

from ..conftest import ITEM, Server, add_fine_tuned, method, sse_events
from .conftest import Browser, add_points, csrf_of

NewJob = Callable[..., dict[str, Any]]


def job_status(api: httpx.Client, job_id: str) -> str:
    return str(api.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"])


def test_sign_in_keeps_the_key_out_of_cookie_and_pages(server: Server, key: str) -> None:
    browser = Browser(server)
    first = browser.get("/")
    assert first.status_code == 303 and first.headers["location"] == "/login?next=/"

    browser.csrf = csrf_of(browser.get("/login").text)
    wrong = browser.post("/login", {"api_key": "sk-sppo-wrong", "next": "/"})
    assert wrong.status_code == 401 and "Incorrect API key provided" in wrong.text

    signed = browser.post("/login", {"api_key": key, "next": "//evil.example/"})
    assert signed.status_code == 303 and signed.headers["location"] == "/"  # no open redirect
    cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
    assert key not in signed.headers["set-cookie"] and key.lower() not in cookie
    page = browser.get("/")
    assert page.status_code == 200 and key not in page.text and "Fine-tuning jobs" in page.text


def test_revoked_key_ends_the_session(server: Server, browser: Browser, key: str) -> None:
    assert browser.get("/").status_code == 200
    with session_scope(server.db_url) as session:
        key_id = session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_api_key(key)))
        assert key_id is not None
        revoke_key(session, key_id=key_id)
    assert browser.get("/").status_code == 303


def test_jobs_list_filters_by_status_and_pages(browser: Browser, api: httpx.Client, new_job: NewJob) -> None:
    older, newer = new_job(), new_job("grpo")
    assert api.post(f"/v1/fine_tuning/jobs/{older['id']}/cancel").status_code == 200
    page = browser.get("/").text
    assert older["id"] in page and newer["id"] in page and "grpo" in page and "0/?" in page
    cancelled = browser.get("/", params={"status": "cancelled"}).text
    assert older["id"] in cancelled and newer["id"] not in cancelled
    # Jobs created in the same second order by id: page after whichever the list shows first.
    first, second = re.findall(r'data-job-id="([^"]+)"', page)
    after = browser.get("/", params={"after": first}).text
    assert re.findall(r'data-job-id="([^"]+)"', after) == [second]
    fragment = browser.get("/", headers={"HX-Request": "true"}).text
    assert fragment.lstrip().startswith('<div id="jobs"') or 'id="jobs"' in fragment[:400]
    assert "<html" not in fragment


def test_job_page_controls_follow_the_state(browser: Browser, api: httpx.Client, new_job: NewJob) -> None:
    job = new_job()
    page = browser.get(f"/jobs/{job['id']}").text
    assert job["id"] in page and "batch_size" in page and "string_check" in page
    assert 'data-action="pause"' in page and 'data-action="cancel"' in page
    assert 'data-action="resume"' not in page

    assert browser.post(f"/jobs/{job['id']}/pause").status_code == 303
    assert job_status(api, job["id"]) == "paused"
    panel = browser.get(f"/ui/jobs/{job['id']}/panel").text
    assert 'data-action="resume"' in panel and 'data-action="pause"' not in panel
    assert 'hx-swap-oob="true"' in panel and "Job paused" in panel  # the event log refreshes too

    assert browser.post(f"/jobs/{job['id']}/cancel").status_code == 303
    finished = browser.get(f"/jobs/{job['id']}").text
    assert job_status(api, job["id"]) == "cancelled"
    assert "data-action=" not in finished and 'hx-trigger="every 2s"' not in finished
    conflict = browser.post(f"/jobs/{job['id']}/resume")
    assert conflict.status_code == 409 and "only a paused job, or one that failed" in conflict.text


def test_failed_job_shows_its_error(server: Server, browser: Browser, new_job: NewJob) -> None:
    job_id = new_job()["id"]
    with session_scope(server.db_url) as session:  # what the worker writes when training fails
        failed = transition(
            session,
            job_id=job_id,
            expected=(JobStatus.queued,),
            to=JobStatus.failed,
            message="Training failed",
            level="error",
            error_code="training_diverged",
            error_message="The policy loss became NaN at step 3; lower learning_rate_multiplier.",
            error_param="method.reinforcement.hyperparameters.learning_rate_multiplier",
        )
        assert failed
    page = browser.get(f"/jobs/{job_id}").text
    panel = page.split('id="failure"')[1].split("</div>")[0]
    assert "training_diverged" in panel and "became NaN at step 3" in panel
    assert "learning_rate_multiplier" in panel and 'data-action="' not in page
    assert '<li class="error">' in page


def test_the_job_page_says_which_checkpoint_is_the_model(
    server: Server, browser: Browser, new_job: NewJob
) -> None:
    job_id = new_job()["id"]
    model = f"ft:sppo-tiny:x::{job_id}"
    with session_scope(server.db_url) as session:  # what the worker leaves: the best checkpoint, step 2
        for step in (2, 4):
            name = f"{model}:ckpt-step-{step}"
            uri = f"jobs/{job_id}/step-{step}"
            session.add(
                Checkpoint(job_id=job_id, step_number=step, fine_tuned_model_checkpoint=name, uri=uri)
            )
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status="succeeded", fine_tuned_model=model, fine_tuned_model_step=2)
        )
    page = browser.get(f"/jobs/{job_id}").text
    assert '<span class="small muted" id="model-step">the checkpoint at step 2</span>' in page
    rows = re.findall(r"<tr[^>]*>\s*<td class=\"num\">(.*?)</td>", page.split("<h2>Checkpoints</h2>")[1])
    assert rows == ["4", '<span class="badge model">model</span> 2']


def test_a_job_failed_by_lost_workers_offers_resume(
    server: Server, browser: Browser, api: httpx.Client, new_job: NewJob
) -> None:
    job_id = new_job()["id"]
    with session_scope(server.db_url) as session:  # what the reaper writes
        failed = transition(
            session,
            job_id=job_id,
            expected=(JobStatus.queued,),
            to=JobStatus.failed,
            message="Worker lost",
            level="error",
            error_code="worker_lost",
            error_message="The job lost its worker 21 times, more than the 20 it may.",
            worker_losses=21,
        )
        assert failed
    page = browser.get(f"/jobs/{job_id}").text
    assert "worker_lost" in page and "(21 worker losses)" in page
    assert re.findall(r'data-action="(\w+)"', page) == ["resume"]
    assert browser.post(f"/jobs/{job_id}/resume").status_code == 303
    assert job_status(api, job_id) == "queued"


def test_cancel_needs_the_session_cookie_and_its_csrf_token(
    server: Server, browser: Browser, api: httpx.Client, new_job: NewJob
) -> None:
    job_id = new_job()["id"]
    with httpx.Client(base_url=server.base_url) as stranger:  # no cookie at all
        response = stranger.post(f"/jobs/{job_id}/cancel", data={"csrf_token": browser.csrf})
        assert response.status_code in (401, 403)
    bad = browser.http.post(f"/jobs/{job_id}/cancel", data={"csrf_token": "x" * 43})
    assert bad.status_code == 403
    missing = browser.http.post(f"/jobs/{job_id}/cancel")
    assert missing.status_code == 403
    wrong_header = browser.http.post(f"/jobs/{job_id}/cancel", headers={"X-CSRF-Token": "nope"})
    assert wrong_header.status_code == 403
    assert job_status(api, job_id) == "queued"

    via_htmx = browser.http.post(
        f"/jobs/{job_id}/cancel", headers={"X-CSRF-Token": browser.csrf, "HX-Request": "true"}
    )
    assert via_htmx.status_code == 204 and via_htmx.headers["hx-redirect"] == f"/jobs/{job_id}"
    assert job_status(api, job_id) == "cancelled"


def test_another_tenants_job_is_not_found(server: Server, api: httpx.Client, new_job: NewJob) -> None:
    job_id = new_job()["id"]
    other = Browser(server)
    assert other.sign_in(server.new_key()).status_code == 303
    for path in (f"/jobs/{job_id}", f"/ui/jobs/{job_id}/panel", f"/ui/jobs/{job_id}/stream"):
        response = other.get(path)
        assert response.status_code == 404, path
        assert job_id in response.text and "<html" in response.text  # an HTML error page, not JSON
    assert other.get("/compare", params={"job": job_id}).status_code == 404
    assert other.post(f"/jobs/{job_id}/cancel").status_code == 404
    assert job_id not in other.get("/").text
    assert job_status(api, job_id) == "queued"


def test_new_job_form_shows_the_api_messages(browser: Browser, api: httpx.Client) -> None:
    bad_file = b'{"messages": []}\n'
    api_error = api.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("bad.jsonl", bad_file)})
    form = browser.post(
        "/jobs/new", {"model": "sppo-tiny"}, files={"training_file_upload": ("bad.jsonl", bad_file)}
    )
    assert form.status_code == 400
    assert api_error.json()["error"]["message"] in form.text.replace("&#39;", "'")

    good = {"training_file_upload": ("train.jsonl", (ITEM * 2).encode())}
    fields = {
        "model": "sppo-tiny",
        "algorithm": "grpo",
        "grader_type": "string_check",
        "grader_input": "{{sample.output_text}}",
        "grader_reference": "{{item.answer}}",
        "grader_operation": "eq",
        "batch_size": "0",
        "n_epochs": "auto",
    }
    rejected = browser.post("/jobs/new", fields, files=good)
    file_id = api.get("/v1/files").json()["data"][0]["id"]
    body = method(batch_size=0, n_epochs="auto")
    body["reinforcement"]["algorithm"] = "grpo"
    expected = api.post(
        "/v1/fine_tuning/jobs", json={"model": "sppo-tiny", "training_file": file_id, "method": body}
    )
    assert rejected.status_code == 400 and expected.status_code == 400
    assert expected.json()["error"]["message"] in rejected.text.replace("&#39;", "'")
    assert 'class="field invalid"' in rejected.text
    assert f'value="{file_id}" selected' in rejected.text  # the upload is kept for the corrected form

    created = browser.post("/jobs/new", {**fields, "batch_size": "2", "training_file": file_id, "seed": "5"})
    assert created.status_code == 303
    job = api.get(f"/v1/fine_tuning/jobs/{created.headers['location'].rsplit('/', 1)[-1]}").json()
    assert job["seed"] == 5 and job["method"]["reinforcement"]["algorithm"] == "grpo"
    hyper = job["method"]["reinforcement"]["hyperparameters"]
    assert (hyper["batch_size"], hyper["n_epochs"], hyper["group_size"], hyper["samples_per_step"]) == (
        2,
        1,
        8,
        16,
    )


def test_stream_relays_the_live_metrics_then_ends(
    server: Server, browser: Browser, api: httpx.Client, new_job: NewJob
) -> None:
    job_id = new_job()["id"]
    live = redis.Redis.from_url(server.redis_url)
    ids = [
        live.xadd(metrics_stream_key(job_id), encode_step(s, {"rollout/reward_mean": s / 10}, 0))
        for s in (1, 2, 3)
    ]
    api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    # The browser resends the last id it saw on a reconnect: the stream resumes after it.
    response = browser.get(f"/ui/jobs/{job_id}/stream", headers={"Last-Event-ID": ids[0].decode()})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert [e for e, _ in events] == ["metrics", "metrics", "end"]
    assert [d["step"] for e, d in events if e == "metrics"] == [2, 3]
    assert events[0][1]["metrics"] == {"rollout/reward_mean": 0.2}
    assert events[-1][1] == {"status": "cancelled"}


def test_compare_puts_jobs_on_one_chart(server: Server, browser: Browser, new_job: NewJob) -> None:
    sppo, grpo = new_job("sppo"), new_job("grpo")
    add_points(server, sppo["id"], range(1, 3))
    add_points(server, grpo["id"], range(1, 4))
    page = browser.get(
        "/compare", params={"job": [sppo["id"], grpo["id"]], "metric": "rollout/reward_mean"}
    ).text
    data = json.loads(
        page.split('<script id="compare-data" type="application/json">')[1].split("</script>")[0]
    )
    assert [s["id"] for s in data] == [sppo["id"], grpo["id"]]
    assert data[1]["label"].startswith("grpo") and data[1]["points"] == [
        [1, 2.0, 0.1, 64.0],
        [2, 4.0, 0.2, 128.0],
        [3, 6.0, 0.3, 192.0],
    ]
    assert 'data-x="samples"' in page and 'data-metric="rollout/reward_mean"' in page
    default = browser.get("/compare", params={"job": [sppo["id"]]}).text
    assert 'data-metric="eval/pass@1"' in default  # the held-out score unless another metric is picked


def test_sign_out_clears_the_session(browser: Browser) -> None:
    response = browser.post("/logout")
    assert response.status_code == 303 and "sppo_session=" in response.headers["set-cookie"]
    assert browser.get("/").status_code == 303


def test_running_job_shows_elapsed_time_left_and_no_validation_file(
    server: Server, browser: Browser, new_job: NewJob
) -> None:
    job_id = new_job()["id"]
    started = int(time.time()) - 125
    with session_scope(server.db_url) as session:  # what the worker writes when it starts and estimates
        finish = started + 125 + 610
        assert transition(session, job_id=job_id, expected=(JobStatus.queued,), to=JobStatus.running,
                          message="Started", started_at=started, estimated_finish=finish)  # fmt: skip
    page = browser.get(f"/jobs/{job_id}").text
    timing = re.sub(r"\s+", " ", page.split('id="job-timing">')[1].split("</span>")[0])
    assert re.fullmatch(r" · running for 2m (0[5-9]|1\d)s · about 10m (0\d|10)s left", timing), timing
    # without a validation file the validation chart says so instead of waiting for ever
    assert "No validation file: this job is not scored on held-out items" in page
    assert page.count("Waiting for the first step") == 5  # the other charts


def test_the_job_page_shows_the_latest_samples_escaped(
    server: Server, browser: Browser, new_job: NewJob
) -> None:
    job_id = new_job()["id"]
    assert "The first step's completions appear here." in browser.get(f"/jobs/{job_id}").text
    hostile = '<script>alert("x")</script>'
    written = {"prompt": "<b>2+5=</b>", "sub_rewards": {"exact": 0.5}, "truncated": True}
    with session_scope(server.db_url) as session:
        replace_samples(session, job_id, {
            1: [{"index": 0, "completion": "old step", "reward": 0.0, **written}],
            2: [{"index": 4, "completion": hostile, "reward": 0.75, **written}],
        })  # fmt: skip
        session.commit()
    for page in (browser.get(f"/jobs/{job_id}").text, browser.get(f"/ui/jobs/{job_id}/panel").text):
        panel = page[page.index('id="job-samples"') :]
        assert "(step 2)" in panel and "old step" not in panel
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in panel and "<script>alert" not in page
        assert "&lt;b&gt;2+5=&lt;/b&gt;" in panel and "exact 0.5" in panel and "(cut to its first" in panel


def test_the_job_page_shows_what_a_job_continues(
    server: Server, key: str, browser: Browser, api: httpx.Client
) -> None:
    parent, _ = add_fine_tuned(server, key, {"peft_type": "LORA", "r": 8, "lora_alpha": 16})
    file = api.post(
        "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", (ITEM * 4).encode())}
    )
    body = {"model": parent, "training_file": file.json()["id"], "method": method(batch_size=2)}
    job = api.post("/v1/fine_tuning/jobs", json=body).json()
    page = browser.get(f"/jobs/{job['id']}").text
    assert f'{parent} <span id="job-lineage">(continues its adapter on sppo-tiny)</span>' in page
