"""`/v1/fine_tuning/jobs`: create (validation, dispatch, quota), list, retrieve, control, events."""

import base64
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from core.db import session_scope
from core.lifecycle import transition
from core.models import Checkpoint, JobStatus
from core.queues import TRAIN_QUEUE, broker_lists

from .conftest import GRADER, MAX_JOBS, REGISTRY_CONTEXT, REGISTRY_MODEL, Server, assert_error, method

Upload = Callable[..., dict[str, Any]]
HYPER = "method.reinforcement.hyperparameters"


@pytest.fixture
def training_file(upload: Upload) -> str:
    return str(upload()["id"])


@pytest.fixture
def create(api: httpx.Client, training_file: str) -> Callable[..., dict[str, Any]]:
    def _create(**overrides: Any) -> dict[str, Any]:
        body = {
            "model": "sppo-tiny",
            "training_file": training_file,
            "method": method(batch_size=8),
            **overrides,
        }
        response = api.post("/v1/fine_tuning/jobs", json=body)
        assert response.status_code == 200, response.text
        return dict(response.json())

    return _create


def set_status(server: Server, job_id: str, frm: JobStatus, to: JobStatus) -> None:
    """Do what the worker does: a guarded transition."""
    with session_scope(server.db_url) as session:
        assert transition(session, job_id=job_id, expected=(frm,), to=to, message=f"test: {to}")


def queued_task_ids(server: Server) -> list[str]:
    """Job ids of the `sppo.train` messages waiting on the Celery `training` queue (a prefixed Redis list)."""
    client = redis.Redis.from_url(server.redis_url)
    messages = [json.loads(raw) for key in broker_lists(TRAIN_QUEUE) for raw in client.lrange(key, 0, -1)]
    assert all(m["headers"]["task"] == "sppo.train" for m in messages)
    return [json.loads(base64.b64decode(m["body"]))[0][0] for m in messages]  # body: [args, kwargs, embed]


def test_create_commits_queued_job_and_dispatches(
    server: Server, create: Callable[..., dict[str, Any]]
) -> None:
    job = create(seed=7, suffix="my-run", metadata={"team": "nlp"}, model=REGISTRY_MODEL)
    assert job["id"].startswith("ftjob-")
    assert job["object"] == "fine_tuning.job"
    assert job["status"] == "queued"
    assert job["seed"] == 7 and job["user_provided_suffix"] == "my-run" and job["metadata"] == {"team": "nlp"}
    assert job["model"] == REGISTRY_MODEL
    assert job["method"]["reinforcement"]["algorithm"] == "sppo"  # the default, made explicit
    assert job["method"]["reinforcement"]["grader"] == GRADER
    assert job["hyperparameters"]["batch_size"] == 8
    assert job["error"] is None and job["fine_tuned_model"] is None and job["result_files"] == []
    assert job["id"] in queued_task_ids(server)
    assert isinstance(create()["seed"], int)  # a seed is chosen when none is given


def test_a_job_chooses_its_precision(create: Callable[..., dict[str, Any]]) -> None:
    precision = {"dtype": "bfloat16", "gradient_checkpointing": True, "attn_implementation": "sdpa"}
    job = create(method=method(batch_size=8, **precision))
    hyperparameters = job["method"]["reinforcement"]["hyperparameters"]
    assert {name: hyperparameters[name] for name in precision} == precision


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"training_file": "file-missing"}, "training_file"),
        ({"validation_file": "file-missing"}, "validation_file"),
        ({"method": None}, "method"),
        ({"hyperparameters": {"n_epochs": 1}}, "hyperparameters"),
        ({"seed": "1"}, "seed"),
        ({"suffix": "has space"}, "suffix"),
        ({"method": {"type": "supervised", "reinforcement": method()["reinforcement"]}}, "method.type"),
        ({"method": {"type": "reinforcement"}}, "method.reinforcement"),
        ({"method": method(batch_size=0)}, "method.reinforcement.hyperparameters.batch_size"),
        ({"method": method(batch_size="8")}, "method.reinforcement.hyperparameters.batch_size"),
        ({"method": method(n_epochs=101)}, "method.reinforcement.hyperparameters.n_epochs"),
        (
            {"method": method(learning_rate_multiplier=0)},
            "method.reinforcement.hyperparameters.learning_rate_multiplier",
        ),
        ({"method": method(temperature=2.5)}, "method.reinforcement.hyperparameters.temperature"),
        ({"method": method(critic="tiny")}, "method.reinforcement.hyperparameters.critic"),
        (
            {"method": method(grpo_scale_by_std="yes")},
            "method.reinforcement.hyperparameters.grpo_scale_by_std",
        ),
        ({"method": method(warmup=3)}, "method.reinforcement.hyperparameters.warmup"),
        ({"method": method(compute_multiplier=0)}, "method.reinforcement.hyperparameters.compute_multiplier"),
        ({"method": method(compute_multiplier=9)}, "method.reinforcement.hyperparameters.compute_multiplier"),
        ({"method": method(reasoning_effort="max")}, "method.reinforcement.hyperparameters.reasoning_effort"),
        ({"method": method(model_selection="first")}, "method.reinforcement.hyperparameters.model_selection"),
        (
            {"method": method(early_stopping_patience=0)},
            "method.reinforcement.hyperparameters.early_stopping_patience",
        ),
        (
            {"method": method(early_stopping_patience=1.5)},
            "method.reinforcement.hyperparameters.early_stopping_patience",
        ),
        ({"method": method(dtype="float16")}, "method.reinforcement.hyperparameters.dtype"),
        (
            {"method": method(gradient_checkpointing="yes")},
            "method.reinforcement.hyperparameters.gradient_checkpointing",
        ),
        (
            {"method": method(attn_implementation="flash")},
            "method.reinforcement.hyperparameters.attn_implementation",
        ),
    ],
)
def test_create_validation_names_the_param(
    api: httpx.Client, training_file: str, change: dict[str, Any], param: str
) -> None:
    body = {"model": "sppo-tiny", "training_file": training_file, "method": method(), **change}
    body = {k: v for k, v in body.items() if v is not None}
    error = assert_error(api.post("/v1/fine_tuning/jobs", json=body), 400, param)
    assert "Traceback" not in error["message"]


def _with_grader(**grader: Any) -> dict[str, Any]:
    body = method()
    body["reinforcement"]["grader"] = {k: v for k, v in {**GRADER, **grader}.items() if v is not None}
    return body


@pytest.mark.parametrize(
    ("grader_method", "param"),
    [
        (_with_grader(type="pythonic"), "method.reinforcement.grader.type"),
        (_with_grader(reference="{{item.meta.gold}}"), "method.reinforcement.grader.reference"),
        (
            {
                **method(),
                "reinforcement": {
                    **method()["reinforcement"],
                    "grader": {
                        "type": "multi",
                        "name": "m",
                        "calculate_output": "a + b",
                        "graders": {"a": {**GRADER, "reference": "{{item.nope}}"}},
                    },
                },
            },
            "method.reinforcement.grader.calculate_output",
        ),
        (
            {
                **method(),
                "reinforcement": {
                    **method()["reinforcement"],
                    "grader": {
                        "type": "multi",
                        "name": "m",
                        "calculate_output": "a",
                        "graders": {"a": {**GRADER, "reference": "{{item.nope}}"}},
                    },
                },
            },
            "method.reinforcement.grader.graders.a.reference",
        ),
        (
            {
                **method(),
                "reinforcement": {
                    **method()["reinforcement"],
                    "grader": {
                        "type": "score_model",
                        "name": "judge",
                        "model": "no-such-model",
                        "input": [{"role": "user", "content": "Rate {{sample.output_text}}"}],
                    },
                },
            },
            "method.reinforcement.grader.model",
        ),
        (
            _with_grader(type="python", source="def grade(:", input=None, reference=None, operation=None),
            "method.reinforcement.grader.source",
        ),
        (_with_grader(operation="startswith"), "method.reinforcement.grader.operation"),
        (_with_grader(extra=1), "method.reinforcement.grader.extra"),
        (_with_grader(reference="{{item.answer.__class__}}"), "method.reinforcement.grader.reference"),
        (_with_grader(input="{{ sample.text }}"), "method.reinforcement.grader.input"),
        (_with_grader(reference="{{item.solution}}"), "method.reinforcement.grader.reference"),
        (_with_grader(type="regex", pattern="(a)(b)", operation="eq"), "method.reinforcement.grader.pattern"),
        (_with_grader(type="math", operation="eq"), "method.reinforcement.grader.operation"),
        (
            {**method(), "reinforcement": {**method()["reinforcement"], "algorithm": "dpo"}},
            "method.reinforcement.algorithm",
        ),
    ],
)
def test_grader_validation(
    api: httpx.Client, training_file: str, grader_method: dict[str, Any], param: str
) -> None:
    body = {"model": "sppo-tiny", "training_file": training_file, "method": grader_method}
    assert_error(api.post("/v1/fine_tuning/jobs", json=body), 400, param)


def test_every_grader_type_and_algorithm_is_accepted(
    api: httpx.Client, create: Callable[..., dict[str, Any]]
) -> None:
    regex = {**GRADER, "type": "regex", "pattern": r"answer:\s*(\d+)"}
    math = {k: v for k, v in GRADER.items() if k != "operation"} | {"type": "math"}
    python = {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 0.5\n"}
    similarity = {**math, "type": "text_similarity", "evaluation_metric": "rouge_l"}
    graders = {"p": python, "s": similarity}
    multi = {"type": "multi", "name": "m", "graders": graders, "calculate_output": "p*s"}
    for algorithm, grader in (("grpo", regex), ("ppo", math), ("reinforce", multi), ("sppo", python)):
        # (reasoning_effort "low" would be 1024 response tokens: more than sppo-tiny's context holds)
        body = method(n_epochs="auto", group_size=4, gae_lambda=0.9, max_response_tokens=16)
        body["reinforcement"] |= {"algorithm": algorithm, "grader": grader}
        job = create(method=body)
        assert job["method"]["reinforcement"]["algorithm"] == algorithm
        hyper = job["method"]["reinforcement"]["hyperparameters"]  # resolved as soon as the job exists
        assert (hyper["n_epochs"], hyper["group_size"], hyper["gae_lambda"]) == (1, 4, 0.9)
        assert hyper["max_response_tokens"] == 16 and "reasoning_effort" not in hyper
        assert hyper["samples_per_step"] == hyper["batch_size"] * 4
        assert job["status"] == "queued"
        api.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")  # within the tenant's concurrent-jobs quota


def test_list_pagination_and_metadata_filter(
    api: httpx.Client, create: Callable[..., dict[str, Any]]
) -> None:
    a = create(metadata={"run": "a"})
    b = create(metadata={"run": "b", "team": "x"})
    c = create(metadata={"run": "c", "team": "x"})
    page1 = api.get("/v1/fine_tuning/jobs", params={"limit": 2}).json()
    assert page1["object"] == "list" and page1["has_more"] is True
    page2 = api.get("/v1/fine_tuning/jobs", params={"limit": 2, "after": page1["data"][-1]["id"]}).json()
    assert page2["has_more"] is False
    ids = [j["id"] for j in page1["data"] + page2["data"]]
    assert sorted(ids) == sorted([a["id"], b["id"], c["id"]])
    listed = {j["id"]: j["created_at"] for j in page1["data"] + page2["data"]}
    assert [listed[i] for i in ids] == sorted(listed.values(), reverse=True)  # newest first
    team = api.get("/v1/fine_tuning/jobs", params={"metadata[team]": "x"}).json()["data"]
    assert sorted(j["id"] for j in team) == sorted([b["id"], c["id"]])
    one = api.get("/v1/fine_tuning/jobs", params={"metadata[team]": "x", "metadata[run]": "b"}).json()["data"]
    assert [j["id"] for j in one] == [b["id"]]
    assert api.get("/v1/fine_tuning/jobs", params={"metadata[team]": "y"}).json()["data"] == []
    assert_error(api.get("/v1/fine_tuning/jobs", params={"metadata": "x"}), 400, "metadata")
    assert_error(api.get("/v1/fine_tuning/jobs", params={"limit": 101}), 400, "limit")
    assert api.get(f"/v1/fine_tuning/jobs/{a['id']}").json()["id"] == a["id"]
    assert_error(api.get("/v1/fine_tuning/jobs/ftjob-missing"), 404)


def test_quota_is_429(api: httpx.Client, create: Callable[..., dict[str, Any]], training_file: str) -> None:
    jobs = [create() for _ in range(MAX_JOBS)]
    body = {"model": "sppo-tiny", "training_file": training_file, "method": method()}
    error = assert_error(api.post("/v1/fine_tuning/jobs", json=body), 429)
    assert error["type"] == "rate_limit_error"
    api.post(f"/v1/fine_tuning/jobs/{jobs[0]['id']}/cancel")
    assert api.post("/v1/fine_tuning/jobs", json=body).status_code == 200


def control_flag(server: Server, job_id: str) -> bytes | None:
    value = redis.Redis.from_url(server.redis_url).get(f"sppo:jobs:{job_id}:control")
    return value if value is None else bytes(value)


def test_cancel(server: Server, api: httpx.Client, create: Callable[..., dict[str, Any]]) -> None:
    queued = create()
    cancelled = api.post(f"/v1/fine_tuning/jobs/{queued['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    assert (
        api.post(f"/v1/fine_tuning/jobs/{queued['id']}/cancel").json()["status"] == "cancelled"
    )  # idempotent
    assert control_flag(server, queued["id"]) is None  # no worker holds a queued job

    running = create()
    set_status(server, running["id"], JobStatus.queued, JobStatus.running)
    assert api.post(f"/v1/fine_tuning/jobs/{running['id']}/cancel").json()["status"] == "cancelled"
    assert control_flag(server, running["id"]) == b"cancel"

    done = create()
    set_status(server, done["id"], JobStatus.queued, JobStatus.running)
    set_status(server, done["id"], JobStatus.running, JobStatus.succeeded)
    assert_error(api.post(f"/v1/fine_tuning/jobs/{done['id']}/cancel"), 409)
    assert_error(api.post("/v1/fine_tuning/jobs/ftjob-missing/cancel"), 404)


def test_pause_and_resume(server: Server, api: httpx.Client, create: Callable[..., dict[str, Any]]) -> None:
    job = create()
    set_status(server, job["id"], JobStatus.queued, JobStatus.running)
    paused = api.post(f"/v1/fine_tuning/jobs/{job['id']}/pause").json()
    assert paused["status"] == "running"  # the worker checkpoints, then moves it to paused
    assert control_flag(server, job["id"]) == b"pause"
    set_status(server, job["id"], JobStatus.running, JobStatus.paused)
    assert api.post(f"/v1/fine_tuning/jobs/{job['id']}/pause").json()["status"] == "paused"  # idempotent

    before = queued_task_ids(server).count(job["id"])
    resumed = api.post(f"/v1/fine_tuning/jobs/{job['id']}/resume").json()
    assert resumed["status"] == "queued"
    assert control_flag(server, job["id"]) is None  # a stale pause flag would stop the resumed run
    assert queued_task_ids(server).count(job["id"]) == before + 1
    assert api.post(f"/v1/fine_tuning/jobs/{job['id']}/resume").json()["status"] == "queued"  # idempotent

    # A queued job pauses at once; a finished job can neither pause nor resume.
    assert api.post(f"/v1/fine_tuning/jobs/{job['id']}/pause").json()["status"] == "paused"
    api.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert_error(api.post(f"/v1/fine_tuning/jobs/{job['id']}/pause"), 409)
    assert_error(api.post(f"/v1/fine_tuning/jobs/{job['id']}/resume"), 409)


def _fail(server: Server, job_id: str, code: str, **values: Any) -> None:
    """Run the job and fail it with `code`, as the worker or the reaper does."""
    set_status(server, job_id, JobStatus.queued, JobStatus.running)
    with session_scope(server.db_url) as session:
        running = (JobStatus.running,)
        assert transition(
            session, job_id=job_id, expected=running, to=JobStatus.failed, message=f"test: {code}",
            error_code=code, error_message=f"failed with {code}", **values,
        )  # fmt: skip
        session.commit()


def test_a_job_failed_through_no_fault_of_its_request_resumes_from_its_checkpoint(
    server: Server, api: httpx.Client, create: Callable[..., dict[str, Any]]
) -> None:
    job = create()
    _fail(server, job["id"], "worker_lost", attempt=3, worker_losses=7)
    with session_scope(server.db_url) as session:
        session.add(Checkpoint(job_id=job["id"], step_number=27, fine_tuned_model_checkpoint="m", uri="u"))
        session.commit()
    failed = api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert (failed["attempt"], failed["worker_losses"], failed["error"]["code"]) == (3, 7, "worker_lost")

    before = queued_task_ids(server).count(job["id"])
    resumed = api.post(f"/v1/fine_tuning/jobs/{job['id']}/resume").json()
    assert resumed["status"] == "queued" and resumed["error"] is None and resumed["finished_at"] is None
    assert (resumed["attempt"], resumed["worker_losses"]) == (0, 0)  # a fresh set; the event keeps the old
    assert queued_task_ids(server).count(job["id"]) == before + 1
    event = api.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 1}).json()["data"][0]
    assert event["message"] == (
        "Job resumed after failing with worker_lost; it continues from the checkpoint at step 27 with its "
        "attempts renewed"
    )
    assert event["data"] == {
        "status": "queued", "code": "worker_lost", "attempt": 3, "worker_losses": 7, "checkpoint_step": 27,
    }  # fmt: skip

    crashed = create()
    _fail(server, crashed["id"], "internal_error")
    assert api.post(f"/v1/fine_tuning/jobs/{crashed['id']}/resume").json()["status"] == "queued"


@pytest.mark.parametrize("code", ["invalid_config", "invalid_training_file", "invalid_grader"])
def test_a_job_failed_by_its_request_cannot_be_resumed(
    server: Server, api: httpx.Client, create: Callable[..., dict[str, Any]], code: str
) -> None:
    job = create()
    _fail(server, job["id"], code)
    error = assert_error(api.post(f"/v1/fine_tuning/jobs/{job['id']}/resume"), 409)
    assert f"failed with {code}, which running it again would not fix" in error["message"]
    assert api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "failed"


def test_events_pagination(api: httpx.Client, create: Callable[..., dict[str, Any]]) -> None:
    job = create()
    api.post(f"/v1/fine_tuning/jobs/{job['id']}/pause")
    api.post(f"/v1/fine_tuning/jobs/{job['id']}/resume")
    api.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    events = api.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()
    messages = [e["message"] for e in events["data"]]
    assert messages == ["Job cancelled by the user", "Job resumed", "Job paused", "Created fine-tuning job"]
    assert all(
        e["object"] == "fine_tuning.job.event" and e["id"].startswith("ftevent-") for e in events["data"]
    )
    assert events["data"][0]["data"]["status"] == "cancelled" and events["data"][0]["level"] == "info"
    first = api.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 3}).json()
    assert first["has_more"] is True
    rest = api.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"after": first["last_id"]}).json()
    assert [e["message"] for e in first["data"] + rest["data"]] == messages and rest["has_more"] is False
    assert_error(api.get("/v1/fine_tuning/jobs/ftjob-missing/events"), 404)
    assert_error(
        api.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"after": "ftevent-x"}), 400, "after"
    )


def test_checkpoints(server: Server, api: httpx.Client, create: Callable[..., dict[str, Any]]) -> None:
    job = create()
    empty = api.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()
    assert empty == {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}
    with session_scope(server.db_url) as session:  # what the worker writes
        for step in (10, 20):
            session.add(
                Checkpoint(
                    job_id=job["id"],
                    step_number=step,
                    fine_tuned_model_checkpoint=f"ft:sppo-tiny:{job['id']}:ckpt-step-{step}",
                    uri=f"artifacts/{job['id']}/step-{step}",
                    metrics={"rollout/reward_mean": step / 100},
                )
            )
    listed = api.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
    assert [c["step_number"] for c in listed] == [20, 10]
    assert (
        listed[0]["object"] == "fine_tuning.job.checkpoint" and listed[0]["fine_tuning_job_id"] == job["id"]
    )
    assert listed[0]["metrics"] == {"rollout/reward_mean": 0.2}
    assert_error(api.get("/v1/fine_tuning/jobs/ftjob-missing/checkpoints"), 404)


def test_file_in_use_cannot_be_deleted(api: httpx.Client, create: Callable[..., dict[str, Any]]) -> None:
    job = create()
    assert_error(api.delete(f"/v1/files/{job['training_file']}"), 409)
    api.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert api.delete(f"/v1/files/{job['training_file']}").status_code == 200
    assert api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["training_file"] == job["training_file"]


def test_settings_that_cannot_work_with_the_model_or_file_are_400s(
    api: httpx.Client, training_file: str, create: Callable[..., dict[str, Any]]
) -> None:
    hyper = "method.reinforcement.hyperparameters"
    body = {"model": REGISTRY_MODEL, "training_file": training_file}
    too_long = api.post("/v1/fine_tuning/jobs", json={**body, "method": method(max_response_tokens=4096)})
    error = assert_error(too_long, 400, f"{hyper}.max_response_tokens")
    assert f"the model's context of {REGISTRY_CONTEXT} positions" in error["message"]
    too_big = api.post("/v1/fine_tuning/jobs", json={**body, "method": method(batch_size=4096)})
    assert "larger than the 8 items" in assert_error(too_big, 400, f"{hyper}.batch_size")["message"]
    # legal but surprising: a response budget below the model's recommended one is a warning event
    job = create(model=REGISTRY_MODEL, method=method(max_response_tokens=16))
    events = api.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]
    assert any(e["level"] == "warn" and "below the 32 that model" in e["message"] for e in events)
    assert job["alarms"] == [] and job["status_detail"] is None


def test_a_hyperparameter_named_as_elsewhere_points_at_ours(api: httpx.Client, training_file: str) -> None:
    body = {"model": "sppo-tiny", "training_file": training_file, "method": method(learning_rate=1e-4)}
    error = assert_error(api.post("/v1/fine_tuning/jobs", json=body), 400,
                         "method.reinforcement.hyperparameters.learning_rate")  # fmt: skip
    assert (
        error["message"].startswith("Unknown parameter") and "'learning_rate_multiplier'" in error["message"]
    )
    body["method"] = method(warmup=3)  # no hint for a name nobody uses elsewhere
    assert assert_error(api.post("/v1/fine_tuning/jobs", json=body), 400)["message"].endswith("warmup'.")


def test_model_selection_and_early_stopping_need_a_validation_file(
    api: httpx.Client, training_file: str, create: Callable[..., dict[str, Any]]
) -> None:
    hyper = "method.reinforcement.hyperparameters"
    body = {"model": "sppo-tiny", "training_file": training_file}
    best = api.post("/v1/fine_tuning/jobs", json={**body, "method": method(model_selection="best")})
    assert (
        "no validation_file: add one, or use 'last'"
        in assert_error(best, 400, f"{hyper}.model_selection")["message"]
    )
    stopping = api.post("/v1/fine_tuning/jobs", json={**body, "method": method(early_stopping_patience=3)})
    assert_error(stopping, 400, f"{hyper}.early_stopping_patience")
    assert create(method=method(model_selection="last"))["status"] == "queued"
    job = create(
        validation_file=training_file, method=method(model_selection="best", early_stopping_patience=3)
    )
    asked = job["method"]["reinforcement"]["hyperparameters"]
    assert asked["model_selection"] == "best" and asked["early_stopping_patience"] == 3
    assert job["fine_tuned_model_step"] is None


def rl_method(algorithm: str = "sppo", **hyperparameters: Any) -> dict[str, Any]:
    body = method(**hyperparameters)
    body["reinforcement"]["algorithm"] = algorithm
    return body


GRPO_GROUP = "grpo needs at least 2 samples per prompt to form a group baseline."
SHARED_LORA = "A shared_lora critic needs a frozen base: set use_lora to true."
KL_PENALTY = "A KL penalty needs use_lora: true."


@pytest.mark.parametrize(
    ("job_method", "param", "message"),
    [
        (rl_method("grpo", group_size=1), "group_size", GRPO_GROUP),
        (rl_method("grpo", compute_multiplier=0.1), "compute_multiplier", GRPO_GROUP),  # 8 x 0.1: one sample
        (
            rl_method(critic="shared_lora", critic_layers=2),
            "critic_layers",
            "Only a separate critic can have fewer layers (a shared_lora critic is the policy's base).",
        ),
    ],
)
def test_hyperparameters_at_odds_are_refused_with_the_engines_message(
    api: httpx.Client, training_file: str, job_method: dict[str, Any], param: str, message: str
) -> None:
    body = {"model": "sppo-tiny", "training_file": training_file, "method": job_method}
    error = assert_error(api.post("/v1/fine_tuning/jobs", json=body), 400, f"{HYPER}.{param}")
    assert error["message"] == message and error["type"] == "invalid_request_error"


@pytest.fixture
def registry_model(server: Server) -> Iterator[Callable[[dict[str, Any]], str]]:
    """Adds a registry model with these sppo_defaults.json (removed after the test: the server is shared)."""
    added: list[Path] = []

    def _add(defaults: dict[str, Any]) -> str:
        name = f"acme/defaults-{len(added)}"
        model_dir = server.data_dir / "registry" / name
        model_dir.mkdir(parents=True)
        (model_dir / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
        (model_dir / "model.safetensors").write_bytes(b"")
        (model_dir / "tokenizer.json").write_text("{}")
        (model_dir / "sppo_defaults.json").write_text(json.dumps({"max_response_tokens": 32, **defaults}))
        added.append(model_dir)
        return name

    yield _add
    for model_dir in added:
        shutil.rmtree(model_dir)


@pytest.mark.parametrize(
    ("job_method", "param", "message"),
    [
        (rl_method(critic="shared_lora"), "critic", SHARED_LORA),
        (rl_method(kl_coef=0.05), "kl_coef", KL_PENALTY),
    ],
)
def test_a_conflict_the_models_defaults_bring_is_refused_at_creation(
    api: httpx.Client,
    training_file: str,
    registry_model: Callable[[dict[str, Any]], str],
    job_method: dict[str, Any],
    param: str,
    message: str,
) -> None:
    body = {
        "model": registry_model({"use_lora": False}),
        "training_file": training_file,
        "method": job_method,
    }
    error = assert_error(api.post("/v1/fine_tuning/jobs", json=body), 400, f"{HYPER}.{param}")
    assert error["message"] == message
    # the same job on a model trained with LoRA is accepted
    assert api.post("/v1/fine_tuning/jobs", json={**body, "model": "sppo-tiny"}).status_code == 200


def test_a_models_smaller_critic_is_for_a_separate_critic_only(
    create: Callable[..., dict[str, Any]], registry_model: Callable[[dict[str, Any]], str]
) -> None:
    model = registry_model({"critic_layers": 2})
    separate = create(model=model, method=method(batch_size=8))
    assert separate["method"]["reinforcement"]["hyperparameters"]["critic_layers"] == 2
    # the engine gives a shared_lora critic the policy's whole base, and so the job is no conflict
    shared = create(model=model, method=method(batch_size=8, critic="shared_lora"))
    assert shared["method"]["reinforcement"]["hyperparameters"]["critic_layers"] is None
