"""The new-job form's grader: its fields as a grader spec, and the "Test the grader" panel's route.

Simple graders (string_check, text_similarity, math, regex) have one field per setting; any grader, of
every type, can be given as JSON instead. The test panel grades one sample with the form's grader through
the same service as `POST /v1/fine_tuning/alpha/graders/run`, authenticated by the session cookie and
CSRF-checked like every dashboard POST; nothing is submitted.
"""

import json
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.datastructures import FormData

from app.api.deps import SessionDep, SettingsDep
from app.errors import APIError, InvalidRequest
from app.services import grading
from app.web.render import PageRoute, render
from app.web.session import CsrfChecked, PostedForm, WebTenant, form_text
from grading.result import flags_set

router = APIRouter(route_class=PageRoute, include_in_schema=False)

JSON_TYPE = "json"  # the type choice whose grader is the `grader_json` field, of any grader type
GRADER_FIELDS = {
    "string_check": ("input", "reference", "operation"),
    "text_similarity": ("input", "reference", "evaluation_metric"),
    "math": ("input", "reference"),
    "regex": ("input", "pattern", "reference", "operation"),
}
# what each of OpenAI's error flags means, for flags the API gives no details of
FLAG_HINTS = {
    "invalid_variable_error": "a template reads a value this item (or sample) does not have",
    "model_grader_parse_error": "the judge's reply held no score in the range, or named no label",
    "model_grader_refusal_error": "the judge refused to grade",
    "model_grader_server_error": "the judge or embeddings model could not be reached, or answered an error",
    "other_error": "the grader failed unexpectedly (see the service's log)",
    "python_grader_runtime_error": "grade() raised, or returned no finite number",
    "python_grader_server_error": "the sandbox failed (not the grader's code)",
    "sample_parse_error": "the sample is not JSON, so {{sample.output_json...}} has no value",
    "unresponsive_reward_error": "grade() ran past its time limit",
}
MAX_SAMPLE_CHARS = 100_000
MAX_ITEM_CHARS = 100_000


def _json(text: str, what: str, param: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(f"{what} is not valid JSON: {exc}.", param=param) from None


def grader_spec(form: FormData) -> Any:
    """The grader the form describes, as the JSON a client would send (the API validates it)."""
    grader_type = form_text(form, "grader_type")
    if grader_type == JSON_TYPE:
        return _json(form_text(form, "grader_json"), "The grader", "grader_json")
    grader: dict[str, Any] = {"type": grader_type, "name": grader_type}
    for field in GRADER_FIELDS.get(grader_type, ()):
        grader[field] = form_text(form, f"grader_{field}")
    return grader


def grader_values(grader: dict[str, Any] | None) -> dict[str, str]:
    """Form values showing a grader: its fields when the form has them all, else the JSON field."""
    if not grader:
        return {}
    fields = GRADER_FIELDS.get(str(grader.get("type")))
    if fields is not None and set(grader) <= {"type", "name", *fields}:
        return {f"grader_{name}": str(value) for name, value in grader.items() if name != "name"}
    return {"grader_type": JSON_TYPE, "grader_json": json.dumps(grader, indent=2)}


def grader_field(param: str | None, grader_type: str) -> str | None:
    """The form field to highlight for an API param about the grader (`method.reinforcement.grader.x`)."""
    if param is None or ".grader." not in f".{param}.":
        return None
    if grader_type == JSON_TYPE:
        return "grader_json"
    last = param.rsplit(".", 1)[-1]
    return "grader_type" if last == "type" else f"grader_{last}"


def _test_item(form: FormData) -> dict[str, Any]:
    text = form_text(form, "test_item") or "{}"
    if len(text) > MAX_ITEM_CHARS:
        raise InvalidRequest(f"The item is longer than {MAX_ITEM_CHARS} characters.", param="test_item")
    item = _json(text, "The item", "test_item")
    if not isinstance(item, dict):
        raise InvalidRequest("The item must be a JSON object, like a line of the file.", param="test_item")
    return item


def _test_sample(form: FormData) -> str:
    sample = form.get("test_sample")
    text = sample if isinstance(sample, str) else ""
    if len(text) > MAX_SAMPLE_CHARS:
        raise InvalidRequest(f"The sample is longer than {MAX_SAMPLE_CHARS} characters.", param="test_sample")
    return text


@router.post("/ui/graders/run", dependencies=[CsrfChecked])
def run_grader(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    tenant: WebTenant,
    form: PostedForm,
) -> Response:
    """The panel's result: reward, error flags and sub-rewards (an HTML fragment; 400 when refused)."""
    try:
        result = grading.run_grader(
            session, settings=settings, tenant=tenant, spec=grader_spec(form),
            model_sample=_test_sample(form), item=_test_item(form),
        )  # fmt: skip
    except APIError as error:
        field = grader_field(error.param, form_text(form, "grader_type")) or error.param
        context = {"error": error, "field": field}
        return render(request, "_grader_result.html", context, status_code=error.status_code)
    errors = result["metadata"]["errors"]
    flags = flags_set(errors)
    return render(request, "_grader_result.html", {"result": result, "flags": flags, "hints": FLAG_HINTS})
