"""The new-job form: uploads go through the files service, the job through `JobCreate` and the jobs
service, so the form shows exactly the API's validation messages (no second copy of the rules). Its
grader fields and "Test the grader" panel are in `app.web.graders`."""

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from app.api.deps import SessionDep, SettingsDep
from app.errors import APIError, validation_error
from app.schemas.jobs import JobCreate
from app.schemas.models import ModelObject
from app.services import files, jobs
from app.services.models import list_models
from app.web.graders import grader_field, grader_spec, grader_values
from app.web.render import PageRoute, redirect, render
from app.web.session import CSRF_FIELD, CsrfChecked, PostedForm, WebTenant, form_text
from core.models import Tenant
from core.settings import Settings
from jobspec.graders import SIMILARITY_METRICS

router = APIRouter(route_class=PageRoute, include_in_schema=False)

HYPERPARAMETERS = (
    ("n_epochs", "Epochs", "auto"),
    ("batch_size", "Batch size (prompts/step)", "auto"),
    ("learning_rate_multiplier", "Learning-rate multiplier", "auto"),
    ("group_size", "Samples per prompt", "default (grpo: 8)"),
    ("max_response_tokens", "Max response tokens", "default"),
    ("temperature", "Temperature", "default"),
    ("eval_interval", "Eval interval (steps)", "auto"),
    ("eval_samples", "Eval samples (k)", "auto"),
)
# cosine needs an embeddings model the operator configures (SPPO_GRADER_EMBEDDINGS_MODEL)
SIMILARITY_CHOICES = [(m, "cosine (embeddings)" if m == "cosine" else m) for m in SIMILARITY_METRICS]
DEFAULTS = {
    "model": "sppo-tiny",
    "algorithm": "sppo",
    "grader_type": "string_check",
    "grader_input": "{{sample.output_text}}",
    "grader_reference": "{{item.answer}}",
    "grader_operation": "eq",
    "grader_pattern": "",
    "grader_evaluation_metric": "fuzzy_match",
    "grader_json": "",
    "test_item": "{}",
    "critic": "",
}


def _recommended_grader(models: list[ModelObject], model: str) -> dict[str, str]:
    """Form values of the grader `model` declares (GET /v1/models `recommended_grader`), if it does."""
    return grader_values(next((m.recommended_grader for m in models if m.id == model), None))


def _number(text: str) -> Any:
    """A form field as the JSON value a client would send: 8 → int, 0.5 → float, "auto" stays text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def job_request(form: FormData, training_file: str, validation_file: str | None) -> dict[str, Any]:
    """The JSON body `POST /v1/fine_tuning/jobs` would get for this form (empty fields left out)."""
    grader = grader_spec(form)
    hyper = {name: _number(form_text(form, name)) for name, _, _ in HYPERPARAMETERS if form_text(form, name)}
    if form_text(form, "critic"):
        hyper["critic"] = form_text(form, "critic")
    body: dict[str, Any] = {
        "model": form_text(form, "model"),
        "training_file": training_file,
        "method": {
            "type": "reinforcement",
            "reinforcement": {
                "algorithm": form_text(form, "algorithm"),
                "grader": grader,
                "hyperparameters": hyper,
            },
        },
    }
    if validation_file:
        body["validation_file"] = validation_file
    if form_text(form, "seed"):
        body["seed"] = _number(form_text(form, "seed"))
    if form_text(form, "suffix"):
        body["suffix"] = form_text(form, "suffix")
    return body


def _file_id(
    form: FormData, name: str, *, session: SessionDep, settings: Settings, tenant: Tenant, label: str
) -> str | None:
    """An uploaded file (stored via the files service) or the id of an existing one picked in the form."""
    upload = form.get(f"{name}_upload")
    if isinstance(upload, UploadFile) and upload.filename:
        try:
            created = files.create_file(
                session,
                settings=settings,
                tenant=tenant,
                upload=upload.file,
                filename=upload.filename,
                purpose="fine-tune",
            )
        except APIError as error:
            error.message, error.param = f"{label}: {error.message}", name
            raise
        return created.id
    return form_text(form, name) or None


def _form_page(
    request: Request,
    session: SessionDep,
    settings: Settings,
    tenant: Tenant,
    values: dict[str, str],
    **extra: Any,
) -> Response:
    recent, _ = files.list_files(session, tenant=tenant, purpose="fine-tune", after=None, limit=100)
    base_models = [
        m for m in list_models(session, settings=settings, tenant=tenant) if m.owned_by == "system"
    ]
    context = {
        "models": [m.id for m in base_models],
        "files": recent,
        "hyperparameters": HYPERPARAMETERS,
        "metrics": SIMILARITY_CHOICES,
        "values": {**DEFAULTS, **_recommended_grader(base_models, DEFAULTS["model"]), **values},
        "error": None,
        "error_field": None,
        **extra,
    }
    return render(request, "new_job.html", context, status_code=400 if extra.get("error") else 200)


@router.get("/jobs/new")
def new_job_page(request: Request, session: SessionDep, settings: SettingsDep, tenant: WebTenant) -> Response:
    return _form_page(request, session, settings, tenant, {})


@router.post("/jobs/new", dependencies=[CsrfChecked])
def create_job(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    tenant: WebTenant,
    form: PostedForm,
) -> Response:
    values = {k: v for k, v in form.items() if isinstance(v, str) and k != CSRF_FIELD}
    try:
        for name, label in (("training_file", "Training file"), ("validation_file", "Validation file")):
            # After an upload, the picker holds the new file, so a corrected form need not upload again.
            values[name] = (
                _file_id(form, name, label=label, session=session, settings=settings, tenant=tenant) or ""
            )
        body = job_request(form, values["training_file"], values["validation_file"] or None)
        try:
            job_create = JobCreate.model_validate(body)
        except ValidationError as exc:
            raise validation_error(exc.errors()) from None
        job = jobs.create_job(session, settings=settings, tenant=tenant, request=job_create)
    except APIError as error:
        return _form_page(
            request, session, settings, tenant, values, error=error.message,
            error_field=_field(error.param, form_text(form, "grader_type")),
        )  # fmt: skip
    return redirect(request, f"/jobs/{job.id}")


def _field(param: str | None, grader_type: str) -> str | None:
    """The form field to highlight for an API param (`method.reinforcement.hyperparameters.batch_size`)."""
    if param is None:
        return None
    return grader_field(param, grader_type) or param.rsplit(".", 1)[-1]
