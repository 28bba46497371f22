"""Where `GET /v1/fine_tuning/jobs/{id}/metrics/stream` starts: a bare subscription gets the stream's newest
`stream_tail_records`, `from` and Last-Event-ID resume exactly after their id (the header, sent on a
reconnect, wins). Records go into the live server's Redis as the worker writes them; the job is cancelled
first, so each stream sends what it has and ends."""

from typing import Any

import httpx
import redis

from core.settings import Settings
from core.streams import encode_step, metrics_stream_key

from .conftest import Server, assert_error, method, sse_events

TAIL = Settings.model_fields["stream_tail_records"].default
JOBS = "/v1/fine_tuning/jobs"


def finished_job_with_steps(
    server: Server, api: httpx.Client, training_file: str, steps: range
) -> tuple[str, list[str]]:
    """A cancelled job whose stream holds a record per step: (job id, the records' stream ids)."""
    job = api.post(
        JOBS, json={"model": "sppo-tiny", "training_file": training_file, "method": method(batch_size=2)}
    )
    assert job.status_code == 200, job.text
    job_id = job.json()["id"]
    live = redis.Redis.from_url(server.redis_url)
    pipe = live.pipeline()
    for step in steps:
        pipe.xadd(metrics_stream_key(job_id), encode_step(step, {"rollout/reward_mean": step / 10}, 0))
    ids = [entry_id.decode() for entry_id in pipe.execute()]
    assert api.post(f"{JOBS}/{job_id}/cancel").status_code == 200
    return job_id, ids


def streamed_steps(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    events = sse_events(response)
    assert events[-1] == ("end", {"status": "cancelled"})
    return [data["step"] for event, data in events[:-1]]


def test_a_bare_subscription_replays_only_the_newest_records(
    server: Server, api: httpx.Client, upload: Any
) -> None:
    job_id, _ = finished_job_with_steps(server, api, upload()["id"], range(1, TAIL + 4))
    assert TAIL == 100
    assert streamed_steps(api.get(f"{JOBS}/{job_id}/metrics/stream")) == list(range(4, TAIL + 4))
    # `from=0-0` asks for the whole stream
    everything = api.get(f"{JOBS}/{job_id}/metrics/stream", params={"from": "0-0"})
    assert streamed_steps(everything) == list(range(1, TAIL + 4))


def test_from_and_last_event_id_resume_exactly_after_their_id(
    server: Server, api: httpx.Client, upload: Any
) -> None:
    job_id, ids = finished_job_with_steps(server, api, upload()["id"], range(1, 6))
    path = f"{JOBS}/{job_id}/metrics/stream"
    assert streamed_steps(api.get(path, params={"from": ids[1]})) == [3, 4, 5]
    # what a page that loaded steps 1-3 from `/metrics` asks for
    assert streamed_steps(api.get(path, params={"from": "step-3"})) == [4, 5]
    assert streamed_steps(api.get(path, headers={"Last-Event-ID": ids[3]})) == [5]
    # a reconnect sends both (EventSource keeps its URL): the last id received wins
    both = api.get(path, params={"from": ids[0]}, headers={"Last-Event-ID": ids[3]})
    assert streamed_steps(both) == [5]
    assert streamed_steps(api.get(path, params={"from": ids[4]})) == []
    for bad in ("step-x", "1-2-3", "18446744073709551616-0"):
        assert_error(api.get(path, params={"from": bad}), 400, "from")
