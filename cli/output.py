"""How the client commands show things: `--json` documents for scripts, rich tables for people."""

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of a table.")]

console = Console()
if not console.is_terminal:
    console.width = 160  # piped or captured output: do not squeeze tables into 80 columns

STATUS_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
    "paused": "magenta",
    "running": "cyan",
    "queued": "blue",
    "validating_files": "blue",
}


def print_json(value: Any) -> None:
    """JSON on stdout for scripts: plain, no colour, one document."""
    typer.echo(json.dumps(value, indent=2))


def fmt_time(stamp: int | None) -> str:
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M")


def fmt_status(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def fmt_number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def fmt_alarms(job: dict[str, Any]) -> str:
    """A job's active alarms in a cell: `constant_reward x10`, or "-"."""
    active = [a for a in job.get("alarms") or [] if a.get("active")]
    return ", ".join(f"[yellow]{a['code']}[/] x{a['count']}" for a in active) or "-"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def table(*columns: str, title: str | None = None) -> Table:
    grid = Table(title=title, header_style="bold", title_justify="left")
    for column in columns:
        # Ids are what people copy into the next command: never truncate or wrap them.
        grid.add_column(column, no_wrap=column == "id", min_width=31 if column == "id" else None)
    return grid


def key_values(title: str, rows: dict[str, Any]) -> Table:
    grid = Table(title=title, show_header=False, title_justify="left")
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in rows.items():
        grid.add_row(key, value if isinstance(value, str) else fmt_number(value))
    return grid
