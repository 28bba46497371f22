"""A user's first job on data nobody tuned for: through the API, with no hyperparameters at all.

The data is a held-out task variant of benchmarks/battery.py (seeds, term counts and value ranges the
fixtures and their defaults never saw). The job must end with validation pass@1 above its step-0 score by at
least 4 standard errors of the difference, and its `fine_tuned_model`, scored by the evaluations API on the
same file, at least its best evaluation during training.
"""

import math
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from benchmarks.battery import BATTERY, data_files
from worker.engine.fixtures import FIXTURE_GRADER

from .conftest import FINISHED, wait_for

SLOW = {"short-high": False, "long-short": True}
"""The short model's job takes about a minute here (make test); the long model's several (make bench)."""


def evaluation_score(api: httpx.Client, model: str, file_id: str) -> float:
    body = {"model": model, "file": file_id, "samples": 1, "grader": FIXTURE_GRADER}
    evaluation = api.post("/v1/evaluations", json=body).json()
    while evaluation["status"] not in FINISHED:
        time.sleep(0.5)
        evaluation = api.get(f"/v1/evaluations/{evaluation['id']}").json()
    assert evaluation["status"] == "succeeded", evaluation
    return float(evaluation["scores"]["eval/pass@1"])


@pytest.mark.parametrize(
    "variant", [pytest.param(name, marks=[pytest.mark.slow] if slow else []) for name, slow in SLOW.items()]
)
def test_default_job_improves_a_held_out_task(
    api: httpx.Client, upload: Callable[[bytes, str], str], tmp_path: Path, variant: str
) -> None:
    train, validation = data_files(tmp_path, BATTERY[variant], seed=0)
    model = BATTERY[variant].model
    body = {
        "model": model,
        "training_file": upload(train.read_bytes(), "train.jsonl"),
        "validation_file": (validation_id := upload(validation.read_bytes(), "validation.jsonl")),
        "method": {"type": "reinforcement", "reinforcement": {"grader": FIXTURE_GRADER}},
    }
    created = api.post("/v1/fine_tuning/jobs", json=body)
    assert created.status_code == 200, created.text
    job = wait_for(api, created.json()["id"], lambda j: j["status"] in FINISHED, timeout=3600)
    assert job["status"] == "succeeded", job
    series = api.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics", params={"limit": 10000}).json()["data"]
    scores = [(p["step"], p["metrics"]["eval/pass@1"]) for p in series if "eval/pass@1" in p["metrics"]]
    (first_step, base), (_, final) = scores[0], scores[-1]
    items = BATTERY[variant].validation_items
    error = math.sqrt((base * (1 - base) + final * (1 - final)) / items)
    assert first_step == 0 and final - base >= 4 * error, scores
    best = max(score for _, score in scores)
    # the same weights scored again: merged for serving, one greedy token may round the other way (one item)
    scored = evaluation_score(api, job["fine_tuned_model"], validation_id)
    assert scored >= best - 1 / items - 1e-9, (job["fine_tuned_model"], scored, scores)
