"""Schemathesis against the live schema of a real `uvicorn app.main:app`: every operation, stateful links.

The server is seeded with real objects (an uploaded training file, a job on it, a finished evaluation's
row), and their ids are the path parameters, so generated requests reach the handlers behind the 404s.
Checked on every response: no 5xx, the status code documented, the body and content type as documented.

`make test` runs a bounded, reproducible pass (seeded, deterministic, a few examples per operation);
`make fuzz` sets SPPO_FUZZ_MAX_EXAMPLES and SPPO_FUZZ_MAX_TIME_S for the full run.
"""

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.db import session_scope
from core.models import Checkpoint

from ..app.conftest import GRADER, ITEM, Server, method, migrate, run_api_server

MAX_EXAMPLES = int(os.environ.get("SPPO_FUZZ_MAX_EXAMPLES", "5"))
MAX_TIME_S = os.environ.get("SPPO_FUZZ_MAX_TIME_S")
RESULTS = os.environ.get("SPPO_FUZZ_RESULTS")  # `make fuzz` writes its summary there
# The coverage phase (every boundary value of every parameter) takes minutes: `make fuzz` adds it.
PHASES = os.environ.get("SPPO_FUZZ_PHASES", "examples,fuzzing,stateful")
SEED = 20261201
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("sppo-fuzz")
    db_url = f"sqlite:///{data_dir / 'api.db'}"
    migrate(data_dir, db_url)
    with run_api_server(data_dir, db_url=db_url, redis_url=redis_url, env={}) as running:
        yield running


def _seed(target: Server, client: httpx.Client) -> dict[str, str]:
    """Real objects for the path parameters: a file, a job on it (cancelled, so its stream ends), a
    checkpoint of that job (its row; no worker runs here, so its adapter is not stored) and an evaluation."""
    file = client.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", ITEM.encode())})
    assert file.status_code == 200, file.text
    file_id = file.json()["id"]
    body = {"model": "sppo-tiny", "training_file": file_id, "method": method(batch_size=1)}
    job = client.post("/v1/fine_tuning/jobs", json=body)
    assert job.status_code == 200, job.text
    job_id = job.json()["id"]
    assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 200
    scored = {"model": "sppo-tiny", "file": file_id, "grader": GRADER}
    evaluation = client.post("/v1/evaluations", json=scored)
    assert evaluation.status_code == 200, evaluation.text
    with session_scope(target.db_url) as session:
        checkpoint = Checkpoint(
            job_id=job_id, step_number=1, fine_tuned_model_checkpoint=f"ft:{job_id}:ckpt-step-1", uri="jobs/x"
        )
        session.add(checkpoint)
        session.commit()
        checkpoint_id = checkpoint.id
    return {
        "file_id": file_id,
        "job_id": job_id,
        "checkpoint_id": checkpoint_id,
        "evaluation_id": evaluation.json()["id"],
    }


def _config(seeds: dict[str, str], key: str) -> str:
    parameters = {f"path.{name}": value for name, value in seeds.items()}
    lines = ["[parameters]", *(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in parameters.items())]
    lines += ["", "[headers]", f"Authorization = {json.dumps('Bearer ' + key)}"]
    lines += ["", "[checks]", "enabled = false", *(f"{check}.enabled = true" for check in CHECKS)]
    # An extra, unknown request header is not invalid HTTP: no server "rejects" it. Schemathesis's
    # negative cases add one to the only operation with a header parameter (Last-Event-ID).
    lines += [
        "",
        "[[operations]]",
        'include-path-regex = "/metrics/stream$"',
        "checks.negative_data_rejection.enabled = false",
        # No model server runs beside this API: the operations it answers are a documented 503.
        "",
        "[[operations]]",
        'include-path-regex = "^/v1/(chat/completions|completions|models/.+/files)$"',
        "checks.not_a_server_error.enabled = false",
    ]
    return "\n".join(lines) + "\n"


def run_schemathesis(target: Server, workdir: Path) -> subprocess.CompletedProcess[str]:
    key = target.new_key()
    with target.client(key) as client:
        seeds = _seed(target, client)
    config = workdir / "schemathesis.toml"
    config.write_text(_config(seeds, key))
    command: list[Any] = [
        Path(sys.executable).parent / "schemathesis",
        "--config-file",
        config,
        "run",
        f"{target.base_url}/openapi.json",
        "--max-examples",
        MAX_EXAMPLES,
        "--seed",
        SEED,
        "--generation-deterministic",
        "--phases",
        PHASES,
        "--request-timeout",
        "10",
        "--workers",
        "1",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        workdir,
    ]
    if MAX_TIME_S:
        command += ["--max-time", MAX_TIME_S]
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=900)


def _summary(stdout: str) -> dict[str, Any]:
    tested = re.search(r"Tested:\s+(\d+)", stdout)
    generated = re.search(r"(\d+) generated", stdout)
    seconds = re.search(r"=+ .* in ([\d.]+)s =+", stdout)
    return {
        "operations_tested": int(tested.group(1)) if tested else None,
        "test_cases": int(generated.group(1)) if generated else None,
        "seconds": float(seconds.group(1)) if seconds else None,
        "phases": PHASES.split(","),
        "max_examples": MAX_EXAMPLES,
        "failures": 0,
        "checks": CHECKS,
    }


def test_fuzz_the_live_schema(target: Server, tmp_path: Path) -> None:
    result = run_schemathesis(target, tmp_path)
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    assert re.search(r"Tested:\s+37\b", result.stdout), result.stdout[-5000:]  # every operation ran
    if RESULTS:
        Path(RESULTS).write_text(json.dumps(_summary(result.stdout), indent=2) + "\n")
