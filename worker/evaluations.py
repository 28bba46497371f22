"""Run one evaluation: claim it, score the model with the engine, record the scores and the per-item results
(JSONL under the data dir), or the error a user can act on.

Evaluations are leased like jobs: the claim records the worker and a heartbeat, a thread renews the
heartbeat while the engine scores, and the reaper (app/services/reaper.py) requeues one whose heartbeat
is older than the lease with `attempt + 1`, or fails it after `max_attempts`. A message redelivered for an
evaluation still `running` under a worker that went silent takes it over (attempt + 1) instead of being
dropped. Every write is guarded by `worker_id = me`, so a worker that lost its lease cannot record a result.
"""

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

from sqlalchemy import case, func, or_, update

from core.db import get_sessionmaker
from core.models import Evaluation, File, JobStatus, now
from core.settings import Settings
from core.storage import ArtifactStore, artifact_store
from core.webhooks import enqueue_evaluation_event
from jobspec.hyperparameters import REFERENCE_DEFAULTS, grader_pass_threshold
from worker.dbretry import retrying
from worker.engine.checkpoint import crash_point
from worker.engine.config import model_defaults
from worker.engine.data import load_items
from worker.engine.errors import EngineError
from worker.engine.evaluate import evaluate
from worker.engine.graders import reference_template, render_reference
from worker.jobs import worker_identity
from worker.runconfig import base_model_dir, worker_grading
from worker.training import INTERNAL_ERROR

log = logging.getLogger(__name__)

S = JobStatus


def _update(settings: Settings, evaluation_id: str, *where: Any, **values: Any) -> bool:
    def attempt() -> bool:
        with get_sessionmaker(settings.db_url)() as session:
            result = session.execute(
                update(Evaluation).where(Evaluation.id == evaluation_id, *where).values(**values)
            )
            changed = bool(result.rowcount == 1)  # type: ignore[attr-defined]
            if changed and "status" in values:  # its terminal event commits with the status
                enqueue_evaluation_event(
                    session, evaluation_id=evaluation_id, status=JobStatus(values["status"])
                )
            session.commit()
            return changed

    return retrying(attempt, what=f"evaluation {evaluation_id}", deadline_s=settings.db_retry_s)


def resolve_sampling(params: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Unset sampling settings as a training job of this model uses them: its sppo_defaults.json, else the
    reference defaults (the engine's), so an evaluation's avg@k agrees with the job's own evaluations."""
    return {
        "temperature": float(
            params.get("temperature") or defaults.get("temperature", REFERENCE_DEFAULTS["temperature"])
        ),
        "top_p": float(params.get("top_p") or defaults.get("top_p", REFERENCE_DEFAULTS["top_p"])),
        "max_response_tokens": int(
            params.get("max_response_tokens")
            or defaults.get("max_response_tokens", REFERENCE_DEFAULTS["max_response_tokens"])
        ),
    }


def result_lines(
    items: list[dict[str, Any]], results: list[dict[str, Any]], grader: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """The engine's per-item results with what a reader needs beside them: the prompt and the reference."""
    template = reference_template(grader)
    for result in results:
        item = items[result["index"]]
        yield {
            "index": result["index"],
            "prompt": item.get("messages"),
            "reference": render_reference(template, item),
            **{k: v for k, v in result.items() if k != "index"},
        }


def claim_evaluation(settings: Settings, evaluation_id: str, worker_id: str) -> bool:
    """queued → running for this worker, or a takeover of one whose worker stopped heartbeating."""
    stale = func.coalesce(Evaluation.heartbeat_at, Evaluation.started_at, Evaluation.created_at) < (
        now() - settings.heartbeat_lease_s
    )
    orphaned = (Evaluation.status == S.running) & stale & (Evaluation.attempt < Evaluation.max_attempts)
    return _update(
        settings,
        evaluation_id,
        or_(Evaluation.status == S.queued, orphaned),
        status=S.running,
        worker_id=worker_id,
        heartbeat_at=now(),
        started_at=func.coalesce(Evaluation.started_at, now()),
        # The reaper counts the attempts of requeued ones; a takeover counts its own.
        attempt=case(
            (Evaluation.status == S.running, Evaluation.attempt + 1),
            (Evaluation.attempt < 1, 1),
            else_=Evaluation.attempt,
        ),
    )


class _Heartbeat:
    """Renews the lease every `interval` s from a thread while the engine scores (it never yields)."""

    def __init__(self, settings: Settings, evaluation_id: str, worker_id: str) -> None:
        self._stopped = threading.Event()
        self._args = (settings, evaluation_id, worker_id)
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{evaluation_id}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        settings, evaluation_id, worker_id = self._args
        while not self._stopped.wait(settings.heartbeat_interval_s):
            try:
                mine = (Evaluation.status == S.running) & (Evaluation.worker_id == worker_id)
                if not _update(settings, evaluation_id, mine, heartbeat_at=now()):
                    return
            except Exception:  # the database stayed away: the next beat tries again
                log.warning("heartbeat of evaluation %s failed", evaluation_id, exc_info=True)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)


def run_evaluation(evaluation_id: str, *, settings: Settings, worker_id: str | None = None) -> str:
    """Claim and run an evaluation; returns the outcome for the log ("dropped" when it was not queued)."""
    worker_id = worker_id or worker_identity()
    if not claim_evaluation(settings, evaluation_id, worker_id):
        log.info("evaluation %s is not queued (duplicate or stale message); dropped", evaluation_id)
        return "dropped"
    heartbeat = _Heartbeat(settings, evaluation_id, worker_id)
    try:
        return _run(evaluation_id, settings=settings, worker_id=worker_id)
    finally:
        heartbeat.stop()


def _fail(settings: Settings, evaluation_id: str, mine: tuple[Any, ...], exc: Exception) -> str:
    """Record why the evaluation failed: the engine's error a user can act on, or an internal one."""
    code, message = (exc.code, exc.message) if isinstance(exc, EngineError) else INTERNAL_ERROR
    if not isinstance(exc, EngineError):
        log.exception("evaluation %s failed unexpectedly", evaluation_id, exc_info=exc)
    values = {"error_code": code, "error_message": message, "finished_at": now()}
    done = _update(settings, evaluation_id, *mine, status=S.failed, **values)
    return "failed" if done else "lost"


def _publish_result(
    store: ArtifactStore, evaluation_id: str, worker_id: str, lines: Iterator[dict[str, Any]]
) -> str:
    """Write the per-item results as JSONL into the store; returns their key."""
    key = f"jobs/evaluations/{evaluation_id}.jsonl"
    target = store.local_path(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{worker_id.replace(':', '-')}.tmp")
    with partial.open("w") as handle:  # renamed into place whole: a reader never sees half a file
        for line in lines:
            handle.write(json.dumps(line) + "\n")
    partial.replace(target)
    store.publish(key, keep_copy=False)
    return key


def _run(evaluation_id: str, *, settings: Settings, worker_id: str) -> str:
    mine = (Evaluation.status == S.running, Evaluation.worker_id == worker_id)
    with get_sessionmaker(settings.db_url)() as session:
        evaluation = session.get(Evaluation, evaluation_id)
        assert evaluation is not None
        file = session.get(File, evaluation.file_id)
    params = evaluation.params
    store = artifact_store(settings)
    try:
        if file is None:
            raise EngineError("invalid_file", f"File '{evaluation.file_id}' no longer exists.", "file")
        with get_sessionmaker(settings.db_url)() as session:
            grading = worker_grading(session, settings=settings, tenant_id=evaluation.tenant_id,
                                     grader=evaluation.grader, param="grader")  # fmt: skip
        adapter = params.get("adapter_uri")
        data_file = store.fetch(file.storage_uri)
        model_dir = base_model_dir(settings, params["base_model"])
        sampling = resolve_sampling(params, model_defaults(model_dir))
        _update(settings, evaluation_id, *mine, params={**params, **sampling})  # shown as resolved
        result = evaluate(
            model_dir,
            None if adapter is None else store.fetch(adapter),
            data_file,
            evaluation.grader,
            samples=evaluation.samples,
            temperature=sampling["temperature"],
            top_p=sampling["top_p"],
            max_response_tokens=sampling["max_response_tokens"],
            device=settings.device or "auto",
            grading=grading,
            pass_threshold=grader_pass_threshold(evaluation.grader),
        )
    except Exception as exc:
        return _fail(settings, evaluation_id, mine, exc)
    crash_point("evaluation.scored", 0)
    lines = result_lines(load_items(data_file), result.items, evaluation.grader)
    key = _publish_result(store, evaluation_id, worker_id, lines)
    done = _update(
        settings,
        evaluation_id,
        *mine,
        status=S.succeeded,
        scores=result.scores(),
        result_uri=key,
        finished_at=now(),
    )
    return "succeeded" if done else "lost"
