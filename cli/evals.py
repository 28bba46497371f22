"""`sppo evals create|list|get|watch|results`: score a base model, a checkpoint or a fine-tuned model."""

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.client import ApiError, ApiKeyOpt, BaseUrlOpt, Client, connect
from cli.jobs import GRADER_HELP, file_id_or_upload, model_grader
from cli.output import JsonOpt, console, fmt_number, fmt_status, fmt_time, key_values, print_json, table

app = typer.Typer(help="Evaluate models on a file with a grader.", no_args_is_help=True)

FINISHED = {"succeeded": 0, "failed": 1}
POLL_S = 1.0


@app.command("create")
def create(
    model: Annotated[str, typer.Option(help="Base model, fine-tuned model or checkpoint name.")],
    file: Annotated[str, typer.Option(help="A file id, or a local JSONL file to upload first.")],
    grader: Annotated[str | None, typer.Option(help=GRADER_HELP)] = None,
    samples: Annotated[int, typer.Option(min=1, max=64, help="k of avg@k.")] = 4,
    temperature: Annotated[
        float | None,
        typer.Option(help="Sampling temperature of avg@k; default: the model's training temperature."),
    ] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling (default 1.0).")] = None,
    max_response_tokens: Annotated[
        int | None, typer.Option(help="Response budget; default: the model's training budget.")
    ] = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Start an evaluation; prints its id. Sampling defaults to what training evaluations use."""
    with connect(base_url, api_key) as client:
        body: dict[str, Any] = {
            "model": model,
            "file": file_id_or_upload(client, file),
            "grader": model_grader(client, model, grader),
            "samples": samples,
        }
        optional = {"temperature": temperature, "top_p": top_p, "max_response_tokens": max_response_tokens}
        body.update({k: v for k, v in optional.items() if v is not None})
        evaluation = client.post("/evaluations", body)
    if json_:
        print_json(evaluation)
        return
    console.print(
        f"Created evaluation [bold cyan]{evaluation['id']}[/] ({fmt_status(evaluation['status'])})",
        highlight=False,
    )


@app.command("list")
def list_evals(
    limit: Annotated[int, typer.Option(min=1, max=100, help="How many evaluations.")] = 20,
    after: Annotated[str | None, typer.Option(help="List the evaluations after this id.")] = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    json_: JsonOpt = False,
) -> None:
    """List your evaluations, newest first."""
    with connect(base_url, api_key) as client:
        listing = client.get("/evaluations", limit=limit, after=after)
    if json_:
        print_json(listing)
        return
    grid = table("id", "status", "model", "pass@1", "avg@k", "temperature", "created")
    for evaluation in listing["data"]:
        scores = evaluation.get("scores") or {}
        avg = next((v for k, v in scores.items() if k.startswith("eval/avg@")), None)
        grid.add_row(
            evaluation["id"],
            fmt_status(evaluation["status"]),
            evaluation["model"],
            fmt_number(scores.get("eval/pass@1")),
            fmt_number(avg),
            fmt_number(evaluation.get("temperature")),
            fmt_time(evaluation["created_at"]),
        )
    console.print(grid)


def _show(evaluation: dict[str, Any]) -> None:
    rows: dict[str, Any] = {
        "id": evaluation["id"],
        "status": fmt_status(evaluation["status"]),
        "model": evaluation["model"],
        "file": evaluation["file"],
        "samples": evaluation["samples"],
        "temperature": fmt_number(evaluation.get("temperature")),
        "created": fmt_time(evaluation.get("created_at")),
        "finished": fmt_time(evaluation.get("finished_at")),
    }
    for name, score in (evaluation.get("scores") or {}).items():
        rows[name] = fmt_number(score)
    if evaluation.get("error"):
        rows["error"] = f"[red]{evaluation['error'].get('message')}[/]"
    console.print(key_values("Evaluation", rows))


@app.command("get")
def get(eval_id: str, base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None, json_: JsonOpt = False) -> None:
    """Show an evaluation and its scores."""
    with connect(base_url, api_key) as client:
        evaluation = client.get(f"/evaluations/{eval_id}")
    if json_:
        print_json(evaluation)
    else:
        _show(evaluation)


def _wait(client: Client, eval_id: str) -> dict[str, Any]:
    with console.status(f"{eval_id} ...") as status:
        while True:
            evaluation: dict[str, Any] = client.get(f"/evaluations/{eval_id}")
            if evaluation["status"] in FINISHED:
                return evaluation
            status.update(f"{eval_id} {fmt_status(evaluation['status'])}")
            time.sleep(POLL_S)


@app.command("watch")
def watch(eval_id: str, base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None) -> None:
    """Wait for an evaluation to finish and show it; exit code 0 succeeded, 1 failed."""
    with connect(base_url, api_key) as client:
        evaluation = _wait(client, eval_id)
    _show(evaluation)
    raise typer.Exit(FINISHED[evaluation["status"]])


@app.command("results")
def results(
    eval_id: str,
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL file to write.")] = Path(
        "results.jsonl"
    ),
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Download the per-item results: prompt, reference, completions and rewards, one JSON line each."""
    if output.exists():
        raise typer.BadParameter(f"{output} exists; choose another --output.", param_hint="--output")
    with connect(base_url, api_key) as client:
        evaluation = client.get(f"/evaluations/{eval_id}")
        if not evaluation.get("results_url"):
            raise ApiError(f"Evaluation {eval_id} has no results ({evaluation['status']}).")
        client.download(f"/evaluations/{eval_id}/results", output, lambda _done, _total: None)
    console.print(f"Results written to [bold]{output}[/]", highlight=False)
