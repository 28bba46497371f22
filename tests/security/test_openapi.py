"""The OpenAPI schema documents what the API really answers: OpenAI-shaped errors, no 422, Bearer auth."""

from typing import Any

import pytest

from app.main import create_app

ERROR_REF = "#/components/schemas/ErrorResponse"
# Beyond 401/429/503 (every /v1 operation), the errors each operation declares.
EXPECTED = {
    ("post", "/v1/files"): {"400", "413"},
    ("get", "/v1/files/{file_id}"): {"400", "404"},
    ("delete", "/v1/files/{file_id}"): {"400", "404", "409"},
    ("post", "/v1/fine_tuning/jobs"): {"400", "404", "413"},  # 404: a model not the tenant's (warm start)
    ("post", "/v1/fine_tuning/jobs/{job_id}/cancel"): {"400", "404", "409"},
    ("post", "/v1/fine_tuning/jobs/{job_id}/resume"): {"400", "404", "409"},
    ("get", "/v1/fine_tuning/jobs/{job_id}/metrics/stream"): {"400", "404"},
    ("post", "/v1/evaluations"): {"400", "413"},
    ("get", "/v1/models"): set(),
    ("get", "/v1/models/{model_id}"): {"400", "404"},
    ("delete", "/v1/models/{model_id}"): {"400", "403", "404"},
    ("post", "/v1/chat/completions"): {"400", "404", "413"},
}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return create_app().openapi()


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, ops in schema["paths"].items() for m, op in ops.items()]


def test_no_operation_documents_a_422(schema: dict[str, Any]) -> None:
    assert all("422" not in op["responses"] for _, _, op in _operations(schema))
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_every_v1_operation_documents_its_errors_in_the_openai_shape(schema: dict[str, Any]) -> None:
    v1 = [(m, p, op) for m, p, op in _operations(schema) if p.startswith("/v1/")]
    assert len(v1) == 34  # 28 + the samples listing and the five webhooks operations
    for method, path, op in v1:
        codes = {code for code in op["responses"] if code != "200"}
        assert {"401", "429", "503"} <= codes, (method, path)
        for code in codes:
            content = op["responses"][code]["content"]["application/json"]["schema"]
            assert content == {"$ref": ERROR_REF}, (method, path, code)
        assert "Retry-After" in op["responses"]["429"]["headers"]
        assert op["security"] == [{"ApiKey": []}]
        if (method, path) in EXPECTED:
            assert codes - {"401", "429", "503"} == EXPECTED[(method, path)], (method, path)
    error = schema["components"]["schemas"]["ErrorDetail"]
    assert set(error["properties"]) == {"message", "type", "param", "code"}


def test_probes_need_no_key(schema: dict[str, Any]) -> None:
    for path in ("/health", "/ready", "/metrics"):
        assert "security" not in schema["paths"][path]["get"]
    assert "503" in schema["paths"]["/ready"]["get"]["responses"]
