"""Failures a user causes end the job as `failed` with an error they can act on, never a traceback."""

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import FINISHED, Stack, jsonl, sppo_method, wait_for
from worker.engine.fixtures import Fixture

# Real training on a shared CPU: generous limits, so a loaded machine slows these tests down only.
pytestmark = pytest.mark.timeout(1800)

NO_ANSWER = b"".join(
    json.dumps({"messages": [{"role": "user", "content": f"{i}+1+1="}], "note": "x"}).encode() + b"\n"
    for i in range(10, 26)
)


def _create(api: httpx.Client, **body: Any) -> httpx.Response:
    return api.post("/v1/fine_tuning/jobs", json={"model": "sppo-tiny", "method": sppo_method(), **body})


def _failed(api: httpx.Client, job_id: str) -> dict[str, Any]:
    job = wait_for(api, job_id, lambda j: j["status"] in FINISHED)
    assert job["status"] == "failed", job
    error: dict[str, Any] = job["error"]
    assert error["message"] and "Traceback" not in error["message"]
    return error


def test_a_model_folder_without_weights_is_not_offered(
    api: httpx.Client, upload: Callable[..., str], tiny: Fixture
) -> None:
    assert "broken/tiny" not in [m["id"] for m in api.get("/v1/models").json()["data"]]
    response = _create(api, model="broken/tiny", training_file=upload(jsonl(tiny.train_file, 0, 16)))
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    assert "broken/tiny" in error["message"] and "/" + "tmp" not in error["message"]  # no server paths


def test_items_without_the_graders_reference_field(
    stack: Stack, api: httpx.Client, upload: Callable[..., str], tiny: Fixture
) -> None:
    # Caught when the job is created, naming the param ...
    response = _create(api, training_file=upload(NO_ANSWER))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "method.reinforcement.grader.reference"
    # ... and by the worker when the file changed after it was validated (here: rewritten in storage).
    file_id = upload(jsonl(tiny.train_file, 0, 16))
    (stack.data_dir / "files" / f"{file_id}.jsonl").write_bytes(NO_ANSWER)
    response = _create(api, training_file=file_id)
    assert response.status_code == 200, response.text
    error = _failed(api, response.json()["id"])
    assert error["code"] in ("grader_error", "invalid_training_file"), error
    assert "answer" in error["message"]
    print(f"worker error for items without 'answer': {error}")


def test_evaluations_are_validated_when_created(
    api: httpx.Client, upload: Callable[..., str], tiny: Fixture
) -> None:
    file_id = upload(jsonl(tiny.validation_file, 0, 4))
    grader = sppo_method()["reinforcement"]["grader"]
    unknown = api.post("/v1/evaluations", json={"model": "ft:nope", "file": file_id, "grader": grader})
    assert (unknown.status_code, unknown.json()["error"]["param"]) == (400, "model")
    no_answer = api.post(
        "/v1/evaluations", json={"model": "sppo-tiny", "file": upload(NO_ANSWER), "grader": grader}
    )
    assert (no_answer.status_code, no_answer.json()["error"]["param"]) == (400, "grader.reference")
    missing = api.post("/v1/evaluations", json={"model": "sppo-tiny", "file": "file-nope", "grader": grader})
    assert (missing.status_code, missing.json()["error"]["param"]) == (400, "file")
    assert api.get("/v1/evaluations/eval-nope").status_code == 404
