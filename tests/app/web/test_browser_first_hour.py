"""The dashboard fixes of a new user's first hour, in headless Chromium: y-axes fitted to the data, compare
colours that follow the job, a failed job's page, GRPO pages without critic, alarms and the preparing banner
where users look. Saves docs/screenshots/job-alarms.png and job-failed.png."""

import json
from typing import Any

import redis
from sqlalchemy import update

from core.db import session_scope
from core.lifecycle import transition
from core.models import Job, JobStatus
from core.streams import encode_step, metrics_stream_key

from ..conftest import Server
from .conftest import SCREENSHOTS, signed_in_page
from .test_browser import NewJob

ALARM = {
    "code": "constant_reward", "level": "error", "count": 10, "first_step": 3, "last_step": 12,
    "active": True,
    "message": "every sample got reward 0 for the last 5 steps: grader 'exact' (string_check) never rewards "
    "this model's answers, so nothing is learned; check the grader against a few completions",
}  # fmt: skip


def _set(server: Server, job_id: str, **values: Any) -> None:
    with session_scope(server.db_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def _shot(page: Any, name: str) -> None:
    height = int(page.evaluate("Math.ceil(document.querySelector('main').getBoundingClientRect().bottom)"))
    page.set_viewport_size({"width": 1280, "height": max(height, 400)})
    page.screenshot(path=str(SCREENSHOTS / name))
    page.set_viewport_size({"width": 1280, "height": 860})


def test_alarms_banner_and_fitted_axes_on_a_running_job(
    server: Server, chromium: Any, key: str, new_job: NewJob
) -> None:
    job = new_job()
    with session_scope(server.db_url) as session:
        assert transition(session, job_id=job["id"], expected=(JobStatus.queued,), to=JobStatus.running,
                          message="test: running", worker_id="w:1")  # fmt: skip
    _set(server, job["id"], alarms=[ALARM], status_detail="preparing sppo-tiny: step 240, accuracy 0.125",
         current_step=12, total_steps=40)  # fmt: skip
    live = redis.Redis.from_url(server.redis_url)
    for step in range(1, 13):  # a reward that moves between 0.1 and 0.3
        metrics = {"rollout/reward_mean": 0.1 + 0.2 * (step % 4) / 3, "train/policy_loss": 0.1 / step}
        live.xadd(metrics_stream_key(job["id"]), encode_step(step, metrics, 0))

    page = signed_in_page(chromium, server.base_url, key)
    chip = page.locator(f"tr[data-job-id='{job['id']}'] .alarm-chip")
    assert chip.inner_text() == "constant reward ×10"
    # the jobs table fits a 1280 px screen, alarm chip and all: nothing is cut off or scrolls sideways
    scroll, client = page.evaluate(
        "(() => { const w = document.querySelector('#jobs .table-wrap');"
        " return [w.scrollWidth, w.clientWidth]; })()"
    )
    assert page.viewport_size["width"] == 1280 and scroll <= client, (scroll, client)
    page.goto(f"/jobs/{job['id']}")
    page.wait_for_selector("#charts[data-points='12']", timeout=15_000)  # no JS predicate: CSP bars eval
    alarm = page.locator("#job-head [data-alarm='constant_reward']")
    assert (
        "never rewards this model's answers" in alarm.inner_text() and "×10, steps 3–12" in alarm.inner_text()
    )
    assert "preparing sppo-tiny: step 240, accuracy 0.125" in page.locator("#status-detail").inner_text()
    low, high = page.evaluate(
        "(() => { const s = document.querySelector(\"[data-metrics='rollout/reward_mean']\").uplot.scales.y;"
        " return [s.min, s.max]; })()"
    )
    assert 0.05 < low < 0.1 and 0.3 < high < 0.35  # fitted to 0.1-0.3, not the whole of [0, 1]
    _shot(page, "job-alarms.png")
    page.context.close()


def test_a_failed_grpo_job_says_so_and_shows_no_critic(
    server: Server, chromium: Any, key: str, new_job: NewJob
) -> None:
    job = new_job(algorithm="grpo")
    _set(server, job["id"], resolved_hyperparameters={"batch_size": 2, "critic": "separate", "group_size": 8})
    with session_scope(server.db_url) as session:
        assert transition(session, job_id=job["id"], expected=(JobStatus.queued,), to=JobStatus.failed,
                          message="test: failed", error_code="grader_constant_reward", error_param="grader",
                          error_message="Preflight: the grader 'exact' (string_check) gave reward 0 to all "
                          "128 completions of the base model on 64 training items.")  # fmt: skip
    page = signed_in_page(chromium, server.base_url, key)
    page.goto(f"/jobs/{job['id']}")
    assert "grader_constant_reward" in page.locator("#failure").inner_text()
    empty = page.locator("#charts .chart .empty").first.inner_text()
    assert empty == "No step was recorded: the job failed before its first step."
    assert page.locator("[data-metrics='train/policy_loss']").get_attribute("data-labels") == "policy"
    assert "critic" not in page.locator(".kv.mono").inner_text() and "group_size" in page.content()
    _shot(page, "job-failed.png")
    page.context.close()


def test_compare_colours_follow_the_job_and_labels_use_the_suffix(
    server: Server, chromium: Any, key: str, new_job: NewJob
) -> None:
    first, second = new_job(), new_job(algorithm="grpo")
    _set(server, first["id"], suffix="baseline")
    page = signed_in_page(chromium, server.base_url, key)
    colours = []
    for order in ((first, second), (second, first)):
        page.goto("/compare?" + "&".join(f"job={j['id']}" for j in order))
        series = json.loads(page.locator("#compare-data").inner_text())
        colours.append({s["id"]: s["color"] for s in series})
        labels = {s["id"]: s["label"] for s in series}
        assert labels[first["id"]] == "baseline (sppo)" and labels[second["id"]].startswith("grpo · ")
    assert colours[0] == colours[1]
    page.context.close()
