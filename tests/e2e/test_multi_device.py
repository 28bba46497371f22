"""A 2-device job through the whole service: the API routes it to the 2-device worker only, which runs it
on two torchrun ranks; rank 0's reports reach the DB and the metrics stream once per step."""

import pytest
from sqlalchemy import select

from app.db import session_scope
from app.models import Job
from tests.e2e.conftest import Stack, jsonl, metric_steps, sppo_method, wait_for
from worker.engine.fixtures import Fixture

pytestmark = pytest.mark.timeout(1200)

TRAIN_ITEMS, VALIDATION_ITEMS, BATCH = 16, 8, 8


def test_a_two_device_job_runs_on_the_two_device_worker(stack: Stack, key: str, tiny: Fixture) -> None:
    two_devices = stack.start_worker(queues="training.devices.2,evaluation", SPPO_WORKER_DEVICES="2")
    with stack.client(key) as api:
        files = [
            api.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": (name, content)}).json()["id"]
            for name, content in (
                ("train.jsonl", jsonl(tiny.train_file, 0, TRAIN_ITEMS)),
                ("valid.jsonl", jsonl(tiny.validation_file, 0, VALIDATION_ITEMS)),
            )
        ]
        response = api.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": "sppo-tiny", "training_file": files[0], "validation_file": files[1], "seed": 3,
                "method": sppo_method(batch_size=BATCH, n_devices=2, eval_interval=1, eval_samples=1),
            },
        )  # fmt: skip
        assert response.status_code == 200, response.text
        job = wait_for(api, response.json()["id"], lambda j: j["status"] in ("succeeded", "failed"))
        assert job["status"] == "succeeded", job["error"]
        assert metric_steps(api, job["id"]) == [0, 1, 2]  # step 0: the base model's score; each step once
        assert job["method"]["reinforcement"]["hyperparameters"]["n_devices"] == 2
        adapter = api.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"][0]
        assert (
            api.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints/{adapter['id']}/adapter").status_code
            == 200
        )
    with session_scope(stack.db_url) as session:
        worker_id = session.scalar(select(Job.worker_id).where(Job.id == job["id"]))
    assert worker_id is not None and worker_id.endswith(f":{two_devices.pid}")
