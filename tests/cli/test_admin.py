"""`sppo keys create/list/revoke` and the dev key of `sppo run`, against a real migrated database."""

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.errors import AuthenticationError
from app.services.keys import authenticate
from core.db import session_scope, upgrade_database
from tests.conftest import free_port

SPPO = str(Path(sys.executable).parent / "sppo")


def _sppo(*args: str, db_url: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPPO_DATABASE_URL": db_url, "SPPO_DATA_DIR": str(data_dir)}
    return subprocess.run([SPPO, *args], env=env, capture_output=True, text=True, check=False, timeout=60)


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'cli.db'}"
    upgrade_database(db_url)
    created = _sppo("keys", "create", "--tenant", "acme", "--name", "ci", db_url=db_url, data_dir=tmp_path)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("sk-sppo-") and "shown only once" in created.stderr
    with session_scope(db_url) as session:
        assert authenticate(session, authorization=f"Bearer {key}").name == "acme"

    listed = _sppo("keys", "list", db_url=db_url, data_dir=tmp_path)
    key_id, tenant, prefix, state, name = listed.stdout.strip().split("\t")
    assert (tenant, prefix, state, name) == ("acme", f"{key[:12]}...", "active", "ci")
    assert key not in listed.stdout

    assert _sppo("keys", "revoke", key_id, db_url=db_url, data_dir=tmp_path).returncode == 0
    assert "revoked" in _sppo("keys", "list", "--tenant", "acme", db_url=db_url, data_dir=tmp_path).stdout
    with session_scope(db_url) as session, pytest.raises(AuthenticationError):
        authenticate(session, authorization=f"Bearer {key}")
    missing = _sppo("keys", "revoke", "key-nope", db_url=db_url, data_dir=tmp_path)
    assert missing.returncode == 1 and "key-nope" in missing.stderr


def test_dev_key_is_stable_and_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.admin import ensure_dev_key

    db_url = f"sqlite:///{tmp_path / 'dev.db'}"
    upgrade_database(db_url)
    monkeypatch.setenv("SPPO_DATABASE_URL", db_url)
    from core.db import get_engine, get_sessionmaker
    from core.settings import get_settings

    for cached in (get_settings, get_engine, get_sessionmaker):
        cached.cache_clear()
    try:
        key_file = tmp_path / "data" / "dev-api-key"
        first = ensure_dev_key(key_file)
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert ensure_dev_key(key_file) == first
        key_file.write_text("sk-sppo-stale\n")  # e.g. the database was reset: a new key replaces it
        assert ensure_dev_key(key_file) != first
    finally:
        for cached in (get_settings, get_engine, get_sessionmaker):
            cached.cache_clear()


def _start_run(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """Start `sppo run`; return the process and the dev key it prints."""
    process = subprocess.Popen(
        [SPPO, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    key = ""
    for line in process.stdout:
        if line.startswith("Dev API key"):
            key = line.rsplit(" ", 1)[-1].strip()
        if "Uvicorn running" in line or "Application startup complete" in line:
            return process, key
    pytest.fail("sppo run exited before the server started")


def _alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()  # a zombie has exited
    except OSError:
        return False


def _children(parent: int) -> list[int]:
    """Pids of the live processes whose parent is `parent` (field 4 of /proc/<pid>/stat)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (
                entry.name.isdigit()
                and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent
            ):
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return [pid for pid in found if _alive(pid)]


def test_sppo_run_migrates_serves_and_keeps_the_dev_key(tmp_path: Path, redis_url: str) -> None:
    """The workers take tasks at once (no fixture preparation first), so no model is needed here."""
    import httpx

    port = free_port()
    env = {**os.environ, "SPPO_DATA_DIR": str(tmp_path), "SPPO_PORT": str(port), "SPPO_REDIS_URL": redis_url,
           "SPPO_INFERENCE_PORT": str(free_port())}  # fmt: skip
    env.pop("SPPO_DATABASE_URL", None)
    keys = []
    for _ in range(2):
        process, key = _start_run(env)
        try:
            response = httpx.get(
                f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {key}"}
            )
            assert response.status_code == 200 and response.json()["data"][0]["id"] == "sppo-tiny"
        finally:
            process.terminate()
            process.wait(timeout=10)
            assert process.stdout is not None
            process.stdout.close()
        keys.append(key)
    assert keys[0] == keys[1] and keys[0].startswith("sk-sppo-")
    assert (tmp_path / "sppo.db").exists()  # the default SQLite database under the data dir


def test_sppo_run_stops_everything_when_its_output_pipe_breaks(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`sppo run | reader`, the reader exits: Redis, both workers and the API must all stop."""
    # a Redis URL nothing listens on: `sppo run` starts its own redis-server, which must stop too
    env = {**os.environ, "SPPO_DATA_DIR": str(tmp_path), "SPPO_PORT": str(free_port()),
           "SPPO_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
           "SPPO_INFERENCE_PORT": str(free_port())}  # fmt: skip
    env.pop("SPPO_DATABASE_URL", None)
    signals = tmp_path_factory.mktemp("reader")
    ready, go = signals / "ready", signals / "go"
    # reads until the last line `sppo run` prints, says so, and exits once the test has looked around
    reader_script = (
        "import os, sys, time\n"
        "for line in sys.stdin:\n"
        "    if 'sppo client' in line:\n"
        f"        open({str(ready)!r}, 'w').close()\n"
        f"        while not os.path.exists({str(go)!r}): time.sleep(0.1)\n"
        "        sys.exit(0)\n"
    )
    with (tmp_path / "run.err").open("wb") as err:
        run = subprocess.Popen([SPPO, "run"], env=env, stdout=subprocess.PIPE, stderr=err)
        reader = subprocess.Popen([sys.executable, "-c", reader_script], stdin=run.stdout)
        assert run.stdout is not None
        run.stdout.close()  # only the reader holds the pipe's read end now
        try:
            deadline = time.monotonic() + 120
            while not ready.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            started = _children(run.pid)
            assert len(started) == 4, started  # redis-server, the two workers and the model server
            go.touch()
            assert reader.wait(timeout=10) == 0
            run.wait(timeout=90)
        finally:
            if run.poll() is None:
                run.kill()
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [pid for pid in started if _alive(pid)] == [], (tmp_path / "run.err").read_text()[-3000:]


def _environ(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().split("=", 1) for entry in entries if b"=" in entry)


def test_sppo_run_draws_one_model_server_secret_for_all_its_processes(tmp_path: Path, redis_url: str) -> None:
    """With no SPPO_INFERENCE_SECRET configured, `sppo run` draws one and gives it to the model server, both
    workers (their graders) and its API: chat/completions works, the model server refuses anyone else, and
    neither its output nor the model server's log shows the secret. Only SPPO_INFERENCE_PORT is changed: the
    API is pointed at the model server `sppo run` starts there."""
    import httpx

    port, models_port = free_port(), free_port()
    env = {**os.environ, "SPPO_DATA_DIR": str(tmp_path), "SPPO_PORT": str(port), "SPPO_REDIS_URL": redis_url,
           "SPPO_INFERENCE_PORT": str(models_port)}  # fmt: skip
    for name in ("SPPO_DATABASE_URL", "SPPO_INFERENCE_SECRET", "SPPO_INFERENCE_URL"):
        env.pop(name, None)
    process, key = _start_run(env)
    try:
        children = _children(process.pid)
        drawn = {_environ(pid).get("SPPO_INFERENCE_SECRET") for pid in children}
        assert len(children) == 3 and len(drawn) == 1, (children, len(drawn))  # two workers, the model server
        [secret] = drawn
        assert secret is not None and len(secret) >= 32
        chat = {"model": "sppo-tiny", "messages": [{"role": "user", "content": "1+2+3="}], "max_tokens": 4}
        # `sppo run` announced itself only once its model server answered: no 503 to wait out
        response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=chat, timeout=60,
                              headers={"Authorization": f"Bearer {key}"})  # fmt: skip
        assert response.status_code == 200, response.text
        generate = {
            "kind": "chat",
            "model": "sppo-tiny",
            "base_model": "sppo-tiny",
            "messages": chat["messages"],
        }
        assert (
            httpx.post(f"http://127.0.0.1:{models_port}/internal/generate", json=generate).status_code == 401
        )
    finally:
        process.terminate()
        assert process.stdout is not None
        output = process.stdout.read()
        process.wait(timeout=90)
        process.stdout.close()
    assert secret not in output
    assert secret not in (tmp_path / "logs" / "models.log").read_text()


@pytest.mark.parametrize("variable", ["SPPO_PORT", "SPPO_INFERENCE_PORT"])
def test_sppo_run_names_the_setting_of_a_taken_port(tmp_path: Path, variable: str) -> None:
    env = {**os.environ, "SPPO_DATA_DIR": str(tmp_path), "SPPO_PORT": str(free_port()),
           "SPPO_INFERENCE_PORT": str(free_port())}  # fmt: skip
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env[variable] = str(taken.getsockname()[1])
        result = subprocess.run([SPPO, "run"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and f"choose another port with {variable}=" in result.stdout, result
    assert not (tmp_path / "logs").exists()  # nothing was started
