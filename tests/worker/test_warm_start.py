"""A job that continues its tenant's fine-tuned model, run by the worker as the API would queue it: it starts
where its parent ended (its step-0 validation score is the parent's final one) with the parent's adapter
config; a parent deleted before the job runs fails it, naming `model`."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import File, FineTunedModel, Job, JobEvent, JobStatus
from core.settings import Settings
from worker.engine.fixtures import FIXTURE_GRADER, Fixture
from worker.training import run_job

GREEDY = ("eval/pass@1", "eval/reward_mean")  # greedy completions: no sampling RNG in them
METHOD = {"type": "reinforcement", "reinforcement": {"algorithm": "sppo", "grader": FIXTURE_GRADER}}
# 16 items in batches of 8: two steps, evaluated at 0 and 2; a learning rate (30x the fixture's) that moves
# the answers in two steps
RUN = {"batch_size": 8, "minibatch_size": 4, "eval_interval": 2, "eval_samples": 1, "model_selection": "last"}


def _store(settings: Settings, session: Session, tenant_id: str, source: Path, lines: int) -> str:
    key = f"files/{source.stem}.jsonl"
    (settings.data_dir / "files").mkdir(exist_ok=True)
    (settings.data_dir / key).write_bytes(b"".join(source.read_bytes().splitlines(True)[:lines]))
    file = File(tenant_id=tenant_id, filename=source.name, purpose="fine-tune", bytes=0, sha256="",
                storage_uri=key, line_count=lines)  # fmt: skip
    session.add(file)
    session.commit()
    return file.id


def _evaluations(session: Session, job_id: str) -> dict[int, dict[str, Any]]:
    events = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "metrics"))
    return {int(e.data["step"]): e.data for e in events if e.data and e.message.startswith("Evaluation")}


def _child(session: Session, parent: Job, model: str, hyperparameters: dict[str, Any]) -> str:
    """A job continuing `model` as the API creates it (app/services/lineage.py)."""
    job = Job(tenant_id=parent.tenant_id, model=model, base_model="sppo-tiny", parent_model=model,
              training_file=parent.training_file, validation_file=parent.validation_file, seed=1,
              method=METHOD, hyperparameters=hyperparameters, status=JobStatus.queued)  # fmt: skip
    session.add(job)
    session.commit()
    return job.id


def test_a_continued_model_starts_at_its_parents_final_score(
    settings: Settings, session: Session, make_job: Callable[..., str], tiny: Fixture
) -> None:
    parent_id = make_job(method=METHOD, hyperparameters={**RUN, "lora_rank": 4, "lora_alpha": 8,
                                                         "learning_rate_multiplier": 30})  # fmt: skip
    parent = session.get_one(Job, parent_id)
    parent.training_file = _store(settings, session, parent.tenant_id, tiny.train_file, 16)
    parent.validation_file = _store(settings, session, parent.tenant_id, tiny.validation_file, 16)
    session.commit()
    assert run_job(parent_id, settings=settings) == "succeeded"
    session.expire_all()
    parent = session.get_one(Job, parent_id)
    assert parent.fine_tuned_model is not None and parent.fine_tuned_model_step == 2
    ended = _evaluations(session, parent_id)

    child_id = _child(session, parent, parent.fine_tuned_model, RUN)
    assert run_job(child_id, settings=settings) == "succeeded"
    session.expire_all()
    child = session.get_one(Job, child_id)
    started = _evaluations(session, child_id)
    assert [started[0][name] for name in GREEDY] == [ended[2][name] for name in GREEDY]
    assert [ended[0][name] for name in GREEDY] != [ended[2][name] for name in GREEDY]  # the parent learned
    resolved = child.resolved_hyperparameters or {}
    assert (resolved["lora_rank"], resolved["lora_alpha"]) == (4, 8)  # the parent's adapter config
    registered = session.get_one(FineTunedModel, child.fine_tuned_model)
    assert registered.base_model == "sppo-tiny" and str(child.fine_tuned_model).startswith("ft:sppo-tiny:")


def test_a_parent_deleted_before_the_run_fails_the_job(
    settings: Settings, session: Session, make_job: Callable[..., str], tiny: Fixture
) -> None:
    parent = session.get_one(Job, make_job(method=METHOD, hyperparameters=RUN))
    parent.training_file = _store(settings, session, parent.tenant_id, tiny.train_file, 16)
    session.commit()
    child_id = _child(session, parent, f"ft:sppo-tiny:x::{parent.id}", RUN)  # no such model (any more)
    assert run_job(child_id, settings=settings) == "failed"
    session.expire_all()
    child = session.get_one(Job, child_id)
    assert (child.error_code, child.error_param) == ("invalid_model", "model")
    assert "no longer exists" in str(child.error_message)
