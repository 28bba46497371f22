"""A job's experiment trackers fed from the reporter's callbacks: W&B (offline files) and a real MLflow
server hold the run; a tracker that fails or hangs is turned off with an event and an alarm, and never slows
a step."""

import secrets
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import get_sessionmaker
from core.models import Job, JobEvent
from core.sealing import seal
from core.settings import Settings
from tests.conftest import free_port, mlflow_metrics, mlflow_server, wandb_history
from tests.worker.conftest import MakeReporter
from worker.engine.callbacks import StartInfo
from worker.jobs import claim_job
from worker.reporting import JobReporter
from worker.trackers import job_trackers, mlflow_name
from worker.tracking import TrackedCallbacks

SAMPLE = {
    "index": 0,
    "prompt": "1+1=",
    "completion": "2",
    "reward": 1.0,
    "sub_rewards": {},
    "truncated": False,
}


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow"), free_port()) as url:
        yield url


def _job(
    session: Session, make_job: Callable[..., str], integrations: list[dict[str, Any]], **values: Any
) -> str:
    job_id = make_job(integrations=integrations, method={"reinforcement": {"algorithm": "sppo"}}, **values)
    assert claim_job(session, job_id=job_id, worker_id="w:1") is not None
    return job_id


def _run(settings: Settings, job_id: str, reporter: JobReporter, steps: int = 3) -> TrackedCallbacks:
    with get_sessionmaker(settings.db_url)() as session:
        job = session.get_one(Job, job_id)
    callbacks = TrackedCallbacks(
        reporter, job_trackers(job, settings=settings, hyperparameters={"batch_size": 4}), finish_timeout_s=30
    )
    callbacks.on_start(StartInfo(total_steps=steps, start_step=0, output_dir=settings.data_dir / "run"))
    for step in range(steps + 1):
        callbacks.on_samples(step, [SAMPLE])
        metrics = {"rollout/reward_mean": 0.25 * step, "train/policy_loss": 1.0 / (step + 1)}
        if step % 2 == 0:
            callbacks.on_evaluation(step, {"eval/pass@1": 0.5})
            metrics["eval/pass@1"] = 0.5
        callbacks.on_step(step, metrics)
    callbacks.close("completed")
    return callbacks


def test_metrics_reach_wandb_files_and_an_mlflow_server(
    settings: Settings,
    session: Session,
    make_job: Callable[..., str],
    reporter_for: MakeReporter,
    mlflow_url: str,
) -> None:
    settings = settings.model_copy(update={"wandb_mode": "offline", "mlflow_tracking_uris": [mlflow_url]})
    experiment = f"worker-{secrets.token_hex(4)}"  # the server is the module's; the test runs on each DB
    integrations = [
        {"type": "wandb", "wandb": {"project": "rft", "tags": ["mine"]}},
        {"type": "mlflow", "mlflow": {"experiment": experiment, "run_name": "first"}},
    ]
    job_id = _job(session, make_job, integrations, sealed_secrets={"wandb": seal(settings, "k" * 40)})
    _run(settings, job_id, reporter_for(job_id))

    history = wandb_history(settings.data_dir / "trackers" / job_id)
    steps = {row["_step"]: row for row in history if "train/policy_loss" in row}
    assert sorted(steps) == [0, 1, 2, 3]
    assert steps[3]["rollout/reward_mean"] == 0.75 and steps[2]["eval/pass@1"] == 0.5
    assert any(row.get("samples/_type") == "table-file" for row in history)  # the samples table

    series = mlflow_metrics(mlflow_url, experiment)
    assert series["train/policy_loss"] == {0: 1.0, 1: 0.5, 2: 1 / 3, 3: 0.25}
    assert series[mlflow_name("eval/pass@1")] == {0: 0.5, 2: 0.5}
    events = session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)).all()
    assert not [m for m in events if "logging stopped" in m]


def test_a_failing_tracker_is_turned_off_with_an_event_and_an_alarm_and_never_slows_a_step(
    settings: Settings, session: Session, make_job: Callable[..., str], reporter_for: MakeReporter
) -> None:
    # A server that accepts connections and never answers: each call would wait the whole timeout.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    settings = settings.model_copy(update={"mlflow_tracking_uris": [url], "tracker_timeout_s": 3.0})
    job_id = _job(session, make_job, [{"type": "mlflow", "mlflow": {"experiment": "e"}}])
    job_reporter = reporter_for(job_id)
    started = time.monotonic()
    with get_sessionmaker(settings.db_url)() as fresh:
        job = fresh.get_one(Job, job_id)
    callbacks = TrackedCallbacks(job_reporter, job_trackers(job, settings=settings, hyperparameters={}),
                                 finish_timeout_s=5)  # fmt: skip
    callbacks.on_start(StartInfo(total_steps=2, start_step=0, output_dir=settings.data_dir / "run"))
    for step in range(3):
        before = time.monotonic()
        callbacks.on_step(step, {"train/policy_loss": 1.0})
        assert time.monotonic() - before < 1.5  # enqueued, never waiting out the 3 s timeout on the server
    time.sleep(3.5)  # the first call's timeout
    callbacks.on_step(3, {"train/policy_loss": 1.0})
    callbacks.close("completed")
    assert time.monotonic() - started < 15
    silent.close()
    job_reporter.flush()

    session.expire_all()
    events = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id)).all()
    [stopped] = [e for e in events if "MLflow logging stopped" in e.message]
    assert stopped.level == "warn" and "ReadTimeout" in stopped.message
    assert stopped.data == {"alarm": "tracker_failed:mlflow", "step": 3}
    alarms = session.scalar(select(Job.alarms).where(Job.id == job_id))
    assert [(a["code"], a["active"]) for a in alarms or []] == [("tracker_failed:mlflow", True)]
