"""`pip install .` (not editable) gives a working service: the wheel carries the migrations and the dashboard.

The wheel is built from a copy of the sources and installed into a fresh venv; its dependencies come from
this environment (a path line, not a site dir, so this checkout's editable install stays invisible), which
keeps the test offline and fast. Everything then runs from a directory outside any checkout.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    "app",
    "core",
    "worker",
    "cli",
    "inference",
    "jobspec",
    "grading",
    "migrations",
    "pyproject.toml",
    "README.md",
]

pytestmark = pytest.mark.timeout(300)


def _build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, source], check=True)
    (wheel,) = dist.glob("sppo_service-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    dependencies = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "dependencies.pth").write_text("".join(f"{path}\n" for path in sorted(dependencies)))
    pip = [sys.executable, "-m", "pip", "--python", python]
    # --ignore-installed: the borrowed dependencies hold this checkout's editable install of the same version
    install = [*pip, "install", "-q", "--no-deps", "--no-index", "--ignore-installed", wheel]
    subprocess.run(install, check=True)
    return venv


def test_wheel_installed_in_a_fresh_venv_migrates_serves_and_is_ready(tmp_path: Path, redis_url: str) -> None:
    venv = _fresh_venv(tmp_path, _build_wheel(tmp_path))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {name: value for name, value in os.environ.items() if not name.startswith(("SPPO_", "PYTHON"))}
    env |= {"SPPO_DATA_DIR": str(outside / "data"), "SPPO_REDIS_URL": redis_url}
    python, sppo = venv / "bin" / "python", venv / "bin" / "sppo"

    where = subprocess.run(
        [python, "-c", "import app, migrations; print(app.__file__); print(migrations.__file__)"],
        cwd=outside, env=env, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    assert all(Path(path).is_relative_to(venv) for path in where), where  # the wheel, not this checkout

    migrated = subprocess.run([sppo, "migrate"], cwd=outside, env=env, capture_output=True, text=True)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert (outside / "data" / "sppo.db").is_file()

    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sppo, "serve", "--port", str(port)], cwd=outside, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ok", "database": "ok", "redis": "ok"}
        dashboard = httpx.get(f"http://127.0.0.1:{port}/login", timeout=5)
        assert dashboard.status_code == 200, dashboard.text  # templates and static files are in the wheel
    finally:
        server.terminate()
        server.wait(timeout=30)
