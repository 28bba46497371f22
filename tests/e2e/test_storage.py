"""Workers on "other hosts": the API and each worker have a data dir of their own and share only the
artifact store (`SPPO_ARTIFACT_STORE`, here a third directory as a file:// URL, through fsspec as an
object store would be), PostgreSQL and Redis.

A worker trains to its step-2 checkpoint and dies there; its data dir is deleted (the host is gone); a
worker with an empty data dir resumes the job from the store's checkpoint and finishes it; the adapter is
downloaded through the API, which never had a copy of anything, and an evaluation of the fine-tuned model
on the second worker reads its file and adapter from the store and writes its results there.
"""

import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from core.db import upgrade_database
from tests.conftest import free_port
from tests.e2e.conftest import (
    FINISHED,
    HEARTBEAT_S,
    LEASE_S,
    ROOT,
    Stack,
    _wait_http,
    events,
    jsonl,
    metric_steps,
    sppo_method,
    wait_for,
)
from worker.engine.fixtures import FIXTURE_GRADER, Fixture

TOTAL = 4  # 32 items, batch 8: checkpoints at steps 2 and 4


@pytest.fixture(scope="module")
def hosts(
    tmp_path_factory: pytest.TempPathFactory,
    tiny: Fixture,
    new_postgres_database: Callable[[], str],
    stack_redis_url: str,
) -> Iterator[tuple[Stack, Path]]:
    """An API on data dir `api`, the store in `store`; workers get their own data dirs."""
    root = tmp_path_factory.mktemp("sppo-hosts")
    api_dir, store = root / "api", root / "store"
    (api_dir / "logs").mkdir(parents=True)
    db_url = new_postgres_database()
    upgrade_database(db_url)
    port = free_port()
    env = {
        **os.environ,
        "SPPO_DATA_DIR": str(api_dir),
        "SPPO_ARTIFACT_STORE": store.as_uri(),
        "SPPO_DATABASE_URL": db_url,
        "SPPO_REDIS_URL": stack_redis_url,
        # queues of their own: the e2e stack's worker on the same Redis never takes these jobs
        "SPPO_REDIS_PREFIX": f"storage-{secrets.token_hex(4)}",
        "SPPO_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
        "SPPO_HEARTBEAT_LEASE_S": str(LEASE_S),
        "SPPO_REAPER_INTERVAL_S": "1",
        "SPPO_PREFLIGHT_ITEMS": "8",
        "SPPO_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
    }
    log = api_dir / "logs" / "api.log"
    with log.open("wb") as out:
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port), "--log-level", "info"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    stack = Stack(base_url=f"http://127.0.0.1:{port}", db_url=db_url, redis_url=stack_redis_url,
                  data_dir=api_dir, env=env)  # fmt: skip
    try:
        _wait_http(f"{stack.base_url}/health", api, log)
        yield stack, store
    finally:
        for process in [*stack.workers, api]:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def _upload(api: httpx.Client, content: bytes) -> str:
    uploaded = api.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("data.jsonl", content)})
    assert uploaded.status_code == 200, uploaded.text
    return str(uploaded.json()["id"])


def test_a_worker_with_an_empty_data_dir_resumes_from_the_store(
    hosts: tuple[Stack, Path], tiny: Fixture, tmp_path: Path
) -> None:
    stack, store = hosts
    api = stack.client(stack.new_key())
    file_id = _upload(api, jsonl(tiny.train_file, 0, 8 * TOTAL))
    assert (store / "files" / f"{file_id}.jsonl").is_file()
    assert not (stack.data_dir / "files").exists() or not any((stack.data_dir / "files").iterdir())
    content = api.get(f"/v1/files/{file_id}/content")  # streamed from the store
    assert content.status_code == 200 and content.content == jsonl(tiny.train_file, 0, 8 * TOTAL)

    first_host, second_host = tmp_path / "worker-a", tmp_path / "worker-b"
    # dies right after the step-2 checkpoint is published and its row written
    stack.start_worker("training", SPPO_DATA_DIR=str(first_host), SPPO_CRASH_AT="report.recorded@2")
    created = api.post("/v1/fine_tuning/jobs", json={
        "model": "sppo-tiny", "training_file": file_id,
        "method": sppo_method(checkpoint_interval=2, eval_interval=100),
    })  # fmt: skip
    assert created.status_code == 200, created.text
    job_id = created.json()["id"]
    stack.worker.wait(timeout=300)
    assert stack.worker.returncode != 0, "the first worker should have died at its step-2 checkpoint"
    assert (store / "jobs" / job_id / "run" / "checkpoints" / "step-000002" / "metrics.json").is_file()
    shutil.rmtree(first_host)  # that host is gone: only the store has the checkpoint

    stack.start_worker("training,evaluation", SPPO_DATA_DIR=str(second_host))
    done = wait_for(api, job_id, lambda job: job["status"] in FINISHED, timeout=300)
    assert done["status"] == "succeeded", done
    assert metric_steps(api, job_id) == list(range(1, TOTAL + 1))  # every step exactly once
    messages = [event["message"] for event in events(api, job_id)]
    assert f"Resumed from the checkpoint at step 2 of {TOTAL}" in messages

    checkpoints = api.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
    assert sorted(c["step_number"] for c in checkpoints) == [2, 4]
    for checkpoint in checkpoints:  # step 2's was written by the host that is gone
        archive = api.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints/{checkpoint['id']}/adapter")
        assert archive.status_code == 200, archive.text
        with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
            names = {Path(name).name for name in tar.getnames()}
            config = tar.extractfile(f"{checkpoint['id']}/adapter_config.json")
            assert config is not None and json.load(config)["base_model_name_or_path"] == "sppo-tiny"
        assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= names
    assert not (stack.data_dir / "jobs").exists()  # the API read everything from the store

    model = done["fine_tuned_model"]
    validation = _upload(api, jsonl(tiny.validation_file, 0, 4))
    evaluation = api.post(
        "/v1/evaluations", json={"model": model, "file": validation, "samples": 1, "grader": FIXTURE_GRADER}
    ).json()
    while evaluation["status"] not in FINISHED:  # the worker fetches the file and the adapter
        time.sleep(0.5)
        evaluation = api.get(f"/v1/evaluations/{evaluation['id']}").json()
    assert evaluation["status"] == "succeeded", evaluation
    assert (store / "jobs" / "evaluations" / f"{evaluation['id']}.jsonl").is_file()
    assert len(api.get(evaluation["results_url"]).text.splitlines()) == 4  # streamed from the store

    adapter = store / "jobs" / job_id / "run" / "final" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert api.delete(f"/v1/models/{model}").status_code == 200
    assert not adapter.exists()
    assert api.delete(f"/v1/files/{file_id}").status_code == 200
    assert not (store / "files" / f"{file_id}.jsonl").exists()
    with pytest.raises(httpx.HTTPStatusError):
        api.get(f"/v1/files/{file_id}/content").raise_for_status()
