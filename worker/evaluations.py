"""Run one evaluation: claim it (queued → running), score the model with the engine, record the scores and
the per-item results (JSONL under the data dir), or the error a user can act on."""

import json
import logging
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

from sqlalchemy import update

from app.db import get_sessionmaker
from app.models import Evaluation, File, JobStatus, now
from app.settings import Settings
from worker.engine.config import RunConfig, model_defaults
from worker.engine.data import load_items
from worker.engine.errors import EngineError
from worker.engine.evaluate import evaluate
from worker.engine.graders import render_reference
from worker.runconfig import base_model_dir
from worker.training import INTERNAL_ERROR

log = logging.getLogger(__name__)

S = JobStatus


def _set(evaluation_id: str, expected: JobStatus, **values: object) -> bool:
    with get_sessionmaker()() as session:
        result = session.execute(
            update(Evaluation)
            .where(Evaluation.id == evaluation_id, Evaluation.status == expected)
            .values(**values)
        )
        session.commit()
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def resolve_sampling(params: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Unset sampling settings as a training job of this model uses them: its sppo_defaults.json, else the
    engine's RunConfig defaults, so an evaluation's avg@k agrees with the job's own evaluations."""
    engine = {f.name: f.default for f in fields(RunConfig)}
    return {
        "temperature": float(params.get("temperature") or defaults.get("temperature", engine["temperature"])),
        "top_p": float(params.get("top_p") or defaults.get("top_p", engine["top_p"])),
        "max_response_tokens": int(
            params.get("max_response_tokens")
            or defaults.get("max_response_tokens", engine["max_response_tokens"])
        ),
    }


def result_lines(
    items: list[dict[str, Any]], results: list[dict[str, Any]], grader: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """The engine's per-item results with what a reader needs beside them: the prompt and the reference."""
    for result in results:
        item = items[result["index"]]
        yield {
            "index": result["index"],
            "prompt": item.get("messages"),
            "reference": render_reference(grader, item),
            **{k: v for k, v in result.items() if k != "index"},
        }


def run_evaluation(evaluation_id: str, *, settings: Settings) -> str:
    """Claim and run an evaluation; returns the outcome for the log ("dropped" when it was not queued)."""
    if not _set(evaluation_id, S.queued, status=S.running):
        log.info("evaluation %s is not queued (duplicate or stale message); dropped", evaluation_id)
        return "dropped"
    with get_sessionmaker()() as session:
        evaluation = session.get(Evaluation, evaluation_id)
        assert evaluation is not None
        file = session.get(File, evaluation.file_id)
    params = evaluation.params
    try:
        if file is None:
            raise EngineError("invalid_file", f"File '{evaluation.file_id}' no longer exists.", "file")
        adapter = params.get("adapter_uri")
        model_dir = base_model_dir(settings, params["base_model"])
        sampling = resolve_sampling(params, model_defaults(model_dir))
        _set(evaluation_id, S.running, params={**params, **sampling})  # shown as resolved
        result = evaluate(
            model_dir,
            None if adapter is None else settings.data_dir / adapter,
            settings.data_dir / file.storage_uri,
            evaluation.grader,
            samples=evaluation.samples,
            temperature=sampling["temperature"],
            top_p=sampling["top_p"],
            max_response_tokens=sampling["max_response_tokens"],
            device=settings.device or "auto",
        )
    except Exception as exc:
        code, message = (exc.code, exc.message) if isinstance(exc, EngineError) else INTERNAL_ERROR
        if not isinstance(exc, EngineError):
            log.exception("evaluation %s failed unexpectedly", evaluation_id)
        _set(
            evaluation_id,
            S.running,
            status=S.failed,
            error_code=code,
            error_message=message,
            finished_at=now(),
        )
        return "failed"
    target = settings.jobs_dir / "evaluations" / f"{evaluation_id}.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w") as handle:
        for line in result_lines(load_items(settings.data_dir / file.storage_uri), result.items,
                                 evaluation.grader):  # fmt: skip
            handle.write(json.dumps(line) + "\n")
    _set(
        evaluation_id,
        S.running,
        status=S.succeeded,
        scores=result.scores(),
        result_uri=str(target.relative_to(settings.data_dir)),
        finished_at=now(),
    )
    return "succeeded"
