"""The dashboard in headless Chromium against the live server: sign in, live charts, cancel, new-job form.

Steps reach the page the way the worker sends them (records appended to the job's Redis stream), so the
page's EventSource, the SSE route and uPlot are all real; tests/e2e/ repeats this with a real training run.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis

from core.streams import encode_step, metrics_stream_key

from ..conftest import ITEM, Server
from .conftest import add_points, signed_in_page

NewJob = Callable[..., dict[str, Any]]


def test_sign_in_watch_steps_arrive_and_cancel(
    server: Server, chromium: Any, key: str, api: httpx.Client, new_job: NewJob
) -> None:
    job = new_job()
    page = signed_in_page(chromium, server.base_url, key)
    row = page.locator(f"tr[data-job-id='{job['id']}']")
    assert row.locator(".badge").inner_text() == "queued"

    row.locator("a").click()
    page.wait_for_url(f"**/jobs/{job['id']}")
    charts = page.locator("#charts")
    assert charts.get_attribute("data-points") == "0"
    assert page.locator("#charts .chart canvas").count() == 0

    live = redis.Redis.from_url(server.redis_url)
    for step in (1, 2, 3):
        metrics = {"rollout/reward_mean": step / 4, "train/policy_loss": 1 / step, "train/critic_loss": 0.5}
        live.xadd(metrics_stream_key(job["id"]), encode_step(step, metrics, 0))
        # attribute selectors, not a JS predicate: the page's CSP forbids the eval that would need
        page.wait_for_selector(f"#charts[data-points='{step}']", timeout=15_000)
    assert page.locator("#charts .chart[data-metrics='rollout/reward_mean'] canvas").count() == 1
    assert page.locator("#charts .chart[data-metrics='perf/tokens_per_s'] canvas").count() == 0  # no data yet

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[data-action='cancel']")
    page.wait_for_selector("#job-head .badge[data-status='cancelled']")
    assert page.locator("button[data-action]").count() == 0
    assert api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "cancelled"
    page.context.close()


def test_a_page_with_history_subscribes_after_its_last_step(
    server: Server, chromium: Any, key: str, new_job: NewJob
) -> None:
    job = new_job()
    add_points(server, job["id"], range(1, 4))  # what the DB has; the stream holds those steps too
    live = redis.Redis.from_url(server.redis_url)
    for step in (1, 2, 3, 4):
        live.xadd(metrics_stream_key(job["id"]), encode_step(step, {"rollout/reward_mean": step / 10}, 0))
    page = signed_in_page(chromium, server.base_url, key)
    streams: list[str] = []
    page.on("request", lambda request: streams.append(request.url) if "/stream" in request.url else None)
    page.goto(f"/jobs/{job['id']}")
    page.wait_for_selector("#charts[data-points='4']", timeout=15_000)  # 3 from the page, step 4 streamed
    assert streams == [f"{server.base_url}/ui/jobs/{job['id']}/stream?from=step-3"]
    live.xadd(metrics_stream_key(job["id"]), encode_step(5, {"rollout/reward_mean": 0.5}, 0))
    page.wait_for_selector("#charts[data-points='5']", timeout=15_000)
    page.context.close()


def test_new_job_form_in_the_browser(server: Server, chromium: Any, key: str, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(ITEM * 4)
    page = signed_in_page(
        chromium, server.base_url, key, color_scheme="dark", viewport={"width": 390, "height": 844}
    )
    page.click("header a[href='/jobs/new']")
    page.set_input_files("#training_file_upload", str(data))
    page.select_option("#algorithm", "grpo")
    page.fill("#batch_size", "0")
    page.click("form[action='/jobs/new'] button[type=submit]")
    error = page.locator("#form-error")
    assert "Invalid value for 'method.reinforcement.hyperparameters.batch_size'" in error.inner_text()
    assert page.locator(".field.invalid #batch_size").count() == 1

    page.fill("#batch_size", "2")  # the uploaded file stays selected: no second upload needed
    page.click("form[action='/jobs/new'] button[type=submit]")
    page.wait_for_url("**/jobs/ftjob-*")
    assert page.locator("#job-head").inner_text().count("grpo") == 1
    page.context.close()
