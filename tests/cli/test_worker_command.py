"""`sppo worker` refuses to start with settings every job would fail on."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SPPO = str(Path(sys.executable).parent / "sppo")
HAVE_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed here")
def test_a_worker_set_to_sample_with_vllm_without_it_does_not_start() -> None:
    env = {**os.environ, "SPPO_ROLLOUT_BACKEND": "vllm", "SPPO_DEVICE": "cpu"}
    started = subprocess.run([SPPO, "worker"], env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 2, started.stderr
    assert "pip install 'sppo-service[vllm]'" in started.stderr + started.stdout
