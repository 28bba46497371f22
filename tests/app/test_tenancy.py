"""A second tenant sees none of the first tenant's objects: every lookup answers 404, every list is empty."""

from collections.abc import Callable
from typing import Any

import httpx

from .conftest import Server, assert_error, method


def test_second_tenant_sees_nothing(
    server: Server, api: httpx.Client, upload: Callable[..., dict[str, Any]]
) -> None:
    file = upload()
    job = api.post(
        "/v1/fine_tuning/jobs", json={"model": "sppo-tiny", "training_file": file["id"], "method": method()}
    ).json()
    with server.client(server.new_key()) as other:
        assert other.get("/v1/files").json()["data"] == []
        assert other.get("/v1/fine_tuning/jobs").json()["data"] == []
        for path in (f"/v1/files/{file['id']}", f"/v1/files/{file['id']}/content"):
            assert_error(other.get(path), 404)
        assert_error(other.delete(f"/v1/files/{file['id']}"), 404)
        job_path = f"/v1/fine_tuning/jobs/{job['id']}"
        for path in (job_path, f"{job_path}/events", f"{job_path}/checkpoints"):
            assert_error(other.get(path), 404)
        for action in ("cancel", "pause", "resume"):
            assert_error(other.post(f"{job_path}/{action}"), 404)
        # Cursors and file references from the other tenant do not resolve either.
        assert_error(other.get("/v1/fine_tuning/jobs", params={"after": job["id"]}), 400, "after")
        assert_error(other.get("/v1/files", params={"after": file["id"]}), 400, "after")
        body = {"model": "sppo-tiny", "training_file": file["id"], "method": method()}
        assert_error(other.post("/v1/fine_tuning/jobs", json=body), 400, "training_file")
    # The owner still sees everything untouched.
    assert api.get(job_path).json()["status"] == "queued"
    assert api.get(f"/v1/files/{file['id']}").status_code == 200
