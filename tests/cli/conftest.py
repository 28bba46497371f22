"""The client commands run as real `sppo` subprocesses against the API tests' live server."""

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# The live server and its helpers belong to the API tests; reuse them rather than start a second kind.
from ..app.conftest import ITEM, Server, key, server  # noqa: F401

SPPO = str(Path(sys.executable).parent / "sppo")
Sppo = Callable[..., subprocess.CompletedProcess[str]]


def run_sppo(
    base_url: str, api_key: str, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPPO_BASE_URL": base_url, "SPPO_API_KEY": api_key, "COLUMNS": "200"}
    return subprocess.run(
        [SPPO, *args], env=env, cwd=cwd, capture_output=True, text=True, check=False, timeout=300
    )


@pytest.fixture
def sppo(server: Server, key: str, tmp_path: Path) -> Sppo:  # noqa: F811
    """`sppo ARGS...` configured by SPPO_BASE_URL/SPPO_API_KEY, run in a scratch directory."""

    def _run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_sppo(server.base_url, key, *args, cwd=tmp_path)

    return _run


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def train_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text(ITEM * 8)
    return path
