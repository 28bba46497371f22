"""The GPU check's CPU smoke mode, so the script that waits for a GPU lease cannot rot."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu_model import peak_flops, training_flops_per_token, utilisation

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {"sppo/separate", "sppo/shared_lora", "grpo/none", "ppo/separate", "ppo/shared_lora"}


def _gpu_check(out: Path, *options: str) -> tuple[int, dict[str, Any]]:
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*command, "--out", str(out), *options], env=env, capture_output=True, timeout=300)
    return done.returncode, json.loads((out / "cpu-tiny.json").read_text())


def test_the_cpu_smoke_run_measures_every_check(tmp_path: Path) -> None:
    code, report = _gpu_check(tmp_path)
    assert report["errors"] == {} and code == 0
    assert report["model"]["tiny"] and report["device"]["name"] == "cpu"
    for part in ("rollout", "update"):
        found = report[part]
        assert found["engine_tokens_per_s"] > 0 and found["bare_tokens_per_s"] > 0
        assert found["engine_over_bare"] > 0
        assert found["engine_mfu"] is None and found["bare_mfu"] is None  # no listed peak on a CPU
    max_tokens = report["workload"]["max_response_tokens"]
    assert report["rollout"]["response_length_mean"] == max_tokens  # the model never samples EOS
    assert set(report["algorithms"]) == CONFIGS
    for found in report["algorithms"].values():
        assert found["peak_memory_mb"] > 0 and found["response_length_mean"] == max_tokens
        assert found["update_tokens_per_s"] > 0 and found["rollout_tokens_per_s"] > 0
    # the policy's own adapter only: a shared_lora critic's, in the same model, is not the policy's work
    counts = {key: found["policy_params"] for key, found in report["algorithms"].items()}
    assert counts["sppo/shared_lora"] == counts["sppo/separate"] == counts["grpo/none"]
    assert report["resume"]["bitwise_equal"] and report["resume"]["max_abs_diff"] == 0.0
    assert "CUDA only" in report["oom_retry"]["skipped"]
    assert report["elapsed_s"] < report["budget_s"]


def test_max_seconds_stops_the_run_and_keeps_what_it_measured(tmp_path: Path) -> None:
    code, report = _gpu_check(tmp_path, "--max-seconds", "2")
    assert code == 1 and report["budget_exceeded"]
    assert 2 <= report["elapsed_s"] < 5  # stopped where it was (the whole smoke run takes 6 s or more)


def test_training_flops_count_weight_gradients_only_for_what_trains() -> None:
    assert training_flops_per_token({"params": 100, "trainable": 100}) == 600  # 6N in full
    assert training_flops_per_token({"params": 100, "trainable": 1}) == 402  # LoRA: 4N + 2 x adapter
    assert utilisation(600, 1000.0, 1.2e6) == 0.5
    assert utilisation(600, 1000.0, None) is None
    assert peak_flops(torch.device("cpu")) is None
