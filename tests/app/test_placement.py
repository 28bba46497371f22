"""Jobs are routed by the devices they ask for; a job no worker offers is refused at creation."""

import base64
import json
from typing import Any

import httpx
import pytest
import redis

from cli.worker import default_queues
from core.queues import broker_lists, training_queue

from .conftest import DEVICE_COUNTS, Server, assert_error, method

HYPER = "method.reinforcement.hyperparameters"


def waiting_jobs(server: Server, queue: str) -> list[str]:
    """Job ids of the training messages waiting on `queue`."""
    client = redis.Redis.from_url(server.redis_url)
    messages = [json.loads(raw) for key in broker_lists(queue) for raw in client.lrange(key, 0, -1)]
    return [json.loads(base64.b64decode(m["body"]))[0][0] for m in messages]


def _create(api: httpx.Client, upload: Any, **hyper: Any) -> httpx.Response:
    body = {"model": "sppo-tiny", "training_file": upload()["id"], "method": method(**hyper)}
    return api.post("/v1/fine_tuning/jobs", json=body)


def test_a_job_waits_only_on_the_queue_of_its_device_count(
    server: Server, api: httpx.Client, upload: Any
) -> None:
    two = _create(api, upload, batch_size=8, n_devices=2)
    one = _create(api, upload, batch_size=8)
    assert two.status_code == 200 and one.status_code == 200, (two.text, one.text)
    two_id, one_id = two.json()["id"], one.json()["id"]
    assert two.json()["method"]["reinforcement"]["hyperparameters"]["n_devices"] == 2
    assert two_id in waiting_jobs(server, "training.devices.2")
    assert two_id not in waiting_jobs(server, "training")
    assert one_id in waiting_jobs(server, "training")
    assert one_id not in waiting_jobs(server, "training.devices.2")


def test_workers_consume_the_queue_of_the_devices_they_offer() -> None:
    assert default_queues(1) == "training,evaluation,webhooks"
    assert default_queues(2) == "training.devices.2,evaluation,webhooks"
    assert [training_queue(n) for n in DEVICE_COUNTS] == ["training", "training.devices.2"]


@pytest.mark.parametrize(
    ("hyper", "param"),
    [
        ({"n_devices": 4}, f"{HYPER}.n_devices"),  # no worker offers 4 devices: it would wait forever
        ({"n_devices": 0}, f"{HYPER}.n_devices"),
        ({"n_devices": 2, "batch_size": 7}, f"{HYPER}.batch_size"),  # 2 devices cannot share 7 prompts
        ({"n_devices": 2, "batch_size": 8, "minibatch_size": 3}, f"{HYPER}.minibatch_size"),
    ],
)
def test_a_job_no_worker_can_take_is_refused_naming_the_param(
    api: httpx.Client, upload: Any, hyper: dict[str, Any], param: str
) -> None:
    error = assert_error(_create(api, upload, **hyper), 400, param)
    if hyper.get("n_devices") == 4:
        assert "1, 2" in error["message"] and "SPPO_TRAINING_DEVICE_COUNTS" in error["message"]
