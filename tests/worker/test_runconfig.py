"""The run config's `grading` section names where the engine finds the keys, holds none of them, and the
worker puts the current ones in its environment: a judge on our model server gets the model server's secret,
an external judge the operator's key."""

import json
import os

import pytest
from pydantic import SecretStr
from sqlalchemy.orm import Session

from app.settings import Settings
from grading.context import GradingContext
from worker.runconfig import worker_grading

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
