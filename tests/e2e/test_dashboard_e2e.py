"""The dashboard and the `sppo` client on real training runs (uvicorn + Celery worker + sppo-tiny on CPU).

The browser tests save the README's screenshots (docs/screenshots/): the jobs list, a running job and
the compare view of an SPPO and a GRPO run on the same data.
"""

import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from worker.engine.fixtures import FIXTURE_GRADER, Fixture

from ..app.web import conftest as web
from ..cli.conftest import run_sppo
from .conftest import Stack, jsonl, sppo_method, wait_for

chromium = web.chromium  # the browser tests' Chromium fixture (pytest finds fixtures by module attribute)
TRAIN_ITEMS, BATCH = 24, 8  # 3 steps
VALIDATION_ITEMS = 8


@pytest.fixture(autouse=True)
def live_worker(stack: Stack) -> None:
    """A worker that is up: the control tests before these kill and stop workers on purpose."""
    if not stack.workers or stack.worker.poll() is not None:
        stack.start_worker()


def create_job(
    api: httpx.Client, tiny: Fixture, algorithm: str = "sppo", validate: bool = False, **hyper: Any
) -> dict[str, Any]:
    def upload(path: Path, count: int) -> str:
        files = {"file": (path.name, jsonl(path, 0, count))}
        return str(api.post("/v1/files", data={"purpose": "fine-tune"}, files=files).json()["id"])

    # A cooler temperature than the fixture's 1.0 gets some rewards out of a 3-step run for the charts.
    method = sppo_method(batch_size=BATCH, eval_interval=2, temperature=0.7, **hyper)
    method["reinforcement"]["algorithm"] = algorithm
    body = {"model": "sppo-tiny", "training_file": upload(tiny.train_file, TRAIN_ITEMS), "method": method}
    if validate:
        body["validation_file"] = upload(tiny.validation_file, VALIDATION_ITEMS)
    job = api.post("/v1/fine_tuning/jobs", json=body)
    assert job.status_code == 200, job.text
    return dict(job.json())


def shot(page: Any, name: str) -> None:
    web.SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    # Crop to the content: a short page should not come with a screen of empty background.
    height = int(page.evaluate("Math.ceil(document.querySelector('main').getBoundingClientRect().bottom)"))
    page.set_viewport_size({"width": 1280, "height": max(height, 400)})
    page.screenshot(path=str(web.SCREENSHOTS / name))
    page.set_viewport_size({"width": 1280, "height": 860})


def test_dashboard_follows_a_real_run(
    stack: Stack, chromium: Any, key: str, api: httpx.Client, tiny: Fixture, tmp_path: Path
) -> None:
    sppo = create_job(api, tiny, validate=True)
    grpo = create_job(api, tiny, "grpo", group_size=2)  # runs next on the one worker, for the compare view
    page = web.signed_in_page(chromium, stack.base_url, key)
    page.wait_for_selector(f"tr[data-job-id='{sppo['id']}']")  # the job appears in the list

    page.goto(f"/jobs/{sppo['id']}")
    # The charts move as steps arrive over the stream: 1 point, then more, while the job runs.
    # attribute selectors, not JS predicates: the page's CSP forbids the eval those would need
    page.wait_for_selector("#charts:not([data-points='0'])", timeout=180_000)
    page.wait_for_selector("#charts:not([data-points='0']):not([data-points='1'])", timeout=120_000)
    assert page.locator("#charts .chart[data-metrics='rollout/reward_mean'] canvas").count() == 1
    if page.locator("#job-head[data-status='running']").count():
        shot(page, "job-running.png")
    page.wait_for_selector("#job-head[data-status='succeeded']", timeout=240_000)
    # step 0 (the base model's evaluation on the validation file) and every training step
    assert page.locator("#charts").get_attribute("data-points") == str(TRAIN_ITEMS // BATCH + 1)

    with page.expect_download() as download_info:
        page.locator("a[data-checkpoint]").first.click()
    archive = tmp_path / "adapter.tar.gz"
    download_info.value.save_as(archive)
    with tarfile.open(archive) as bundle:
        assert any(name.endswith("adapter_config.json") for name in bundle.getnames())

    # The GRPO run on the same data, then both on one chart, by step and by wall-clock.
    wait_for(api, grpo["id"], lambda job: job["status"] in ("succeeded", "failed", "cancelled"))
    page.goto("/")
    shot(page, "jobs-list.png")
    page.goto(f"/compare?job={sppo['id']}&job={grpo['id']}")
    page.wait_for_selector("#compare-chart canvas")
    shot(page, "compare.png")
    page.click("button[data-x='samples']")
    page.wait_for_selector("#compare-chart[data-mode='samples'] canvas")
    page.click("button[data-x='time']")
    page.wait_for_selector("#compare-chart[data-mode='time'] canvas")
    page.context.close()


def test_cancel_a_running_job_from_its_page(
    stack: Stack, chromium: Any, key: str, api: httpx.Client, tiny: Fixture
) -> None:
    job = create_job(api, tiny, n_epochs=4)
    wait_for(api, job["id"], lambda j: j["status"] == "running" and j["current_step"] >= 1)
    page = web.signed_in_page(chromium, stack.base_url, key)
    page.goto(f"/jobs/{job['id']}")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[data-action='cancel']")
    page.wait_for_selector("#job-head .badge[data-status='cancelled']")
    final = wait_for(api, job["id"], lambda j: j["status"] == "cancelled")
    assert final["current_step"] < final["total_steps"]
    page.context.close()


def test_cli_upload_create_watch_download(stack: Stack, key: str, tiny: Fixture, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_bytes(jsonl(tiny.train_file, 0, TRAIN_ITEMS))

    def sppo(*args: str) -> subprocess.CompletedProcess[str]:
        return run_sppo(stack.base_url, key, *args, cwd=tmp_path)

    uploaded = sppo("files", "upload", str(data), "--json")
    file_id = json.loads(uploaded.stdout)["id"]
    created = sppo(
        "jobs", "create", "--model", "sppo-tiny", "--training-file", file_id,
        "--grader", json.dumps(FIXTURE_GRADER), "-H", f"batch_size={BATCH}", "-H", "checkpoint_interval=2",
        "-H", "eval_samples=2", "--json",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    job_id = json.loads(created.stdout)["id"]
    watched = sppo("jobs", "watch", job_id)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "succeeded" in watched.stdout and "rollout/reward_mean" in watched.stdout
    # piped, it prints a line per step as the job goes (nothing redrawn, nothing held back to the end)
    steps = [line for line in watched.stdout.splitlines() if line.startswith("running  step ")]
    assert len(steps) >= 2 and "elapsed" in steps[-1] and "rollout/reward_mean" in steps[-1]

    downloaded = sppo("jobs", "download", job_id, "--output", "adapter")
    assert downloaded.returncode == 0, downloaded.stderr
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
