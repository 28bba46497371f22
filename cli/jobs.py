"""`sppo jobs create|list|get|cancel|pause|resume|watch|download`: fine-tuning jobs."""

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cli import transfer
from cli.client import ApiError, ApiKeyOpt, BaseUrlOpt, Client, connect, err_console, parse_grader
from cli.files import find_uploaded, upload_file
from cli.output import (
    JsonOpt,
    console,
    fmt_alarms,
    fmt_number,
    fmt_status,
    fmt_time,
    key_values,
    print_json,
    table,
)

app = typer.Typer(help="Create, watch and control fine-tuning jobs.", no_args_is_help=True)

GRADER_HELP = "Grader spec as JSON; default: the model's recommended_grader from GET /v1/models."


def _value(text: str) -> Any:
    """`-H batch_size=8` → 8, `-H critic=separate` → "separate": JSON when it parses, else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pairs(items: list[str], option: str, parse: bool) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        found[key] = _value(value) if parse else value
    return found


MODELS_LISTED = 20  # an error lists this many model names; GET /v1/models has them all


def model_grader(client: Client, model: str, grader: str | None) -> Any:
    """The `--grader` given, else the grader the model declares (GET /v1/models `recommended_grader`)."""
    if grader is not None:
        return parse_grader(grader)
    listing = client.get("/models")
    found = next((m for m in listing["data"] if m["id"] == model), None)
    if found is not None and found.get("recommended_grader"):
        return found["recommended_grader"]
    # a fine-tuned model or checkpoint (`ft:<base>:...`): its base model's grader fits it
    base = next((m for m in listing["data"] if model.startswith(f"ft:{m['id']}:")), None)
    if base is not None and base.get("recommended_grader"):
        return base["recommended_grader"]
    if found is None and base is None:
        names = ", ".join(m["id"] for m in listing["data"][:MODELS_LISTED])
        raise ApiError(
            f"Model '{model}' is not available; choose one of: {names} (GET /v1/models lists all)."
        )
    raise ApiError(f"Model '{model}' declares no recommended grader; pass one with --grader.")


def file_id_or_upload(client: Client, value: str) -> str:
    """A file id as given, or the id of a local JSONL file uploaded first (so one command starts a job);
    a file with the same content (sha256) uploaded before is reused, not uploaded again."""
    path = Path(value)
    if path.is_file():
        reused = find_uploaded(client, path)
        if reused is not None:
            err_console.print(f"Using {path.name}: already uploaded as [cyan]{reused}[/]", highlight=False)
            return reused
        uploaded = upload_file(client, path)
        # stderr, so `--json` output on stdout stays one JSON document
        err_console.print(f"Uploaded {path.name} as [cyan]{uploaded['id']}[/]", highlight=False)
        return str(uploaded["id"])
    return value


@app.command("create")
def create(
    model: Annotated[
        str,
        typer.Option(help="Base model, e.g. sppo-tiny (GET /v1/models), or your model or checkpoint."),
    ],
    training_file: Annotated[str, typer.Option(help="A file id, or a local JSONL file to upload first.")],
    validation_file: Annotated[str | None, typer.Option(help="A file id or a local JSONL file.")] = None,
    algorithm: Annotated[str, typer.Option(help="sppo, grpo or ppo.")] = "sppo",
    grader: Annotated[str | None, typer.Option(help=GRADER_HELP)] = None,
    hyperparameter: Annotated[
        list[str] | None,
        typer.Option("--hyperparameter", "-H", help="KEY=VALUE, repeatable (e.g. -H batch_size=8)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    suffix: Annotated[str | None, typer.Option(help="Suffix of the fine-tuned model name.")] = None,
    metadata: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Create a reinforcement fine-tuning job; prints its id."""
    if grader is not None:
        parse_grader(grader)  # a bad --grader is a usage error before anything is uploaded
    hyper = _pairs(hyperparameter or [], "--hyperparameter", parse=True)
    meta = _pairs(metadata or [], "--metadata", parse=False)
    with connect(base_url, api_key) as client:
        grader_spec = model_grader(client, model, grader)
        body: dict[str, Any] = {
            "model": model,
            "training_file": file_id_or_upload(client, training_file),
            "method": {
                "type": "reinforcement",
                "reinforcement": {"algorithm": algorithm, "grader": grader_spec, "hyperparameters": hyper},
            },
        }
        if validation_file is not None:
            body["validation_file"] = file_id_or_upload(client, validation_file)
        optional = {"seed": seed, "suffix": suffix, "metadata": meta or None}
        body.update({k: v for k, v in optional.items() if v is not None})
        job = client.post("/fine_tuning/jobs", body)
    if json_:
        print_json(job)
        return
    console.print(f"Created job [bold cyan]{job['id']}[/] ({fmt_status(job['status'])})", highlight=False)


def _algorithm(job: dict[str, Any]) -> str:
    return str(job.get("method", {}).get("reinforcement", {}).get("algorithm", "-"))


def _progress(job: dict[str, Any]) -> str:
    total = job.get("total_steps")
    return f"{job['current_step']}/{total}" if total else str(job["current_step"])


@app.command("list")
def list_jobs(
    limit: Annotated[int, typer.Option(min=1, max=100, help="How many jobs.")] = 20,
    after: Annotated[str | None, typer.Option(help="List the jobs after this job id.")] = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    json_: JsonOpt = False,
) -> None:
    """List your jobs, newest first."""
    with connect(base_url, api_key) as client:
        listing = client.get("/fine_tuning/jobs", limit=limit, after=after)
    if json_:
        print_json(listing)
        return
    grid = table("id", "status", "model", "algorithm", "step", "alarms", "created", "finished")
    for job in listing["data"]:
        grid.add_row(
            job["id"],
            fmt_status(job["status"]),
            job["model"],
            _algorithm(job),
            _progress(job),
            fmt_alarms(job),
            fmt_time(job["created_at"]),
            fmt_time(job["finished_at"]),
        )
    console.print(grid)
    if listing["has_more"]:
        console.print(f"More: sppo jobs list --after {listing['last_id']}", highlight=False)


def show_job(job: dict[str, Any]) -> None:
    rows: dict[str, Any] = {
        "id": job["id"],
        "status": fmt_status(job["status"]),
        "model": job["model"],
        "algorithm": _algorithm(job),
        "step": _progress(job),
        "training_file": job["training_file"],
        "validation_file": job["validation_file"] or "-",
        "fine_tuned_model": job["fine_tuned_model"] or "-",
        "created": fmt_time(job["created_at"]),
        "finished": fmt_time(job["finished_at"]),
    }
    if job.get("parent_model"):  # a warm start: the lineage
        rows["model"] += f" (continues its adapter; base model {job['base_model']})"
    if job.get("fine_tuned_model_step") is not None:
        rows["fine_tuned_model"] += f" (the checkpoint at step {job['fine_tuned_model_step']})"
    if job.get("status_detail"):
        rows["detail"] = job["status_detail"]
    if job.get("error"):
        rows["error"] = f"[red]{job['error']['message']}[/] ({job['error']['code']})"
    for alarm in job.get("alarms") or []:
        if alarm["active"]:
            rows[f"alarm {alarm['code']}"] = f"[yellow]{alarm['message']}[/] (x{alarm['count']})"
    console.print(key_values("Fine-tuning job", rows))
    hyper = job["method"]["reinforcement"].get("hyperparameters") or {}
    if hyper:
        console.print(key_values("Hyperparameters", {k: fmt_number(v) for k, v in hyper.items()}))


@app.command("get")
def get(job_id: str, base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None, json_: JsonOpt = False) -> None:
    """Show one job, with its hyperparameters and error (if any)."""
    with connect(base_url, api_key) as client:
        job = client.get(f"/fine_tuning/jobs/{job_id}")
    if json_:
        print_json(job)
    else:
        show_job(job)


def _control(action: str, job_id: str, base_url: str | None, api_key: str | None, json_: bool) -> None:
    with connect(base_url, api_key) as client:
        job = client.post(f"/fine_tuning/jobs/{job_id}/{action}")
    if json_:
        print_json(job)
    else:
        console.print(f"{job['id']}: {fmt_status(job['status'])}", highlight=False)


@app.command("cancel")
def cancel(
    job_id: str, base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None, json_: JsonOpt = False
) -> None:
    """Cancel a job (it stops within one training step)."""
    _control("cancel", job_id, base_url, api_key, json_)


@app.command("pause")
def pause(
    job_id: str, base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None, json_: JsonOpt = False
) -> None:
    """Pause a job (a running job checkpoints first)."""
    _control("pause", job_id, base_url, api_key, json_)


@app.command("resume")
def resume(
    job_id: str, base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None, json_: JsonOpt = False
) -> None:
    """Resume a paused job from its last checkpoint."""
    _control("resume", job_id, base_url, api_key, json_)


app.command("watch")(transfer.watch)
app.command("download")(transfer.download)
