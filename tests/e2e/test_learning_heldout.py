"""A user's first job on data nobody tuned for: through the API, with no hyperparameters at all.

The data is a held-out task variant of benchmarks/battery.py (seeds, term counts and value ranges the
fixtures and their defaults never saw). The job's last checkpoint must beat the base model on the validation
items by at least 4 standard errors of the paired difference (both scored by the evaluations API, item by
item), and its `fine_tuned_model` must score at least its best evaluation during training.
"""

import json
import math
import statistics
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


def passed_items(api: httpx.Client, model: str, file_id: str) -> list[float]:
    """Greedy pass (1.0 or 0.0) of every validation item, in file order, by the evaluations API."""
    body = {"model": model, "file": file_id, "samples": 1, "grader": FIXTURE_GRADER}
    evaluation = api.post("/v1/evaluations", json=body).json()
    while evaluation["status"] not in FINISHED:
        time.sleep(0.5)
        evaluation = api.get(f"/v1/evaluations/{evaluation['id']}").json()
    assert evaluation["status"] == "succeeded", evaluation
    lines = [json.loads(line) for line in api.get(evaluation["results_url"]).text.splitlines()]
    return [float(line["passed"]) for line in sorted(lines, key=lambda line: line["index"])]


@pytest.mark.parametrize(
    "variant", [pytest.param(name, marks=[pytest.mark.slow] if slow else []) for name, slow in SLOW.items()]
)
def test_default_job_improves_a_held_out_task(
    api: httpx.Client, upload: Callable[[bytes, str], str], tmp_path: Path, variant: str
) -> None:
    train, validation = data_files(tmp_path, BATTERY[variant], seed=0)
    model = BATTERY[variant].model
    validation_id = upload(validation.read_bytes(), "validation.jsonl")
    body = {
        "model": model,
        "training_file": upload(train.read_bytes(), "train.jsonl"),
        "validation_file": validation_id,
        "method": {"type": "reinforcement", "reinforcement": {"grader": FIXTURE_GRADER}},
    }
    created = api.post("/v1/fine_tuning/jobs", json=body)
    assert created.status_code == 200, created.text
    job = wait_for(api, created.json()["id"], lambda j: j["status"] in FINISHED, timeout=3600)
    assert job["status"] == "succeeded", job
    series = api.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics", params={"limit": 10000}).json()["data"]
    scores = [(p["step"], p["metrics"]["eval/pass@1"]) for p in series if "eval/pass@1" in p["metrics"]]
    last = f"{job['fine_tuned_model']}:ckpt-step-{scores[-1][0]}"
    base, trained = passed_items(api, model, validation_id), passed_items(api, last, validation_id)
    differences = [after - before for before, after in zip(base, trained, strict=True)]
    gain, error = statistics.fmean(differences), statistics.stdev(differences) / math.sqrt(len(differences))
    print(f"{variant}: base {statistics.fmean(base):.3f} -> last {statistics.fmean(trained):.3f}, gain"
          f" {gain:+.3f} ± {error:.3f} (paired SE); evaluations {scores}")  # fmt: skip
    assert scores[0][0] == 0 and gain >= 4 * error, (gain, error, scores)
    # the model is the best checkpoint: scored again, it is at least its best evaluation (merged for
    # serving, one greedy token may round the other way: one item)
    best = max(score for _, score in scores)
    model_score = statistics.fmean(passed_items(api, job["fine_tuned_model"], validation_id))
    assert model_score >= best - 1 / len(base) - 1e-9, (job["fine_tuned_model"], model_score, scores)
