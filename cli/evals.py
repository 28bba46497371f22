"""`sppo evals create|get`: score a base model, a checkpoint or a fine-tuned model on a file."""

from typing import Annotated, Any

import typer

from cli.client import ApiKeyOpt, BaseUrlOpt, connect, parse_grader
from cli.jobs import DEFAULT_GRADER, file_id_or_upload
from cli.output import JsonOpt, console, fmt_number, fmt_status, fmt_time, key_values, print_json

app = typer.Typer(help="Evaluate models on a file with a grader.", no_args_is_help=True)


@app.command("create")
def create(
    model: Annotated[str, typer.Option(help="Base model, fine-tuned model or checkpoint name.")],
    file: Annotated[str, typer.Option(help="A file id, or a local JSONL file to upload first.")],
    grader: Annotated[str, typer.Option(help="Grader spec as JSON.")] = DEFAULT_GRADER,
    samples: Annotated[int, typer.Option(min=1, max=64, help="k of avg@k.")] = 4,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Start an evaluation; prints its id."""
    grader_spec = parse_grader(grader)
    with connect(base_url, api_key) as client:
        body: dict[str, Any] = {
            "model": model,
            "file": file_id_or_upload(client, file),
            "grader": grader_spec,
            "samples": samples,
        }
        evaluation = client.post("/evaluations", body)
    if json_:
        print_json(evaluation)
        return
    console.print(
        f"Created evaluation [bold cyan]{evaluation['id']}[/] ({fmt_status(evaluation['status'])})",
        highlight=False,
    )


@app.command("get")
def get(eval_id: str, base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None, json_: JsonOpt = False) -> None:
    """Show an evaluation and its scores."""
    with connect(base_url, api_key) as client:
        evaluation = client.get(f"/evaluations/{eval_id}")
    if json_:
        print_json(evaluation)
        return
    rows: dict[str, Any] = {
        "id": evaluation["id"],
        "status": fmt_status(evaluation["status"]),
        "model": evaluation["model"],
        "created": fmt_time(evaluation.get("created_at")),
        "finished": fmt_time(evaluation.get("finished_at")),
    }
    for name, score in (evaluation.get("scores") or {}).items():
        rows[name] = fmt_number(score)
    if evaluation.get("error"):
        rows["error"] = f"[red]{evaluation['error'].get('message')}[/]"
    console.print(key_values("Evaluation", rows))
