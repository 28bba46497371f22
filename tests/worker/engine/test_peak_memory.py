"""Per-run peak memory: a worker runs job after job, so each run's peak must start from its own start."""

import sys

import pytest
import torch

from worker.engine.memory import peak_memory_mb, reset_peak_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and clear_refs are Linux's")
def test_reset_forgets_an_earlier_runs_peak() -> None:
    cpu = torch.device("cpu")
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    high = peak_memory_mb(cpu)
    del block
    reset_peak_memory()
    assert peak_memory_mb(cpu) < high - 32
