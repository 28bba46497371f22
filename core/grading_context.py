"""The `grading` section of a run config: where a tenant's grader reaches its judges and embeddings, and
the sandbox limits of Python graders, from the service's settings. Shared by the API (job and evaluation
creation, the graders API) and the worker (which resolves it again when the job starts)."""

from typing import Any

from sqlalchemy.orm import Session

from core.model_targets import find_model_target
from core.registry import find_base_model
from core.settings import Settings
from jobspec.graders import LabelModelGrader, ScoreModelGrader
from jobspec.walk import leaf_graders


class GradingSetupError(ValueError):
    """The grader cannot run with this service's models and settings; `param` names the field."""

    def __init__(self, message: str, param: str, code: str = "invalid_grader") -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


API_KEY_ENV = "SPPO_JUDGE_API_KEY"
MODEL_SERVER_KEY_ENV = "SPPO_INFERENCE_SECRET"
OWN_MODEL_PREFIXES = ("ft:", "ftckpt-")
MIN_INSTRUCTED_CONTEXT = 512  # positions a judge model needs before the reply-format instruction is added


def _judge_target(
    session: Session, *, settings: Settings, tenant_id: str, model: str, param: str
) -> dict[str, Any]:
    target = find_model_target(session, settings=settings, tenant_id=tenant_id, model=model)
    if target is None:
        if model.startswith(OWN_MODEL_PREFIXES):
            # a name of this service's own kind that this tenant does not have: never sent elsewhere
            raise GradingSetupError(
                f"Judge model '{model}' does not exist or you do not have access to it.",
                param,
                "model_not_found",
            )
        allowed = settings.judge_allowed_models
        if allowed and model not in allowed:
            raise GradingSetupError(
                f"Judge model '{model}' is not one the operator allows for external judges: {allowed}.",
                param,
                "model_not_found",
            )
        if settings.judge_base_url is None:
            raise GradingSetupError(
                f"Judge model '{model}' is not a model of yours or a base model (GET /v1/models), and no "
                "external judge endpoint is configured (SPPO_JUDGE_BASE_URL).",
                param,
                "model_not_found",
            )
        return {"url": settings.judge_base_url.rstrip("/") + "/chat/completions", "model": model}
    internal = {"kind": "chat", "base_model": target.base_model, "adapter_uri": target.adapter_uri}
    entry = find_base_model(settings, target.base_model)
    context = entry.context_length if entry is not None else None
    return {
        "url": settings.inference_url.rstrip("/") + "/internal/generate",
        "model": model,
        "internal": internal,
        # the reply-format instruction alone would fill a tiny model's context; such a judge's prompt
        # must ask for the format itself
        "format_instruction": context is None or context >= MIN_INSTRUCTED_CONTEXT,
    }


def grading_context(
    session: Session, *, settings: Settings, tenant_id: str, grader: Any, param: str = "grader"
) -> dict[str, Any]:
    """The `grading` section of a run config for this tenant's grader (a `jobspec` model): its judge
    models resolved to this service's model server (the tenant's models only) or the external endpoint.
    GradingSetupError naming the param when a judge model or the cosine embeddings model is not available."""
    leaves = leaf_graders(grader, param)
    judges = {
        sub.model: _judge_target(
            session, settings=settings, tenant_id=tenant_id, model=sub.model, param=f"{sub_param}.model"
        )
        for sub_param, sub in leaves.items()
        if isinstance(sub, ScoreModelGrader | LabelModelGrader)
    }
    embeddings: dict[str, Any] | None = None
    cosine = [p for p, sub in leaves.items() if getattr(sub, "evaluation_metric", None) == "cosine"]
    if cosine:
        name = settings.grader_embeddings_model
        if name is None:
            raise GradingSetupError(
                "text_similarity 'cosine' needs an embeddings model, and none is configured "
                "(SPPO_GRADER_EMBEDDINGS_MODEL); use another evaluation_metric.",
                f"{cosine[0]}.evaluation_metric",
            )
        if settings.grader_embeddings_url is not None:
            embeddings = {"url": settings.grader_embeddings_url.rstrip("/") + "/embeddings", "model": name}
        else:
            internal = {"base_model": name}
            embeddings = {"url": settings.inference_url.rstrip("/") + "/internal/embeddings", "model": name,
                          "internal": internal}  # fmt: skip
    return {
        "python_pool_size": settings.python_grader_pool_size,
        "python_unsandboxed": settings.python_grader_sandbox == "none",
        "sandbox_limits": {
            "cpu_s": settings.python_grader_cpu_s,
            "wall_s": settings.python_grader_wall_s,
            "memory_mb": settings.python_grader_memory_mb,
        },
        "judges": judges,
        "judge_limits": {"timeout_s": settings.judge_timeout_s, "concurrency": settings.judge_concurrency},
        "embeddings": embeddings,
        "api_key_env": API_KEY_ENV,
        "model_server_key_env": MODEL_SERVER_KEY_ENV,
    }
