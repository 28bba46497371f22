"""docker-compose.yml's model server, run here: the commands and environment of its `migrate`, `api` and
`models-cpu` services, read from the file, started as processes on this machine. Only what names the
compose network or its volume is replaced (database and Redis hosts, the data dir, ports); the secret, the
bind address and the rest are the file's. The model server must serve /health to anyone, a generate call
only with the secret (401 without it, before reading a body), and the API's chat/completions through it."""

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.errors import ServiceUnavailable
from app.services.inference import proxy_generate
from app.services.keys import create_key
from core.db import session_scope
from core.model_targets import ModelTarget
from core.settings import Settings
from tests.conftest import free_port, run_in_own_loop

ROOT = Path(__file__).resolve().parents[2]
SECRET = "compose-model-server-secret-0123456789abcdef"
VARIABLES = {"POSTGRES_PASSWORD": "pw", "SPPO_INFERENCE_SECRET": SECRET}  # what .env must give compose
_VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")
CHAT = {"model": "rand-tiny", "messages": [{"role": "user", "content": "12+34="}], "temperature": 0,
        "max_tokens": 4}  # fmt: skip
START_TIMEOUT_S = 240  # torch and a model load slowly on a busy 2-core machine

pytestmark = pytest.mark.timeout(600)


def _interpolate(value: str) -> str:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?message}` from VARIABLES."""

    def one(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if VARIABLES.get(name):
            return VARIABLES[name]
        assert operator == "-", f"docker-compose.yml needs {name}: {argument}"
        return str(argument)

    return _VARIABLE.sub(one, value)


def _services() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"])


def _environment(service: dict[str, Any]) -> dict[str, str]:
    return {name: _interpolate(str(value)) for name, value in service["environment"].items()}


@dataclass
class Ports:
    api: int
    models: int


def _on_this_machine(environment: dict[str, str], data_dir: Path, db_url: str, redis_url: str,
                     ports: Ports) -> dict[str, str]:  # fmt: skip
    """The compose environment with the compose network's names and the volume's path replaced."""
    assert environment["SPPO_DATABASE_URL"] == "postgresql://sppo:pw@postgres:5432/sppo"
    assert environment["SPPO_REDIS_URL"] == "redis://redis:6379/0"
    assert environment["SPPO_DATA_DIR"] == "/data"
    assert environment["SPPO_INFERENCE_URL"] == "http://models:8001"
    local = {
        **environment,
        "SPPO_DATABASE_URL": db_url,
        "SPPO_REDIS_URL": redis_url,
        "SPPO_DATA_DIR": str(data_dir),
        "SPPO_INFERENCE_URL": f"http://127.0.0.1:{ports.models}",
    }
    for name, port in (("SPPO_INFERENCE_PORT", ports.models), ("SPPO_PORT", ports.api)):
        if name in environment:
            local[name] = str(port)
    outside = {name: value for name, value in os.environ.items() if not name.startswith("SPPO_")}
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # `sppo` is this venv's
    return {**outside, "PATH": path, "PYTHONPATH": str(ROOT), **local}


def _start(command: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{url} did not come up:\n{log.read_text()[-4000:]}")
        time.sleep(0.3)


@dataclass
class Stack:
    api_url: str
    models_url: str
    key: str
    logs: list[Path]


@pytest.fixture(scope="module")
def stack(
    data_dir: Path, new_postgres_database: Any, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    services, db_url = _services(), new_postgres_database()
    ports, cwd = Ports(api=free_port(), models=free_port()), tmp_path_factory.mktemp("compose-cwd")

    def env(name: str) -> dict[str, str]:
        return _on_this_machine(_environment(services[name]), data_dir, db_url, redis_url, ports)

    migrate = subprocess.run(services["migrate"]["command"], env=env("migrate"), cwd=cwd, capture_output=True,
                             text=True, timeout=120, check=False)  # fmt: skip
    assert migrate.returncode == 0, migrate.stderr
    logs = [cwd / "models.log", cwd / "api.log"]
    processes = [_start(services["models-cpu"]["command"], env("models-cpu"), logs[0], cwd),
                 _start(services["api"]["command"], env("api"), logs[1], cwd)]  # fmt: skip
    try:
        _wait_healthy(f"http://127.0.0.1:{ports.models}/health", processes[0], logs[0])
        _wait_healthy(f"http://127.0.0.1:{ports.api}/health", processes[1], logs[1])
        with session_scope(db_url) as session:
            key = create_key(session, tenant_name="compose").plaintext
        yield Stack(f"http://127.0.0.1:{ports.api}", f"http://127.0.0.1:{ports.models}", key, logs)
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def test_both_profiles_run_the_same_server_and_every_service_knows_the_secret() -> None:
    services = _services()
    gpu, cpu = services["models"], services["models-cpu"]
    assert (gpu["profiles"], cpu["profiles"]) == (["gpu"], ["cpu"])
    assert gpu["command"] == cpu["command"] == ["sppo", "serve-models"]
    assert gpu["networks"] == cpu["networks"] == {"default": {"aliases": ["models"]}}
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert {**_environment(gpu), "SPPO_INFERENCE_DEVICE": "cpu"} == _environment(cpu)
    for name in ("migrate", "api", "worker", "evaluator", "models", "models-cpu"):
        environment = _environment(services[name])
        assert environment["SPPO_INFERENCE_SECRET"] == SECRET, name
        assert environment["SPPO_INFERENCE_URL"] == "http://models:8001", name


def test_the_model_server_answers_only_with_the_secret(stack: Stack) -> None:
    body = {"kind": "chat", "model": "rand-tiny", "base_model": "rand-tiny", "max_tokens": 2,
            "messages": CHAT["messages"]}  # fmt: skip
    url = f"{stack.models_url}/internal/generate"
    assert httpx.post(url, json=body).status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    answer = httpx.post(url, json=body, headers={"Authorization": f"Bearer {SECRET}"}, timeout=60)
    assert answer.status_code == 200, answer.text
    # a random-weights model may sample its end-of-sequence token early: at most the budget, at least one
    assert 1 <= answer.json()["usage"]["completion_tokens"] <= 2
    # refused before a body is read: a 1 MB body that never comes gets its 401 at once
    host, port = stack.models_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /internal/generate HTTP/1.1\r\nHost: m\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000000\r\n\r\n{")  # fmt: skip
        assert sock.recv(4096).startswith(b"HTTP/1.1 401 ")


def test_chat_completions_through_the_api(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {stack.key}"}
    response = httpx.post(f"{stack.api_url}/v1/chat/completions", json=CHAT, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "chat.completion" and 1 <= answer["usage"]["completion_tokens"] <= 4
    too_many = httpx.post(f"{stack.api_url}/v1/chat/completions", json={**CHAT, "n": 17}, headers=headers)
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "n"


def test_an_api_with_another_secret_gets_503_not_the_tenants_401(stack: Stack, data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir, inference_url=stack.models_url, inference_secret="w" * 32)  # type: ignore[call-arg]
    request = {"kind": "chat", "messages": CHAT["messages"], "max_tokens": 2, "n": 1}
    target = ModelTarget("rand-tiny", "rand-tiny", None)
    call = proxy_generate(settings=settings, target=target, request=request, stream=False)
    with pytest.raises(ServiceUnavailable, match="refused this API's credentials") as refused:
        run_in_own_loop(call)
    assert refused.value.retry_after == 5


def test_no_log_line_holds_the_secret(stack: Stack) -> None:
    for log in stack.logs:
        assert SECRET not in log.read_text(), log.name


def test_the_model_servers_image_carries_the_inference_package() -> None:
    """docker/worker.Dockerfile (the compose file's model server image) copies every package the server
    imports, and .dockerignore lets what each image copies into the build context."""
    admitted = set(re.findall(r"^!(\w+)/$", (ROOT / ".dockerignore").read_text(), re.M))
    for dockerfile in ("worker.Dockerfile", "api.Dockerfile"):
        copied = set(re.findall(r"^COPY (\w+) \1$", (ROOT / "docker" / dockerfile).read_text(), re.M))
        assert copied - admitted == set(), dockerfile
        if dockerfile == "worker.Dockerfile":
            assert {"app", "core", "worker", "cli", "inference", "jobspec", "grading"} <= copied
