"""`sppo models list`: the base models a job can fine-tune and the tenant's fine-tuned models."""

from typing import Annotated

import typer

from cli.client import ApiKeyOpt, BaseUrlOpt, connect
from cli.output import JsonOpt, console, fmt_time, print_json, table

app = typer.Typer(help="The models you can fine-tune, evaluate and chat with.", no_args_is_help=True)


@app.command("list")
def list_models(
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    json_: JsonOpt = False,
    fine_tuned: Annotated[bool, typer.Option(help="Only your fine-tuned models.")] = False,
) -> None:
    """List the models (GET /v1/models): base models with their context and grader, then yours."""
    with connect(base_url, api_key) as client:
        listing = client.get("/models")
    models = [m for m in listing["data"] if not fine_tuned or m["id"].startswith("ft:")]
    if json_:
        print_json({**listing, "data": models})
        return
    grid = table("id", "owned by", "context", "recommended grader", "created")
    for model in models:
        grader = model.get("recommended_grader") or {}
        context = model.get("context_length")
        grid.add_row(model["id"], model["owned_by"], str(context) if context else "—",
                     grader.get("type", "—"), fmt_time(model["created"]))  # fmt: skip
    console.print(grid)
