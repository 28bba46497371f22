"""The one HTTP helper of the `sppo` client commands: base URL and key from flags or the environment,
API errors turned into their `error.message`, Server-Sent Events and streamed downloads."""

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

DEFAULT_BASE_URL = "http://127.0.0.1:8000"

BaseUrlOpt = Annotated[
    str | None, typer.Option("--base-url", envvar="SPPO_BASE_URL", help="Server URL.", show_default=False)
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option("--api-key", envvar="SPPO_API_KEY", help="API key (sk-sppo-...).", show_default=False),
]

err_console = Console(stderr=True)


class ApiError(Exception):
    """An error answer of the API (or an unreachable server), with the message to show the user."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


def _error_message(response: httpx.Response) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text.strip()[:500] or response.reason_phrase
    return f"{message} (HTTP {response.status_code})"


class Client:
    """A thin synchronous client of the `/v1` API."""

    def __init__(self, base_url: str | None, api_key: str | None, *, timeout: float = 60.0) -> None:
        if not api_key:
            raise ApiError("No API key: pass --api-key or set SPPO_API_KEY.")
        root = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.http = httpx.Client(
            base_url=f"{root}/v1", headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout
        )

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.is_error:
            raise ApiError(_error_message(response), response.status_code)
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, json=body)

    def events(self, path: str, body: dict[str, Any] | None = None) -> Iterator[SseEvent]:
        """Server-Sent Events from `path` (a POST of `body` when given) until the server closes the stream
        (no read timeout)."""
        method = "GET" if body is None else "POST"
        with self.http.stream(method, path, json=body, timeout=httpx.Timeout(30.0, read=None)) as response:
            if response.is_error:
                response.read()
                raise ApiError(_error_message(response), response.status_code)
            event, data = "message", list[str]()
            for line in response.iter_lines():
                if not line:
                    if data:
                        yield SseEvent(event, "\n".join(data))
                    event, data = "message", []
                elif line.startswith(":"):
                    continue  # a keep-alive comment
                else:
                    field, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if field == "event":
                        event = value
                    elif field == "data":
                        data.append(value)

    def download(self, path: str, target: Path, progress: Callable[[int, int | None], None]) -> str:
        """Stream `path` into `target`; `progress(done, total)` after each chunk. Returns the content type."""
        with self.http.stream("GET", path) as response:
            if response.is_error:
                response.read()
                raise ApiError(_error_message(response), response.status_code)
            length = response.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            with target.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    done += len(chunk)
                    progress(done, total)
            return str(response.headers.get("content-type", ""))


@contextmanager
def connect(base_url: str | None, api_key: str | None) -> Iterator[Client]:
    """A client for one command; API and connection errors end the command with their message, exit 1."""
    try:
        client = Client(base_url, api_key)
        try:
            yield client
        finally:
            client.close()
    except ApiError as exc:
        err_console.print(f"[bold red]Error:[/] {exc.message}", highlight=False)
        raise typer.Exit(1) from None
    except httpx.TransportError as exc:
        root = base_url or os.environ.get("SPPO_BASE_URL") or DEFAULT_BASE_URL
        err_console.print(f"[bold red]Error:[/] cannot reach the server at {root}: {exc}", highlight=False)
        raise typer.Exit(1) from None


def parse_grader(grader: str) -> Any:
    """The `--grader` option's JSON; the API validates the spec itself and names what is wrong."""
    try:
        return json.loads(grader)
    except ValueError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}", param_hint="--grader") from None
