"""`sppo graders validate|run`: check a grader and try it on one sample before training with it
(`POST /v1/fine_tuning/alpha/graders/validate` and `/run`, OpenAI's graders API)."""

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from cli.client import ApiError, ApiKeyOpt, BaseUrlOpt, Client, connect
from cli.output import JsonOpt, console, fmt_number, key_values, print_json
from grading.result import flags_set

app = typer.Typer(help="Check graders and try them on a sample.", no_args_is_help=True)

GRADER_ARG_HELP = "The grader: JSON text, a JSON file, @file.json, or - for stdin."
ITEM_HELP = "The data item the templates read ({{item.x}}): JSON text or @file.json; default {}."


def _read_json(text: str, what: str, param_hint: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{what} is not valid JSON: {exc}", param_hint=param_hint) from None


def _load(value: str, param_hint: str) -> Any:
    """JSON given inline, from `@path` or a plain path, or `-` (stdin)."""
    if value == "-":
        return _read_json(sys.stdin.read(), "stdin", param_hint)
    if value.lstrip().startswith(("{", "[")):
        return _read_json(value, "the value", param_hint)
    path = Path(value.removeprefix("@"))
    if not path.is_file():
        raise typer.BadParameter(f"{value!r} is neither JSON nor a readable file", param_hint=param_hint)
    return _read_json(path.read_text(), str(path), param_hint)


def _post(client: Client, path: str, body: dict[str, Any]) -> Any:
    """The API's answer; a refusal becomes its message with the param it names (e.g. `grader.operation`)."""
    response = client.http.post(path, json=body)
    if not response.is_error:
        return response.json()
    try:
        error = response.json()["error"]
        message, param = str(error["message"]), error.get("param")
    except (ValueError, KeyError, TypeError):
        message, param = response.text.strip()[:500] or response.reason_phrase, None
    where = f"param: {param}, " if param else ""
    # printed as rich markup: a message's own [brackets] must stay text
    raise ApiError(f"{escape(message)} ({where}HTTP {response.status_code})", response.status_code)


@app.command("validate")
def validate(
    grader: Annotated[str, typer.Argument(help=GRADER_ARG_HELP, show_default=False)],
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Check a grader without running it; exit 1 with the API's message and param when it is invalid."""
    spec = _load(grader, "GRADER")
    with connect(base_url, api_key) as client:
        answer = _post(client, "/fine_tuning/alpha/graders/validate", {"grader": spec})
    if json_:
        print_json(answer)
        return
    checked = answer["grader"]
    console.print(f"[green]Valid[/] {checked['type']} grader [bold]{checked['name']}[/]", highlight=False)


def _flags(errors: dict[str, Any]) -> list[str]:
    """The error flags that are set, each with its details when the API gives them."""
    return [f"{flag}: {detail}" if detail else flag for flag, detail in flags_set(errors).items()]


def _show_run(result: dict[str, Any]) -> None:
    metadata = result["metadata"]
    rows: dict[str, Any] = {
        "grader": f"{metadata['name']} ({metadata['type']})",
        "reward": f"[bold]{fmt_number(float(result['reward']))}[/]",
    }
    for name, reward in (result.get("sub_rewards") or {}).items():
        rows[f"  {name}"] = fmt_number(reward)
    flags = _flags(metadata.get("errors") or {})
    rows["errors"] = "\n".join(f"[red]{flag}[/]" for flag in flags) if flags else "[green]none[/]"
    if metadata.get("token_usage") is not None:
        rows["judge tokens"] = metadata["token_usage"]
    rows["time"] = f"{metadata['execution_time'] * 1000:.1f} ms"
    console.print(key_values("Grader run", rows))


@app.command("run")
def run(
    grader: Annotated[str, typer.Argument(help=GRADER_ARG_HELP, show_default=False)],
    sample: Annotated[
        str | None,
        typer.Option(help="The completion to grade ({{sample.output_text}}).", show_default=False),
    ] = None,
    sample_file: Annotated[
        Path | None,
        typer.Option(help="Read the completion from this file instead.", exists=True, dir_okay=False),
    ] = None,
    item: Annotated[str | None, typer.Option(help=ITEM_HELP, show_default=False)] = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Grade one sample: prints the reward, the error flags that are set and a multi grader's sub-rewards.

    A grader error is a reward of 0 with its flag (exit 0: the grader ran); an invalid grader exits 1.
    """
    if sample_file is not None and sample is None:
        text = sample_file.read_text()
    elif sample is not None and sample_file is None:
        text = sample
    else:
        raise typer.BadParameter("give exactly one of --sample and --sample-file", param_hint="--sample")
    spec = _load(grader, "GRADER")
    data = _load(item, "--item") if item is not None else {}
    if not isinstance(data, dict):
        raise typer.BadParameter("the item must be a JSON object", param_hint="--item")
    with connect(base_url, api_key) as client:
        answer = _post(
            client, "/fine_tuning/alpha/graders/run", {"grader": spec, "model_sample": text, "item": data}
        )
    if json_:
        print_json(answer)
    else:
        _show_run(answer)
