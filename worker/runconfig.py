"""A job row → the engine's RunConfig: files and model resolved to paths, "auto" resolved to numbers.

Resolution order for every hyperparameter: the job's value, else the model's `sppo_defaults.json`, else
the engine's reference default; `max_response_tokens` has the job's `reasoning_effort` between the first
two (jobspec.context, which the API's context check at creation resolves with too). The learning rates
are the model's default × the job's multipliers (OpenAI's `learning_rate_multiplier`). What was resolved
is written back to `jobs.resolved_hyperparameters` and shown by `GET /v1/fine_tuning/jobs/{id}`.
"""

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.grading_context import API_KEY_ENV, GradingSetupError, grading_context
from app.models import File, Job
from app.registry import find_base_model
from app.settings import Settings
from app.storage import artifact_store
from grading.build import GraderConfigError, parse_grader
from jobspec.context import resolve_max_response_tokens
from worker.engine.config import RunConfig, model_defaults
from worker.engine.errors import DataFileError, EngineError, ModelNotFoundError

HYPERPARAMETERS = "method.reinforcement.hyperparameters"
GRADER = "method.reinforcement.grader"
# API hyperparameters that are RunConfig fields of the same name and meaning.
SAME_NAME = (
    "n_epochs", "batch_size", "eval_interval", "eval_samples", "max_response_tokens", "temperature", "top_p",
    "critic", "group_size", "ppo_epochs", "minibatch_size", "clip_epsilon", "kl_coef", "gae_gamma",
    "gae_lambda", "grpo_scale_by_std", "lora_rank", "lora_alpha", "checkpoint_interval", "n_devices",
    "critic_layers", "pass_threshold",
)  # fmt: skip


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
    if settings.judge_api_key is not None:
        # the engine reads the key by name (it is never written into the run's config file); a key set
        # in .env is not in the environment unless put there
        os.environ[API_KEY_ENV] = settings.judge_api_key.get_secret_value()  # the current key, if rotated
    return context


def grader_pass_threshold(grader: dict[str, Any]) -> float:
    """The pass threshold a grader names itself (OpenAI's `pass_threshold`), else 1.0: full credit."""
    return float(grader.get("pass_threshold") or 1.0)


def _given(hyper: dict[str, Any], name: str) -> Any:
    value = hyper.get(name)
    return None if value == "auto" else value


def build_run_config(session: Session, *, settings: Settings, job: Job) -> tuple[RunConfig, dict[str, Any]]:
    """(RunConfig, resolved hyperparameters) for a job; EngineError when it cannot run as specified."""
    reinforcement = job.method["reinforcement"]
    hyper = dict(job.hyperparameters)
    model_dir = base_model_dir(settings, job.model)
    own_defaults = model_defaults(model_dir)
    defaults: dict[str, Any] = {f.name: f.default for f in fields(RunConfig)} | own_defaults
    values: dict[str, Any] = {
        "model": str(model_dir),
        "train_file": str(file_path(session, settings=settings, job=job, file_id=job.training_file,
                                    param="training_file")),
        "grader": reinforcement["grader"],
        "output_dir": str(job_output_dir(settings, job.id)),
        "algorithm": reinforcement.get("algorithm", "sppo"),
        "seed": job.seed,
        "device": settings.device or "auto",
        # the worker's choice where vLLM can serve the job (a LoRA policy on one device), else hf
        "rollout_backend": settings.rollout_backend
        if int(hyper.get("n_devices") or 1) == 1 and defaults["use_lora"]
        else "hf",
        "rollout_gpu_memory_utilization": settings.rollout_gpu_memory_utilization,
        "metrics": {"job_id": job.id},
        "grading": worker_grading(session, settings=settings, tenant_id=job.tenant_id,
                                  grader=reinforcement["grader"], param=GRADER),
    }  # fmt: skip
    if job.validation_file is not None:
        values["validation_file"] = str(
            file_path(
                session, settings=settings, job=job, file_id=job.validation_file, param="validation_file"
            )
        )
    for name in SAME_NAME:
        if _given(hyper, name) is not None:
            values[name] = _given(hyper, name)
    if "pass_threshold" not in values:
        values["pass_threshold"] = grader_pass_threshold(reinforcement["grader"])
    values["max_response_tokens"], _ = resolve_max_response_tokens(hyper, own_defaults)
    lr_multiplier = float(_given(hyper, "learning_rate_multiplier") or 1.0)
    critic_multiplier = float(_given(hyper, "critic_learning_rate_multiplier") or 1.0)
    values["learning_rate"] = float(defaults["learning_rate"]) * lr_multiplier
    values["critic_learning_rate"] = float(defaults["critic_learning_rate"]) * critic_multiplier
    try:
        config = RunConfig.from_dict(values)
    except EngineError as exc:
        if exc.param in SAME_NAME:
            exc.param = f"{HYPERPARAMETERS}.{exc.param}"
        raise
    resolved: dict[str, Any] = {name: getattr(config, name) for name in SAME_NAME}
    resolved.update(
        group_size=config.samples_per_prompt,
        learning_rate_multiplier=lr_multiplier,
        critic_learning_rate_multiplier=critic_multiplier,
        learning_rate=config.learning_rate,
        critic_learning_rate=config.critic_learning_rate,
    )
    if hyper.get("reasoning_effort") is not None:
        resolved["reasoning_effort"] = hyper["reasoning_effort"]
    return config, resolved
