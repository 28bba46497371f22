"""What building graders needs beyond a spec: sandbox limits, and where judges and embeddings are reached."""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from grading.embeddings import EmbeddingsTarget
from grading.judges import JudgeLimits, JudgeTarget
from grading.sandbox import SandboxLimits


@dataclass(frozen=True)
class GradingContext:
    """What building graders needs beyond the spec: sandbox limits and where judges and embeddings live.

    `judges` maps each judge model name a spec may use to where it is reached (the service resolves the
    tenant's models into this map). The keys are given to `from_dict` or read from the environment variables
    the values name, so they are never written into a run's config file: an external endpoint's
    (`api_key_env`) and our model server's shared secret (`model_server_key_env`).
    """

    python_pool_size: int = 2
    sandbox_limits: SandboxLimits = field(default_factory=SandboxLimits)
    python_unsandboxed: bool = False
    judges: Mapping[str, JudgeTarget] = field(default_factory=dict)
    judge_limits: JudgeLimits = field(default_factory=JudgeLimits)
    embeddings: EmbeddingsTarget | None = None

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any], api_key: str | None = None, model_server_key: str | None = None
    ) -> "GradingContext":
        """The context a run config carries (plain JSON/YAML values). The external endpoints' key is
        `api_key`, else the environment variable named by `api_key_env`; our model server's (the targets with
        `internal` fields) is `model_server_key`, else the variable named by `model_server_key_env`."""
        external = api_key if api_key is not None else _env(values.get("api_key_env"))
        server = (
            model_server_key if model_server_key is not None else _env(values.get("model_server_key_env"))
        )
        judges = {
            name: JudgeTarget(**target, api_key=server if target.get("internal") else external)
            for name, target in (values.get("judges") or {}).items()
        }
        embeddings = values.get("embeddings")
        if embeddings is not None:
            key = server if embeddings.get("internal") else external
            embeddings = EmbeddingsTarget(**embeddings, api_key=key)
        return cls(
            python_pool_size=int(values.get("python_pool_size", 2)),
            sandbox_limits=SandboxLimits(**(values.get("sandbox_limits") or {})),
            python_unsandboxed=bool(values.get("python_unsandboxed", False)),
            judges=judges,
            judge_limits=JudgeLimits(**(values.get("judge_limits") or {})),
            embeddings=embeddings,
        )


def _env(name: str | None) -> str | None:
    return os.environ.get(name) if name else None
