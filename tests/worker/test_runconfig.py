"""A job row resolved into the engine's RunConfig: OpenAI's `compute_multiplier` and `reasoning_effort`
(including "default"); the run config's `grading` section names where the engine finds the keys, holds none
of them, and the worker puts the current ones in its environment."""

import json
import os
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy.orm import Session

from core.models import File, Job, Tenant, new_id
from core.settings import Settings
from grading.context import GradingContext
from worker.engine.config import RunConfig
from worker.engine.errors import EngineError
from worker.engine.fixtures import FIXTURE_GRADER, Fixture
from worker.runconfig import build_run_config, worker_grading

Resolve = Callable[..., tuple[RunConfig, dict[str, Any]]]


@pytest.fixture
def resolve(session: Session, settings: Settings, tiny: Fixture) -> Resolve:
    """build_run_config for a sppo-tiny job with these hyperparameters (and algorithm)."""
    tenant = Tenant(name=f"tenant-{new_id('t')}")
    session.add(tenant)
    session.flush()
    file = File(
        tenant_id=tenant.id, filename="t.jsonl", purpose="fine-tune", bytes=1, sha256="0" * 64,
        storage_uri="files/t.jsonl",
    )  # fmt: skip
    session.add(file)
    session.commit()

    def _resolve(algorithm: str = "sppo", **hyperparameters: Any) -> tuple[RunConfig, dict[str, Any]]:
        reinforcement = {"algorithm": algorithm, "grader": FIXTURE_GRADER, "hyperparameters": hyperparameters}
        job = Job(
            tenant_id=tenant.id, model="sppo-tiny", training_file=file.id, seed=0,
            method={"type": "reinforcement", "reinforcement": reinforcement}, hyperparameters=hyperparameters,
        )  # fmt: skip
        session.add(job)
        session.commit()
        return build_run_config(session, settings=settings, job=job)

    return _resolve


def test_compute_multiplier_scales_the_samples_per_prompt(resolve: Resolve) -> None:
    config, resolved = resolve(compute_multiplier=2)
    assert (config.samples_per_prompt, resolved["group_size"], resolved["compute_multiplier"]) == (2, 2, 2)
    config, resolved = resolve("grpo", group_size=4, compute_multiplier=1.5)
    assert (config.samples_per_prompt, resolved["group_size"]) == (6, 6)
    config, resolved = resolve(compute_multiplier="auto")
    assert (config.samples_per_prompt, resolved["compute_multiplier"]) == (1, 1.0)


def test_a_compute_multiplier_that_leaves_grpo_one_sample_names_itself(resolve: Resolve) -> None:
    with pytest.raises(EngineError) as caught:
        resolve("grpo", compute_multiplier=0.1)
    assert caught.value.param == "method.reinforcement.hyperparameters.compute_multiplier"


@pytest.mark.parametrize(
    ("hyperparameters", "tokens"),
    [
        ({"reasoning_effort": "default"}, 32),  # sppo-tiny's own max_response_tokens
        ({"reasoning_effort": "low"}, 1024),
        ({"reasoning_effort": "high", "max_response_tokens": 16}, 16),  # an explicit budget wins
        ({}, 32),
    ],
)
def test_reasoning_effort_picks_the_response_budget(
    resolve: Resolve, hyperparameters: dict[str, Any], tokens: int
) -> None:
    config, resolved = resolve(**hyperparameters)
    assert config.max_response_tokens == resolved["max_response_tokens"] == tokens
    assert resolved.get("reasoning_effort") == hyperparameters.get("reasoning_effort")


JUDGE = {"type": "score_model", "name": "judge", "model": "sppo-tiny", "range": [0, 10],
         "input": [{"role": "user", "content": "{{item.question}}"}]}  # fmt: skip


def test_the_engine_finds_the_model_server_secret_the_config_does_not_hold(
    session: Session, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "worker-model-server-secret-0123456789abcdef"
    for name in ("SPPO_INFERENCE_SECRET", "SPPO_JUDGE_API_KEY"):
        monkeypatch.setenv(name, "stale")  # restored afterwards; the worker puts the current key there
    keys = {"inference_secret": SecretStr(secret), "judge_api_key": SecretStr("judge-key")}
    configured = settings.model_copy(update=keys)
    grading = worker_grading(session, settings=configured, tenant_id="org-none", grader=JUDGE, param="grader")
    assert secret not in json.dumps(grading) and "judge-key" not in json.dumps(grading)
    assert os.environ["SPPO_INFERENCE_SECRET"] == secret
    judge = GradingContext.from_dict(grading).judges["sppo-tiny"]
    assert judge.internal is not None and judge.api_key == secret
