"""A job that continues its tenant's fine-tuned model, run by the worker as the API would queue it: it starts
where its parent ended (its step-0 validation score is the parent's final one) with the parent's adapter
config; a parent deleted before the job runs fails it, naming `model`, but once the job has a checkpoint
it resumes from that without its parent."""

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.services.models import delete_model
from app.services.reaper import reap_once
from core.models import File, FineTunedModel, Job, JobEvent, JobStatus, Tenant, now
from core.settings import Settings
from jobspec.warmstart import ADAPTER_CONFIG
from worker.engine.checkpoint import CRASH_AT_ENV, CRASH_EXIT_CODE
from worker.engine.fixtures import FIXTURE_GRADER, Fixture
from worker.training import run_job

ROOT = Path(__file__).resolve().parents[2]

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


def _trained_parent(settings: Settings, session: Session, make_job: Callable[..., str], tiny: Fixture) -> Job:
    """A job run to its fine-tuned model, with a LoRA rank and alpha that are not the fixture's defaults."""
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
    return parent


def test_a_continued_model_starts_at_its_parents_final_score(
    settings: Settings, session: Session, make_job: Callable[..., str], tiny: Fixture
) -> None:
    parent = _trained_parent(settings, session, make_job, tiny)
    assert parent.fine_tuned_model is not None
    ended = _evaluations(session, parent.id)

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


def test_a_parent_whose_adapter_does_not_load_fails_the_job_naming_it(
    settings: Settings, session: Session, make_job: Callable[..., str], tiny: Fixture
) -> None:
    parent = session.get_one(Job, make_job(method=METHOD, hyperparameters=RUN))
    parent.training_file = _store(settings, session, parent.tenant_id, tiny.train_file, 16)
    uri = f"jobs/{parent.id}/run/final/adapter"  # its config stored, its weights lost
    (settings.data_dir / uri).mkdir(parents=True)
    (settings.data_dir / uri / ADAPTER_CONFIG).write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    )
    model = f"ft:sppo-tiny:x::{parent.id}"
    session.add(FineTunedModel(id=model, tenant_id=parent.tenant_id, job_id=parent.id, base_model="sppo-tiny",
                               adapter_uri=uri))  # fmt: skip
    session.commit()
    child_id = _child(session, parent, model, RUN)
    assert run_job(child_id, settings=settings) == "failed"
    session.expire_all()
    child = session.get_one(Job, child_id)
    assert (child.error_code, child.error_param) == ("model_not_found", "model")
    assert f"The model '{model}' this job continues could not be loaded" in str(child.error_message)
    assert "base model" not in str(child.error_message)


def test_a_continued_job_resumes_from_its_checkpoint_after_its_parent_was_deleted(
    settings: Settings, session: Session, make_job: Callable[..., str], tiny: Fixture
) -> None:
    parent = _trained_parent(settings, session, make_job, tiny)
    assert parent.fine_tuned_model is not None
    child_id = _child(session, parent, parent.fine_tuned_model, {**RUN, "checkpoint_interval": 1})
    # the first worker dies right after it wrote the step-1 checkpoint (a host lost)
    environment = {
        **os.environ,
        "SPPO_DATA_DIR": str(settings.data_dir),
        "SPPO_DATABASE_URL": settings.db_url,
        "SPPO_REDIS_URL": str(settings.redis_url),
        CRASH_AT_ENV: "checkpoint.renamed@1",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
    }
    worker = "import sys; from core.settings import Settings; from worker.training import run_job; " \
        "run_job(sys.argv[1], settings=Settings())"  # fmt: skip
    lost = subprocess.run([sys.executable, "-c", worker, child_id], cwd=ROOT, env=environment, timeout=300)
    assert lost.returncode == CRASH_EXIT_CODE
    tenant = session.get_one(Tenant, parent.tenant_id)
    delete_model(session, settings=settings, tenant=tenant, model_id=parent.fine_tuned_model)
    session.execute(update(Job).where(Job.id == child_id).values(heartbeat_at=now() - 60))
    session.commit()
    assert reap_once(session, settings=settings).requeued == [child_id]

    assert run_job(child_id, settings=settings) == "succeeded"
    session.expire_all()
    child = session.get_one(Job, child_id)
    messages = session.scalars(select(JobEvent.message).where(JobEvent.job_id == child_id)).all()
    assert "Resumed from the checkpoint at step 1 of 2" in messages
    assert child.fine_tuned_model is not None and child.fine_tuned_model_step == 2
    final = settings.data_dir / session.get_one(FineTunedModel, child.fine_tuned_model).adapter_uri
    assert (
        json.loads((final / ADAPTER_CONFIG).read_text())["r"] == 4
    )  # the parent's rank, from the checkpoint
