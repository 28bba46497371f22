"""`GET /v1/fine_tuning/jobs/{id}/samples` on a live server: the samples the worker's code wrote, by step."""

from collections.abc import Callable
from typing import Any

import httpx

from core.db import session_scope
from worker.records import replace_samples

from .conftest import Server, assert_error, method


def sample(index: int, completion: str, reward: float, **extra: Any) -> dict[str, Any]:
    return {"index": index, "prompt": "2+5=", "completion": completion, "reward": reward,
            "sub_rewards": {}, "truncated": False, **extra}  # fmt: skip


def add_samples(server: Server, job_id: str, samples: dict[int, list[dict[str, Any]]]) -> None:
    """Samples as the worker's reporter writes them (worker/records.py)."""
    with session_scope(server.db_url) as session:
        replace_samples(session, job_id, samples)
        session.commit()


def test_samples_by_step_in_pages_and_only_for_their_tenant(
    server: Server, api: httpx.Client, upload: Callable[..., dict[str, Any]]
) -> None:
    body = {"model": "sppo-tiny", "training_file": upload()["id"], "method": method(batch_size=2)}
    job_id = api.post("/v1/fine_tuning/jobs", json=body).json()["id"]
    url = f"/v1/fine_tuning/jobs/{job_id}/samples"
    assert api.get(url).json() == {"object": "list", "data": [], "has_more": False, "last_step": None}
    add_samples(server, job_id, {
        1: [sample(3, "7", 1.0, sub_rewards={"exact": 1.0, "short": 0.5}), sample(0, "<b>8</b>", 0.0)],
        2: [sample(1, "seven", 0.25, truncated=True)],
        3: [sample(2, "7", 1.0)],
    })  # fmt: skip

    first = api.get(url, params={"limit": 2}).json()
    assert [(s["object"], s["step"]) for s in first["data"]] == [
        ("fine_tuning.job.samples", 1),
        ("fine_tuning.job.samples", 2),
    ]
    assert (first["has_more"], first["last_step"]) == (True, 2)
    assert first["data"][0]["samples"] == [
        {"index": 0, "prompt": "2+5=", "completion": "<b>8</b>", "reward": 0.0, "sub_rewards": {},
         "truncated": False},
        {"index": 3, "prompt": "2+5=", "completion": "7", "reward": 1.0,
         "sub_rewards": {"exact": 1.0, "short": 0.5}, "truncated": False},
    ]  # fmt: skip
    rest = api.get(url, params={"limit": 2, "after_step": first["last_step"]}).json()
    assert [s["step"] for s in rest["data"]] == [3] and (rest["has_more"], rest["last_step"]) == (False, 3)
    only = api.get(url, params={"step": 2}).json()
    assert [(s["step"], s["samples"][0]["truncated"]) for s in only["data"]] == [(2, True)]
    assert api.get(url, params={"step": 9}).json()["data"] == []
    assert_error(api.get(url, params={"limit": 101}), 400)

    with server.client(server.new_key()) as other:
        assert_error(other.get(url), 404)
