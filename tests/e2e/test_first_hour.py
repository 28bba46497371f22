"""A new user's first hour, end to end: the preflight catches a grader that cannot reward the model, an
evaluation finishes while a training job runs (its own queue and worker), and the README's first job —
`make run`'s stack, the documented example on sppo-tiny with the default grader and hyperparameters —
starts training at once and ends with validation above its step-0 score."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.conftest import FINISHED, Stack, jsonl, sppo_method, wait_for
from worker.engine.fixtures import Fixture

pytestmark = pytest.mark.timeout(1800)
STRING_CHECK = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}", "operation": "eq"}  # fmt: skip


def _events(api: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return list(api.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}).json()["data"])


def test_preflight_fails_a_job_whose_grader_never_rewards_the_model(
    api: httpx.Client, upload: Any, tiny: Fixture
) -> None:
    # sppo-tiny answers "a+b=s;s+c=t#### t": an exact string match against the answer can never be 1.
    method = sppo_method()
    method["reinforcement"]["grader"] = STRING_CHECK
    body = {"model": "sppo-tiny", "training_file": upload(jsonl(tiny.train_file, 0, 32)), "method": method}
    job = wait_for(
        api, api.post("/v1/fine_tuning/jobs", json=body).json()["id"], lambda j: j["status"] in FINISHED
    )
    assert job["status"] == "failed" and job["current_step"] == 0, job
    assert (job["error"]["code"], job["error"]["param"]) == (
        "grader_constant_reward",
        "method.reinforcement.grader",
    )
    assert "grader 'exact' (string_check) gave reward 0 to all" in job["error"]["message"]
    assert "allow_constant_reward" in job["error"]["message"]

    # With the override the same job trains, and the preflight's finding is a warning event.
    method["reinforcement"]["hyperparameters"]["allow_constant_reward"] = True
    job_id = api.post("/v1/fine_tuning/jobs", json=body).json()["id"]
    wait_for(api, job_id, lambda j: j["current_step"] >= 1 or j["status"] in FINISHED)
    warned = [e for e in _events(api, job_id) if e["level"] == "warn" and "Preflight" in e["message"]]
    assert len(warned) == 1 and "Training anyway" in warned[0]["message"]
    api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")


def test_an_evaluation_finishes_while_a_training_job_runs(
    stack: Stack, api: httpx.Client, upload: Any, tiny: Fixture
) -> None:
    stack.start_worker("evaluation")  # as `make run` does: evaluations never wait behind training
    try:
        method = sppo_method(n_epochs=50, allow_constant_reward=True)
        body = {
            "model": "sppo-tiny",
            "training_file": upload(jsonl(tiny.train_file, 0, 32)),
            "method": method,
        }
        job_id = api.post("/v1/fine_tuning/jobs", json=body).json()["id"]
        wait_for(api, job_id, lambda j: j["current_step"] >= 1)
        created = api.post(
            "/v1/evaluations",
            json={"model": "sppo-tiny", "file": upload(jsonl(tiny.validation_file, 0, 8)), "samples": 2,
                  "grader": STRING_CHECK},
        )  # fmt: skip
        assert created.status_code == 200, created.text
        deadline = time.monotonic() + 300
        while (evaluation := api.get(f"/v1/evaluations/{created.json()['id']}").json())[
            "status"
        ] != "succeeded":
            assert evaluation["status"] != "failed" and time.monotonic() < deadline, evaluation
            time.sleep(0.5)
        assert api.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "running"  # still training
        defaults = json.loads((tiny.model_dir / "sppo_defaults.json").read_text())
        assert evaluation["temperature"] == defaults["temperature"]  # what training evaluations use
        lines = [json.loads(line) for line in api.get(evaluation["results_url"]).text.splitlines()]
        assert len(lines) == 8
        assert {"prompt", "reference", "completion", "reward", "samples", "sample_rewards"} <= set(lines[0])
        assert len(lines[0]["samples"]) == 2 and lines[0]["prompt"][0]["role"] == "user"
        api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    finally:
        stack.workers.pop().terminate()


def test_the_readme_first_job_on_a_clean_data_dir(tmp_path: Path, tiny: Fixture, redis_url: str) -> None:
    """Needs the shipped fixture (engine issue) for the 30 s start and engine-core's step-0 evaluation for
    the baseline; both assertions read the job's own stamps and metric series."""
    port = free_port()
    env = {**os.environ, "SPPO_DATA_DIR": str(tmp_path / "data"), "SPPO_PORT": str(port),
           "SPPO_REDIS_URL": redis_url, "SPPO_REDIS_PREFIX": f"first-{port}",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    env.pop("SPPO_DATABASE_URL", None)
    sppo = str(Path(sys.executable).parent / "sppo")
    with (tmp_path / "run.log").open("wb") as log:
        run = subprocess.Popen([sppo, "run"], env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert run.stdout is not None
        client_env = dict(env)
        for line in run.stdout:
            if line.startswith("  sppo client: export "):
                for pair in line.removeprefix("  sppo client: export ").split():
                    name, _, value = pair.partition("=")
                    client_env[name] = value.strip('"')
                break
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        (tmp_path / "train.jsonl").write_bytes(tiny.train_file.read_bytes())
        (tmp_path / "valid.jsonl").write_bytes(tiny.validation_file.read_bytes())
        # The README's first job, word for word: default grader, default hyperparameters.
        created = subprocess.run(
            [sppo, "jobs", "create", "--model", "sppo-tiny", "--training-file", "train.jsonl",
             "--validation-file", "valid.jsonl", "--json"],
            env=client_env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        job = json.loads(created.stdout)
        headers = {"Authorization": f"Bearer {client_env['SPPO_API_KEY']}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as api:
            done = wait_for(api, job["id"], lambda j: j["status"] in FINISHED, timeout=1500)
            assert done["status"] == "succeeded", done
            assert done["started_at"] - done["created_at"] <= 30  # trained at once, no fixture build first
            series = api.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics", params={"limit": 10000}).json()
        scores = [
            (p["step"], p["metrics"]["eval/pass@1"]) for p in series["data"] if "eval/pass@1" in p["metrics"]
        ]
        assert scores[0][0] == 0, scores  # the step-0 baseline
        assert scores[-1][1] > scores[0][1], scores
    finally:
        run.terminate()
        run.wait(timeout=120)
