"""Hostile input: every case is a clear 4xx in OpenAI's error shape, before anything is written.

Each request goes to the live server; after each, the same client's connection must still be usable (the
error did not drop the keep-alive connection) and the server healthy.
"""

import json
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.app.conftest import GRADER, ITEM, MAX_UPLOAD_BYTES, REGISTRY_MODEL, Server, assert_error, method

JOBS = "/v1/fine_tuning/jobs"


def job_body(file_id: str, **overrides: Any) -> dict[str, Any]:
    return {"model": REGISTRY_MODEL, "training_file": file_id, "method": method(), **overrides}


def hyper(file_id: str, raw: str) -> bytes:
    """A create-job body whose hyperparameters are the raw JSON text `raw` (for Infinity and 1e309)."""
    body = json.dumps(job_body(file_id)).replace('"hyperparameters": {}', f'"hyperparameters": {raw}')
    return body.encode()


def grader(**fields: Any) -> dict[str, Any]:
    return {"type": "reinforcement", "reinforcement": {"grader": {**GRADER, **fields}}}


def assert_still_usable(api: httpx.Client, response: httpx.Response) -> None:
    assert response.headers.get("connection") != "close", "an error without an unread body dropped keep-alive"
    assert api.get("/health").status_code == 200


@pytest.fixture
def file_id(upload: Callable[..., dict[str, Any]]) -> str:
    return str(upload()["id"])


HYPERPARAMETERS = "method.reinforcement.hyperparameters"


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ('{"kl_coef": Infinity}', f"{HYPERPARAMETERS}.kl_coef"),
        ('{"kl_coef": NaN}', f"{HYPERPARAMETERS}.kl_coef"),
        ('{"lora_alpha": 1e309}', f"{HYPERPARAMETERS}.lora_alpha"),
        ('{"lora_alpha": 1e308}', f"{HYPERPARAMETERS}.lora_alpha"),
        ('{"temperature": 5e-324}', f"{HYPERPARAMETERS}.temperature"),
        ('{"learning_rate_multiplier": -Infinity}', f"{HYPERPARAMETERS}.learning_rate_multiplier"),
        ('{"eval_interval": 9223372036854775808}', f"{HYPERPARAMETERS}.eval_interval"),
    ],
)
def test_non_finite_and_out_of_range_numbers(api: httpx.Client, file_id: str, raw: str, param: str) -> None:
    response = api.post(JOBS, content=hyper(file_id, raw), headers={"Content-Type": "application/json"})
    assert_error(response, 400, param)
    assert_still_usable(api, response)


@pytest.mark.parametrize(
    ("overrides", "param", "status"),
    [
        ({"metadata": {"team\u0000": "x"}}, "metadata", 400),
        ({"metadata": {"team": "x\u0000"}}, "metadata", 400),
        ({"metadata": {"team": "\ud800"}}, "metadata.team", 400),
        ({"metadata": {f"k{i}": "v" for i in range(10_000)}}, "metadata", 400),
        ({"training_file": "file-\u0000"}, "training_file", 400),
        ({"suffix": "a\u0000"}, "suffix", 400),
        ({"model": "../../etc/passwd"}, "model", 404),
        ({"model": "/etc/passwd"}, "model", 404),
        ({"model": "meta-llama/Llama-3.1-8B"}, "model", 404),
        ({"model": "https://example.com/model"}, "model", 404),
        ({"model": "m\u0000"}, "model", 400),
        ({"training_file": "../../../etc/passwd"}, "training_file", 400),
        ({"training_file": "/etc/passwd"}, "training_file", 400),
        ({"method": grader(input="{% if true %}x{% endif %}")}, "method.reinforcement.grader.input", 400),
        ({"method": grader(reference="{# note #}")}, "method.reinforcement.grader.reference", 400),
        (
            {"method": grader(type="regex", pattern="(", operation="eq")},
            "method.reinforcement.grader.pattern",
            400,
        ),
        ({"method": grader(type="regex", pattern="(a)(b)")}, "method.reinforcement.grader.pattern", 400),
    ],
)
def test_hostile_job_fields(
    api: httpx.Client, file_id: str, overrides: dict[str, Any], param: str, status: int
) -> None:
    """Refused without touching the filesystem; a model name that is no model of the registry or of the
    tenant is a 404, like another tenant's model (warm start: nothing tells the two apart)."""
    body = json.dumps(job_body(file_id, **overrides))  # ASCII escapes: a lone surrogate travels as \ud800
    response = api.post(JOBS, content=body, headers={"Content-Type": "application/json"})
    assert_error(response, status, param)
    assert_still_usable(api, response)


def test_a_regex_the_grader_accepts_is_accepted(api: httpx.Client, file_id: str) -> None:
    # \p{L} is valid for the `regex` module the grader runs, though `re` refuses it.
    body = job_body(file_id, method=grader(type="regex", pattern=r"(\p{L}+)"))
    response = api.post(JOBS, json=body)
    assert response.status_code == 200, response.text
    api.post(f"{JOBS}/{response.json()['id']}/cancel")


@pytest.mark.parametrize(
    ("path", "param"),
    [
        (f"{JOBS}/ftjob-%00", "path"),
        ("/v1/files/file-%00x", "path"),
        (f"{JOBS}?after=ftjob-%00", "after"),
        (f"{JOBS}?metadata%5Bteam%5D=%00", "metadata[team]"),
        ("/v1/evaluations?after=%00", "after"),
        (f"{JOBS}/ftjob-x/metrics?after_step=9223372036854775808", "after_step"),
        (f"{JOBS}?after=ftjob-forged", "after"),
        (f"{JOBS}?limit=100000", "limit"),
    ],
)
def test_hostile_ids_and_cursors(api: httpx.Client, path: str, param: str) -> None:
    response = api.get(path)
    assert_error(response, 400, param)
    assert_still_usable(api, response)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/files/..%2F..%2Fetc%2Fpasswd",
        "/v1/files/%2Fetc%2Fpasswd",
        f"{JOBS}/..%2F..%2Fapi.db",
        "/v1/files/x/content",
    ],
)
def test_traversal_in_ids_finds_nothing(api: httpx.Client, path: str) -> None:
    response = api.get(path)
    assert response.status_code == 404, response.text
    assert_still_usable(api, response)


def test_stream_cursor_out_of_range(api: httpx.Client, file_id: str) -> None:
    job = api.post(JOBS, json=job_body(file_id)).json()
    for bad in ("1-" + "9" * 20, "18446744073709551616-0", "1-2-3", "-1-0", "step-" + "9" * 19):
        response = api.get(f"{JOBS}/{job['id']}/metrics/stream", headers={"Last-Event-ID": bad})
        assert_error(response, 400, "Last-Event-ID")
        response = api.get(f"{JOBS}/{job['id']}/metrics/stream", params={"from": bad})
        assert_error(response, 400, "from")
    assert_error(api.get(f"{JOBS}/{job['id']}/metrics/stream", params={"from": "1" * 65}), 400, "from")
    api.post(f"{JOBS}/{job['id']}/cancel")
    assert api.get("/health").status_code == 200


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (
            '{"messages": [{"role": "user", "content": "hi"}], "x": ' + "[" * 100_000 + "\n",
            "nested too deeply",
        ),
        ('{"messages": [{"role": "user", "content": "\\ud800"}], "answer": "1"}\n', "lone surrogate"),
        ('{"messages": [{"role": "user", "content": "hi"}]\n', "not valid JSON"),
        ("[1, 2]\n", "expected a JSON object"),
    ],
)
def test_hostile_jsonl_lines(api: httpx.Client, server: Server, content: str, what: str) -> None:
    before = set((server.data_dir / "files").glob("*"))
    response = api.post(
        "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", content.encode())}
    )
    error = assert_error(response, 400, "file")
    assert what in error["message"]
    assert set((server.data_dir / "files").glob("*")) == before  # nothing left behind
    assert_still_usable(api, response)


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"model": ', "application/json"),
        (b"model=x", "application/x-www-form-urlencoded"),
        (b'{"model": "x"}', "text/plain"),
        (b"\xff\xfe", "application/json"),
    ],
)
def test_malformed_bodies_and_wrong_content_types(
    api: httpx.Client, content: bytes, content_type: str
) -> None:
    response = api.post(JOBS, content=content, headers={"Content-Type": content_type})
    assert_error(response, 400)
    assert_still_usable(api, response)


def test_truncated_multipart(api: httpx.Client, server: Server) -> None:
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n' + ITEM.encode()
    response = api.post(
        "/v1/files", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert 400 <= response.status_code < 500, response.text
    assert not list((server.data_dir / "files").glob("*.part"))


def test_json_bodies_have_a_size_limit(api: httpx.Client, file_id: str) -> None:
    body = json.dumps(job_body(file_id, suffix="x" * (2 * 1024 * 1024)))
    response = api.post(JOBS, content=body, headers={"Content-Type": "application/json"})
    assert_error(response, 413)


def test_no_body_is_read_before_authentication(server: Server) -> None:
    files_before = (
        set((server.data_dir / "files").glob("*")) if (server.data_dir / "files").exists() else set()
    )
    with httpx.Client(base_url=server.base_url, timeout=10) as anonymous:
        upload = anonymous.post(
            "/v1/files",
            data={"purpose": "fine-tune"},
            files={"file": ("t.jsonl", ITEM * (MAX_UPLOAD_BYTES // 100))},
        )
        assert_error(upload, 401)
        assert upload.headers.get("connection") == "close"  # the unread body is not waited for

        def chunks() -> Any:
            yield b'{"model": "'
            yield b"x" * (4 * 1024 * 1024)  # far past the JSON limit: only authentication can answer first
            yield b'"}'

        huge = anonymous.post(JOBS, content=chunks(), headers={"Content-Type": "application/json"})
        assert_error(huge, 401)
    files_after = (
        set((server.data_dir / "files").glob("*")) if (server.data_dir / "files").exists() else set()
    )
    assert files_after == files_before


def test_revoked_and_malformed_keys(server: Server) -> None:
    from app.services.keys import create_key, revoke_key
    from core.db import session_scope

    with session_scope(server.db_url) as session:
        created = create_key(session, tenant_name="revoked-tenant")
        revoke_key(session, key_id=created.api_key.id)
    for header in (
        f"Bearer {created.plaintext}",
        "Bearer",
        "Basic abc",
        "Bearer sk-" + "a" * 5000,
        "Bearer \u00e9",
    ):
        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            response = http.get(JOBS, headers={"Authorization": header.encode()})
        assert_error(response, 401)


def test_injected_request_id_is_not_echoed(api: httpx.Client) -> None:
    for hostile in ("<script>alert(1)</script>", "a b", "x" * 200, "id;drop"):
        response = api.get("/health", headers={"X-Request-ID": hostile})
        assert response.headers["x-request-id"] != hostile


def test_other_tenants_ids_are_not_found(server: Server, api: httpx.Client, file_id: str) -> None:
    job = api.post(JOBS, json=job_body(file_id)).json()
    with server.client(server.new_key()) as other:
        for verb, path in [
            ("GET", f"/v1/files/{file_id}"),
            ("GET", f"/v1/files/{file_id}/content"),
            ("DELETE", f"/v1/files/{file_id}"),
            ("GET", f"{JOBS}/{job['id']}"),
            ("GET", f"{JOBS}/{job['id']}/events"),
            ("GET", f"{JOBS}/{job['id']}/checkpoints"),
            ("GET", f"{JOBS}/{job['id']}/metrics"),
            ("GET", f"{JOBS}/{job['id']}/metrics/stream"),
            ("POST", f"{JOBS}/{job['id']}/cancel"),
            ("POST", f"{JOBS}/{job['id']}/pause"),
            ("POST", f"{JOBS}/{job['id']}/resume"),
        ]:
            assert other.request(verb, path).status_code == 404, (verb, path)
        # Another tenant's file as training data, and another tenant's job as a cursor, are refused too.
        assert_error(other.post(JOBS, json=job_body(file_id)), 400, "training_file")
        assert_error(other.get(f"{JOBS}?after={job['id']}"), 400, "after")
    api.post(f"{JOBS}/{job['id']}/cancel")


def test_a_slow_body_is_cut_off(server: Server) -> None:
    """Headers promise 1,000 bytes, 10 arrive: the server answers 408 after its body timeout (2 s here)
    and closes the connection."""
    address = urlsplit(server.base_url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        key = server.new_key()
        head = (
            f"POST {JOBS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
        started = time.monotonic()
        sock.sendall(head.encode() + b'{"model": ')
        received = b""
        while chunk := sock.recv(4096):  # the head and the body may come in separate reads; b"": closed
            received += chunk
        answer = received.decode()
        assert answer.startswith("HTTP/1.1 408"), answer
        assert "connection: close" in answer.lower()  # the rest of the body is never read: closed
        assert time.monotonic() - started < 8
    assert httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200


def test_a_prompt_longer_than_the_models_context(
    api: httpx.Client, upload: Callable[..., dict[str, Any]]
) -> None:
    line = json.dumps({"messages": [{"role": "user", "content": "1+" * 50_000}], "answer": "1"}) + "\n"
    long_file = upload(line)
    error = assert_error(
        api.post(JOBS, json=job_body(long_file["id"], model="sppo-tiny")), 400, "training_file"
    )
    assert error["code"] == "prompt_too_long"
    evaluation = {"model": "sppo-tiny", "file": long_file["id"], "grader": GRADER}
    assert_error(api.post("/v1/evaluations", json=evaluation), 400, "file")


def test_the_api_knows_the_fixtures_context(tiny: Any) -> None:
    from core.registry import FIXTURE_MODEL, find_base_model
    from core.settings import Settings

    entry = find_base_model(Settings(), FIXTURE_MODEL)
    config = json.loads((tiny.model_dir / "config.json").read_text())
    assert entry is not None and entry.context_length == config["max_position_embeddings"]
