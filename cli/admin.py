"""Server administration: API keys, `sppo serve` and `sppo run` (heavy imports stay inside the commands)."""

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Run and administer the API server.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

DEV_TENANT = "dev"
DEV_KEY_FILE = "dev-api-key"


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant name (created on first use).")],
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
) -> None:
    """Create an API key and print it (the only time it is shown)."""
    from app.services.keys import create_key
    from core.db import session_scope

    with session_scope() as session:
        created = create_key(session, tenant_name=tenant, key_name=name)
        typer.echo(f"Created key {created.api_key.id} for tenant '{tenant}' (shown only once):", err=True)
        typer.echo(created.plaintext)


@keys_app.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None) -> None:
    """List API keys (id, tenant, prefix, state); never the keys themselves."""
    from app.services.keys import list_keys
    from core.db import session_scope

    with session_scope() as session:
        for key, owner in list_keys(session, tenant_name=tenant):
            state = "revoked" if key.revoked_at is not None else "active"
            typer.echo(f"{key.id}\t{owner.name}\t{key.prefix}...\t{state}\t{key.name or ''}")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id shown by `sppo keys list`.")]) -> None:
    """Revoke an API key; requests with it answer 401 from now on."""
    from app.errors import NotFound
    from app.services.keys import revoke_key
    from core.db import session_scope

    try:
        with session_scope() as session:
            revoke_key(session, key_id=key_id)
    except NotFound as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Revoked {key_id}.")


@app.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision (default: the newest).")] = "head",
) -> None:
    """Create or upgrade the schema of SPPO_DATABASE_URL with the migrations shipped in the package."""
    from core.db import upgrade_database
    from core.settings import get_settings

    settings = get_settings()
    upgrade_database(settings.db_url, revision)
    typer.echo(f"Database {settings.safe_db_url} is at revision {revision}.")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default SPPO_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default SPPO_PORT).")] = None,
) -> None:
    """Run the API server (`uvicorn app.main:app`); run `sppo migrate` first."""
    import uvicorn

    from core.logs import configure_logging
    from core.settings import get_settings

    settings = get_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    if settings.api_workers > 1:
        share_http_metrics(settings.data_dir / "prometheus")
    uvicorn.run(
        "app.main:app",
        host=host or settings.host,
        port=port or settings.port,
        workers=settings.api_workers,
        log_config=None,  # the app's structlog set-up formats uvicorn's lines too
        log_level=settings.log_level.lower(),
        access_log=False,  # RequestContextMiddleware logs each request, with its ids
        # X-Forwarded-Proto/-For only from the proxies named in SPPO_FORWARDED_ALLOW_IPS (none by default)
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        # SIGTERM (a container stop): stop accepting, let in-flight requests finish, bounded; metric
        # streams end by themselves (app/shutdown.py).
        timeout_graceful_shutdown=settings.shutdown_drain_s,
        # A request head must arrive within SPPO_HEADER_TIMEOUT_S and may not exceed 64 KiB.
        http="app.http_protocol:HeadTimeoutProtocol",
    )


def share_http_metrics(directory: Path) -> None:
    """prometheus-client's multiprocess mode for the uvicorn workers (app/metrics.py): emptied first, so
    the counters of an earlier run's processes are not summed into this one's."""
    from app.metrics import MULTIPROC_ENV

    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(directory)


def ensure_dev_key(key_file: Path) -> str:
    """The dev tenant's key, created once and kept in a 0600 file so every `sppo run` prints the same one."""
    from app.services.keys import authenticate, create_key
    from core.db import session_scope

    if key_file.exists():
        key = key_file.read_text().strip()
        with session_scope() as session:
            try:
                authenticate(session, authorization=f"Bearer {key}")
                return key
            except Exception:  # revoked, or the database was reset: make a new one
                pass
    with session_scope() as session:
        key = create_key(session, tenant_name=DEV_TENANT, key_name="dev").plaintext
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


@app.command()
def run() -> None:
    """Everything for local use: Redis, database migrations, a dev API key, one worker, the API.

    Each step is one call; Ctrl-C, SIGTERM or a closed output pipe stop the API, then the workers and the
    Redis server it started.
    """
    from cli.stack import local_stack, port_in_use, say
    from core.db import upgrade_database
    from core.settings import get_settings

    settings = get_settings()
    secret = settings.inference_secret.get_secret_value() if settings.inference_secret is not None else None
    ports = ((settings.host, settings.port, "SPPO_PORT"),
             (settings.inference_host, settings.inference_port, "SPPO_INFERENCE_PORT"))  # fmt: skip
    for host, port, variable in ports:
        if port_in_use(host, port):
            say(f"Port {port} on {host} is in use (another `sppo run`?): stop what holds it, or choose"
                f" another port with {variable}=...")  # fmt: skip
            raise typer.Exit(1)
    if "inference_url" not in settings.model_fields_set:  # the API asks the model server this run starts
        os.environ["SPPO_INFERENCE_URL"] = f"http://127.0.0.1:{settings.inference_port}"
    inference_url = os.environ.get("SPPO_INFERENCE_URL", settings.inference_url)
    with local_stack(settings.data_dir, str(settings.redis_url), secret, inference_url):
        # SPPO_REDIS_URL may now name the Redis started for this run, SPPO_INFERENCE_SECRET one drawn for it
        get_settings.cache_clear()
        settings = get_settings()
        upgrade_database(settings.db_url)
        key = ensure_dev_key(settings.data_dir / DEV_KEY_FILE)
        url = f"http://{settings.host}:{settings.port}"
        say(f"SPPO Service at {url}/v1  (docs: {url}/docs)")
        say(f"Dev API key (tenant '{DEV_TENANT}'): {key}")
        say(f'  export OPENAI_BASE_URL={url}/v1 OPENAI_API_KEY="{key}"')
        say(f"Dashboard at {url}/ (sign in with the key)")
        cli = Path(sys.executable).parent / "sppo"
        say(f"The CLI is {cli} (`source {cli.parent}/activate` puts `sppo` on PATH)")
        say(f'  sppo client: export SPPO_BASE_URL={url} SPPO_API_KEY="{key}"')
        serve(host=settings.host, port=settings.port)
