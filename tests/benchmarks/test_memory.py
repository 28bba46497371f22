"""The memory benchmark's tracker on a step whose bytes are known exactly, and its tiny smoke run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.tensor_memory import TensorMemory

ROOT = Path(__file__).resolve().parents[2]


def test_the_tracker_counts_an_adamw_step_exactly() -> None:
    n = 1000 * 1000
    model = torch.nn.Linear(1000, 1000, bias=False)
    optimizer = torch.optim.AdamW(model.parameters(), foreach=False)
    inputs = torch.randn(8, 1000)
    with TensorMemory() as memory:
        start = memory.current
        model(inputs).sum().backward()
        assert memory.current - start == 4 * n  # the gradient; the output and its sum are gone
        assert memory.peak >= memory.current
        optimizer.step()
        assert memory.current - start == 4 * n + 8 * n + 4  # AdamW's m and v, and its step counter
        optimizer.zero_grad()
        assert memory.current - start == 8 * n + 4
        memory.reset_peak()
        halves = torch.ones(n, dtype=torch.bfloat16)
        assert memory.current - start == 8 * n + 4 + 2 * n
        del halves
        memory.end_phase("bf16")
    assert start >= 4 * n + 8 * 1000 * 4  # weights and inputs, alive before the mode, counted at entry
    assert memory.phases["bf16"] - start == 8 * n + 4 + 2 * n
    assert memory.current - start == 8 * n + 4


def test_the_tiny_run_measures_what_the_docs_compute(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--tiny", "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, timeout=600)
    report = json.loads((tmp_path / "cpu-tiny.json").read_text())
    assert done.returncode == 0, done.stderr[-2000:]
    runs = {run["name"]: run for run in report["runs"]}
    lora, full = runs["grpo/float32/no-ckpt/lora/none/r16"], runs["grpo/float32/no-ckpt/full/none/r16"]
    bf16, longer = runs["grpo/bfloat16/no-ckpt/lora/none/r16"], runs["grpo/float32/no-ckpt/lora/none/r48"]
    assert full["update_peak_bytes"] > lora["update_peak_bytes"]
    assert longer["update_peak_bytes"] > lora["update_peak_bytes"] and longer["tokens"] > lora["tokens"]
    assert report["fit"]["costs"]["frozen_bytes_per_param"] == {"float32": 4.0, "bfloat16": 2.0}
    assert bf16["optimizer_state_bytes"] == lora["optimizer_state_bytes"]  # float32 adapter moments
    for run in runs.values():
        assert run["step_start_bytes"] <= run["rollout_peak_bytes"] <= run["step_peak_bytes"]
        assert run["vmhwm_step_mb"] * 2**20 > run["step_peak_bytes"]  # the runtime on top of the tensors
    assert set(report["fit"]["check"]) == set(runs)
    assert (tmp_path / "cpu-tiny.png").stat().st_size > 0
