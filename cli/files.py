"""`sppo files upload|list|get`: training files on the server."""

import hashlib
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.client import ApiKeyOpt, BaseUrlOpt, Client, connect
from cli.output import JsonOpt, console, fmt_time, key_values, print_json, table

app = typer.Typer(help="Upload and list training files.", no_args_is_help=True)


def find_uploaded(client: Client, path: Path, purpose: str = "fine-tune") -> str | None:
    """The id of a file of yours with the same content (sha256) and purpose, if you uploaded it before."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    listing = client.get("/files", purpose=purpose)
    found = next((f for f in listing["data"] if f.get("sha256") == digest.hexdigest()), None)
    return None if found is None else str(found["id"])


def upload_file(client: Client, path: Path, purpose: str = "fine-tune") -> dict[str, Any]:
    with path.open("rb") as handle:
        created: dict[str, Any] = client.request(
            "POST", "/files", data={"purpose": purpose}, files={"file": (path.name, handle)}
        )
    return created


@app.command("upload")
def upload(
    path: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, readable=True, help="A JSONL file of training items."),
    ],
    purpose: Annotated[str, typer.Option(help="File purpose.")] = "fine-tune",
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Upload a JSONL training or validation file; prints its id."""
    with connect(base_url, api_key) as client:
        created = upload_file(client, path, purpose)
    if json_:
        print_json(created)
        return
    console.print(
        f"Uploaded [bold]{created['filename']}[/] as [bold cyan]{created['id']}[/] "
        f"({created['line_count']} items, fields: {', '.join(created['item_fields'])})",
        highlight=False,
    )


@app.command("list")
def list_files(base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None, json_: JsonOpt = False) -> None:
    """List your files, newest first."""
    with connect(base_url, api_key) as client:
        listing = client.get("/files")
    if json_:
        print_json(listing)
        return
    grid = table("id", "filename", "items", "bytes", "created")
    for file in listing["data"]:
        grid.add_row(
            file["id"],
            file["filename"],
            str(file["line_count"]),
            str(file["bytes"]),
            fmt_time(file["created_at"]),
        )
    console.print(grid)


@app.command("get")
def get_file(
    file_id: str, base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None, json_: JsonOpt = False
) -> None:
    """Show one file."""
    with connect(base_url, api_key) as client:
        file = client.get(f"/files/{file_id}")
    if json_:
        print_json(file)
        return
    rows = {k: file[k] for k in ("id", "filename", "purpose", "bytes", "line_count", "sha256")}
    rows["item_fields"] = ", ".join(file["item_fields"])
    rows["created"] = fmt_time(file["created_at"])
    console.print(key_values("File", rows))
