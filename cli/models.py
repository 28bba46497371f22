"""`sppo serve-models` (the model server) and `sppo chat MODEL "prompt"` (a streamed chat completion)."""

import json
from typing import Annotated, Any

import typer

from cli.client import ApiKeyOpt, BaseUrlOpt, connect

app = typer.Typer()


@app.command("serve-models")
def serve_models(
    port: Annotated[int | None, typer.Option(help="Port (default SPPO_INFERENCE_PORT).")] = None,
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Serve base and fine-tuned models to the API, which authenticates tenants; this server answers only
    callers that show SPPO_INFERENCE_SECRET, and refuses to start without it."""
    import logging

    import uvicorn

    from core.settings import get_settings
    from inference.auth import InsecureStart
    from inference.server import create_app

    settings = get_settings()
    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server = create_app(settings)
    except InsecureStart as exc:
        typer.echo(f"sppo serve-models: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"sppo serve-models: backend {settings.inference_backend}, device {settings.inference_device}")
    uvicorn.run(server, host=settings.inference_host, port=port or settings.inference_port,
                log_level=loglevel.lower())  # fmt: skip


@app.command()
def chat(
    model: Annotated[str, typer.Argument(help="A base model, an ft: model or a checkpoint id (ftckpt-...).")],
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    system: Annotated[str | None, typer.Option(help="A system message before the prompt.")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Completion token budget.")] = None,
    temperature: Annotated[float, typer.Option(min=0, max=2, help="0 for greedy decoding.")] = 1.0,
    seed: Annotated[int | None, typer.Option(min=0, help="Seed for sampling.")] = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Chat with a model; the answer is printed as it is generated."""
    messages = [{"role": "system", "content": system}] if system else []
    body: dict[str, Any] = {
        "model": model, "messages": [*messages, {"role": "user", "content": prompt}],
        "temperature": temperature, "stream": True,
    }  # fmt: skip
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if seed is not None:
        body["seed"] = seed
    with connect(base_url, api_key) as client:
        for event in client.events("/chat/completions", body):
            if event.data == "[DONE]":
                break
            chunk = json.loads(event.data)
            if "error" in chunk:
                typer.echo(f"\nError: {chunk['error']['message']}", err=True)
                raise typer.Exit(1)
            for choice in chunk["choices"]:
                typer.echo(choice["delta"].get("content", ""), nl=False)
    typer.echo()
