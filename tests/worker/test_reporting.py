"""The job reporter (the trainer's callbacks) against real databases and Redis, without a trainer."""

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.services.reaper import reap_once
from core.lifecycle import transition
from core.models import Checkpoint, Job, JobEvent, JobStatus, MetricPoint, TrainingSample, now
from core.queues import control_key
from core.settings import Settings
from core.streams import decode_step, metrics_stream_key
from tests.worker.conftest import MakeReporter
from worker.engine.callbacks import StartInfo
from worker.reporting import JobReporter

S = JobStatus
Reporter = Callable[[], JobReporter]


@pytest.fixture
def reporter(reporter_for: MakeReporter, job_id: str) -> Reporter:
    return lambda: reporter_for(job_id)


def _stream_steps(settings: Settings, job_id: str) -> list[int]:
    client = redis.Redis.from_url(str(settings.redis_url))
    return [decode_step(fields)["step"] for _, fields in client.xrange(metrics_stream_key(job_id))]


def _points(session: Session, job_id: str) -> dict[int, float]:
    rows = session.execute(select(MetricPoint.step, MetricPoint.metrics).where(MetricPoint.job_id == job_id))
    return {step: metrics["m"] for step, metrics in rows}


def test_a_rerun_after_a_crash_records_every_step_once(
    settings: Settings, session: Session, job_id: str, reporter: Reporter, tmp_path: Path
) -> None:
    first = reporter()
    first.on_start(StartInfo(total_steps=4, start_step=0, output_dir=tmp_path))
    for step in (1, 2, 3):
        first.on_step(step, {"m": float(step), "perf/tokens": 10.0 * step})
    adapter = settings.data_dir / "jobs" / job_id / "run" / "checkpoints" / "step-000002" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    first.on_checkpoint(2, adapter.parent, {"m": 2.0, "eval/pass@1": 0.5})
    first.flush()
    first.close()  # the worker dies here; step 3 was after the checkpoint

    second = reporter()
    second.on_start(StartInfo(total_steps=4, start_step=2, output_dir=tmp_path))
    assert _stream_steps(settings, job_id) == [1, 2]  # the stale live record of step 3 is gone
    second.on_step(3, {"m": 30.0, "perf/tokens": 300.0})
    second.on_step(4, {"m": 40.0, "perf/tokens": 400.0})
    assert second.flush()
    assert _points(session, job_id) == {1: 1.0, 2: 2.0, 3: 30.0, 4: 40.0}
    assert _stream_steps(settings, job_id) == [1, 2, 3, 4]
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None and (job.current_step, job.total_steps, job.trained_tokens) == (4, 4, 400)
    checkpoint = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)).one()
    assert checkpoint.step_number == 2 and checkpoint.metrics["eval/pass@1"] == 0.5
    assert checkpoint.uri == f"jobs/{job_id}/run/checkpoints/step-000002/adapter"
    assert checkpoint.fine_tuned_model_checkpoint.endswith(":ckpt-step-2")


def test_control_answers_pause_and_cancel(
    settings: Settings, session: Session, job_id: str, reporter: Reporter
) -> None:
    each = reporter()
    assert each.control() == "continue"
    redis.Redis.from_url(str(settings.redis_url)).set(control_key(job_id), "pause")
    time.sleep(0.6)  # control() reads Redis at most every 0.5 s
    assert each.control() == "pause"
    # The API cancels: the next guarded write (the heartbeat, every 0.2 s here) notices, even without Redis.
    redis.Redis.from_url(str(settings.redis_url)).delete(control_key(job_id))
    assert transition(session, job_id=job_id, expected=(S.running,), to=S.cancelled, message="cancel")
    session.commit()
    deadline = time.monotonic() + 5
    while each.control() != "cancel":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert not each.flush()  # and it writes nothing more
    each.on_event("info", "too late")
    assert "too late" not in session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)).all()


def _engine_output(run_dir: Path, steps: int, checkpoint_step: int) -> Path:
    """What the engine leaves on disk when it dies right after renaming a checkpoint into place: the
    metrics log of every step so far and the checkpoint directory with its own metrics."""
    run_dir.mkdir(parents=True)
    lines = [json.dumps({"step": s, "m": float(s)}) for s in range(1, steps + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    checkpoint = run_dir / "checkpoints" / f"step-{checkpoint_step:06d}"
    (checkpoint / "adapter").mkdir(parents=True)
    (checkpoint / "adapter" / "adapter_config.json").write_text("{}")
    (checkpoint / "metrics.json").write_text(json.dumps({"m": float(checkpoint_step)}))
    return checkpoint


def test_a_kill_after_the_checkpoint_rename_loses_no_step(
    settings: Settings, session: Session, job_id: str, reporter: Reporter
) -> None:
    run_dir = settings.data_dir / "jobs" / job_id / "run"
    first = reporter()
    first.on_start(StartInfo(total_steps=8, start_step=0, output_dir=run_dir))
    first.on_step(1, {"m": 1.0})
    assert first.flush()
    for step in (2, 3, 4):  # pending, not flushed yet: the flush comes with on_checkpoint, never reached
        first.on_step(step, {"m": float(step)})
    first.close()
    _engine_output(run_dir, steps=4, checkpoint_step=4)  # the engine resumes from step 4

    second = reporter()
    second.on_start(StartInfo(total_steps=8, start_step=4, output_dir=run_dir))
    assert _points(session, job_id) == {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}
    [checkpoint] = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)).all()
    assert (checkpoint.step_number, checkpoint.metrics) == (4, {"step": 4, "m": 4.0})
    assert checkpoint.uri == f"jobs/{job_id}/run/checkpoints/step-000004/adapter"

    # Lost again before its next checkpoint: the row of step 4 came with this run's start, not its work.
    second.close()
    session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=now() - 60))
    session.commit()
    assert reap_once(session, settings=settings).requeued == [job_id]
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None and (job.run_start_step, job.attempt, job.worker_losses) == (4, 2, 1)


def test_steps_flushed_after_the_last_checkpoint_are_dropped_on_resume(
    settings: Settings, session: Session, job_id: str, reporter: Reporter
) -> None:
    run_dir = settings.data_dir / "jobs" / job_id / "run"
    first = reporter()
    first.on_start(StartInfo(total_steps=8, start_step=0, output_dir=run_dir))
    for step in range(1, 7):
        first.on_step(step, {"m": float(step)})
    assert first.flush()  # steps 5 and 6 reached the DB, then the worker died before the next checkpoint
    first.close()
    _engine_output(run_dir, steps=4, checkpoint_step=4)
    second = reporter()
    second.on_start(StartInfo(total_steps=8, start_step=4, output_dir=run_dir))
    assert sorted(_points(session, job_id)) == [1, 2, 3, 4]  # 5 and 6 run again, and are recorded then


def test_a_lost_stream_is_appended_again_in_order(
    settings: Settings, session: Session, job_id: str, reporter: Reporter, tmp_path: Path
) -> None:
    each = reporter()
    each.on_start(StartInfo(total_steps=5, start_step=0, output_dir=tmp_path))
    for step in (1, 2):
        each.on_step(step, {"m": float(step)})
    assert each.flush()
    each.on_step(3, {"m": 3.0})  # still pending
    redis.Redis.from_url(str(settings.redis_url)).delete(metrics_stream_key(job_id))  # Redis restarted empty
    each.on_step(4, {"m": 4.0})
    assert _stream_steps(settings, job_id) == [1, 2, 3, 4]
    each.on_step(5, {"m": 5.0})
    assert _stream_steps(settings, job_id) == [1, 2, 3, 4, 5]


def _sample(index: int, completion: str, reward: float) -> dict[str, object]:
    return {"index": index, "prompt": "2+5=", "completion": completion, "reward": reward,
            "sub_rewards": {"exact": reward}, "truncated": False}  # fmt: skip


def _samples(session: Session, job_id: str) -> list[tuple[int, int, str, float, dict[str, float]]]:
    rows = session.execute(
        select(
            TrainingSample.step, TrainingSample.position, TrainingSample.completion, TrainingSample.reward,
            TrainingSample.sub_rewards,
        )
        .where(TrainingSample.job_id == job_id)
        .order_by(TrainingSample.step, TrainingSample.position)
    )  # fmt: skip
    return [tuple(row) for row in rows]  # type: ignore[misc]


def test_samples_are_written_with_their_step_and_replaced_when_it_runs_again(
    settings: Settings, session: Session, job_id: str, reporter: Reporter
) -> None:
    run_dir = settings.data_dir / "jobs" / job_id / "run"
    first = reporter()
    first.on_start(StartInfo(total_steps=8, start_step=0, output_dir=run_dir))
    for step in range(1, 6):
        first.on_samples(step, [_sample(0, f"<b>{step}</b>", 0.0), _sample(3, "7", 1.0)])
        first.on_step(step, {"m": float(step)})
    assert _samples(session, job_id) == []  # with the metric points, at the next flush
    assert first.flush()
    assert len(_samples(session, job_id)) == 10
    first.close()  # the worker dies after step 5; the checkpoint is at 4
    _engine_output(run_dir, steps=4, checkpoint_step=4)
    second = reporter()
    second.on_start(StartInfo(total_steps=8, start_step=4, output_dir=run_dir))
    assert {step for step, *_ in _samples(session, job_id)} == {1, 2, 3, 4}
    second.on_samples(4, [_sample(5, "again", 0.5)])  # a step run again may keep other rows
    second.on_samples(5, [_sample(1, "five", 0.25)])
    second.on_step(5, {"m": 5.0})
    assert second.flush()
    assert _samples(session, job_id)[-3:] == [
        (3, 3, "7", 1.0, {"exact": 1.0}), (4, 5, "again", 0.5, {"exact": 0.5}),
        (5, 1, "five", 0.25, {"exact": 0.25}),
    ]  # fmt: skip
    assert _samples(session, job_id)[0] == (1, 0, "<b>1</b>", 0.0, {"exact": 0.0})
