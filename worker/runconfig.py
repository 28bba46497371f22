"""A job row → the engine's RunConfig: files and model resolved to paths, "auto" resolved to numbers.

The hyperparameters resolve by jobspec.hyperparameters, the rule the API also applies when it creates the
job: the job's value, else the model's `sppo_defaults.json` for the algorithm, else the reference default.
What was resolved is written back to `jobs.resolved_hyperparameters` and shown by the job's API object.
"""

import json
import os
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.grading_context import API_KEY_ENV, MODEL_SERVER_KEY_ENV, GradingSetupError, grading_context
from core.model_targets import find_model_target
from core.models import File, Job
from core.registry import find_base_model
from core.settings import Settings
from core.storage import artifact_store
from grading.build import GraderConfigError, parse_grader
from jobspec.hyperparameters import (
    METHOD,
    job_values,
    request_param,
    resolve_defaults,
    resolved_hyperparameters,
)
from jobspec.warmstart import ADAPTER_CONFIG, WarmStartError, adapter_values, continued_hyperparameters
from worker.artifacts import resumed_adapter_config
from worker.engine.config import RunConfig, model_defaults
from worker.engine.errors import DataFileError, EngineError, ModelNotFoundError

GRADER = f"{METHOD}.grader"


def base_model_dir(settings: Settings, name: str) -> Path:
    """The directory of a registry model; a built-in fixture is its shipped copy.

    The registry lists only folders with weights and a tokenizer, so one that lost them is "no longer" there.
    """
    entry = find_base_model(settings, name)
    if entry is None:
        raise ModelNotFoundError(f"Model '{name}' is no longer in the model registry; see GET /v1/models.")
    if entry.path is not None:
        return entry.path
    from worker.engine.fixtures import ensure_fixture  # the engine package: only when a fixture is used

    return ensure_fixture(name).model_dir


def file_path(session: Session, *, settings: Settings, job: Job, file_id: str, param: str) -> Path:
    file = session.scalar(select(File).where(File.id == file_id, File.tenant_id == job.tenant_id))
    if file is None:
        raise DataFileError(
            f"File '{file_id}' no longer exists; upload it again and create a new job.", param
        )
    return artifact_store(settings).local_path(file.storage_uri)  # fetched by worker.artifacts.fetch_inputs


def job_output_dir(settings: Settings, job_id: str) -> Path:
    return settings.jobs_dir / job_id / "run"


def worker_grading(session: Session, *, settings: Settings, tenant_id: str, grader: dict[str, Any],
                   param: str) -> dict[str, Any]:  # fmt: skip
    """The run config's `grading` section: this worker's sandbox settings and the tenant's judges resolved
    now (a judge model deleted since the job was created fails the job here, naming the field)."""
    try:
        spec = parse_grader(grader)
        context = grading_context(session, settings=settings, tenant_id=tenant_id, grader=spec, param=param)
    except (GradingSetupError, GraderConfigError) as exc:
        raise EngineError("invalid_grader", str(exc), exc.param) from None
    # the engine reads the keys by name (they are never written into the run's config file); a key set in
    # .env is not in the environment unless put there; the current one, if rotated
    for name, key in (
        (API_KEY_ENV, settings.judge_api_key),
        (MODEL_SERVER_KEY_ENV, settings.inference_secret),
    ):
        if key is not None:
            os.environ[name] = key.get_secret_value()
    return context


def parent_adapter(session: Session, *, settings: Settings, job: Job) -> tuple[str, dict[str, Any]]:
    """(the local path of the adapter the job continues, its adapter_config.json): resolved again now, so a
    parent deleted since the job was created fails it here (fetched with the inputs: fetch_inputs)."""
    parent = str(job.parent_model)
    target = find_model_target(session, settings=settings, tenant_id=job.tenant_id, model=parent)
    store = artifact_store(settings)
    try:
        if target is None or target.adapter_uri is None:
            raise FileNotFoundError(parent)
        with store.open(f"{target.adapter_uri}/{ADAPTER_CONFIG}") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        message = (
            f"The model '{parent}' this job continues no longer exists, or its adapter is no longer stored."
        )
        raise EngineError("invalid_model", message, "model") from None
    return str(store.local_path(target.adapter_uri)), config


def continued_adapter(session: Session, *, settings: Settings, job: Job) -> tuple[str | None, dict[str, Any]]:
    """(the adapter a warm start's policy loads, its adapter_config.json): the parent's on a first start. A
    run with a checkpoint resumes from it, and it holds the adapter as trained so far, with the parent's
    config: the policy is a new adapter of that config (None) that takes the checkpoint's weights, and the
    parent, which may have been deleted since, is not looked up."""
    resumed = resumed_adapter_config(artifact_store(settings), job_output_dir(settings, job.id))
    if resumed is not None:
        return None, resumed
    return parent_adapter(session, settings=settings, job=job)


def warm_start(session: Session, *, settings: Settings, job: Job) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the job's hyperparameters, the run config values its parent's adapter fixes): as the job asked, with
    nothing fixed, for a job that starts from its base model (jobspec.warmstart)."""
    hyper = dict(job.hyperparameters)
    if job.parent_model is None:
        return hyper, {}
    adapter, adapter_config = continued_adapter(session, settings=settings, job=job)
    try:
        hyper = continued_hyperparameters(hyper, adapter_config, parent=job.parent_model)
        return hyper, {"init_adapter": adapter, **adapter_values(adapter_config, parent=job.parent_model)}
    except WarmStartError as exc:
        raise EngineError("invalid_model", exc.message, exc.param) from None


def rollout_backend(settings: Settings, hyper: dict[str, Any], defaults: dict[str, Any]) -> str:
    """The worker's choice where vLLM can serve the job (a LoRA policy on one device), else hf."""
    if int(hyper.get("n_devices") or 1) == 1 and resolve_defaults(defaults, {})["use_lora"]:
        return settings.rollout_backend
    return "hf"


def build_run_config(session: Session, *, settings: Settings, job: Job) -> tuple[RunConfig, dict[str, Any]]:
    """(RunConfig, resolved hyperparameters) for a job; EngineError when it cannot run as specified."""
    reinforcement = job.method["reinforcement"]
    model_dir = base_model_dir(settings, job.base_model)
    defaults = model_defaults(model_dir)
    hyper, continued = warm_start(session, settings=settings, job=job)
    values: dict[str, Any] = {
        "model": str(model_dir),
        "train_file": str(file_path(session, settings=settings, job=job, file_id=job.training_file,
                                    param="training_file")),
        "grader": reinforcement["grader"],
        "output_dir": str(job_output_dir(settings, job.id)),
        "algorithm": reinforcement.get("algorithm", "sppo"),
        "seed": job.seed,
        "device": settings.device or "auto",
        "rollout_backend": rollout_backend(settings, hyper, defaults),
        "rollout_gpu_memory_utilization": settings.rollout_gpu_memory_utilization,
        "metrics": {"job_id": job.id},
        "samples_kept": settings.samples_kept_per_step,
        "sample_max_chars": settings.sample_max_chars,
        "grading": worker_grading(session, settings=settings, tenant_id=job.tenant_id,
                                  grader=reinforcement["grader"], param=GRADER),
    }  # fmt: skip
    if job.validation_file is not None:
        values["validation_file"] = str(
            file_path(
                session, settings=settings, job=job, file_id=job.validation_file, param="validation_file"
            )
        )
    values.update(job_values(hyper, algorithm=values["algorithm"], grader=reinforcement["grader"],
                             model_defaults=defaults))  # fmt: skip
    values.update(continued)
    try:
        config = RunConfig.from_dict(values)
    except EngineError as exc:
        exc.param = request_param(exc.param)
        raise
    resolved = resolved_hyperparameters(hyper, algorithm=config.algorithm, grader=reinforcement["grader"],
                                        model_defaults=defaults,
                                        has_validation_file=job.validation_file is not None)  # fmt: skip
    return config, resolved
