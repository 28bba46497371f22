"""Multi-device runs through torchrun and the callback relay: exact resume, pause, and a killed rank."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from worker.engine import launch
from worker.engine.callbacks import Control, StartInfo, TrainerCallbacks
from worker.engine.checkpoint import CRASH_AT_ENV
from worker.engine.errors import ConfigError, DistributedError
from worker.engine.evaluate import evaluate
from worker.engine.fixtures import Fixture
from worker.engine.launch import ORPHAN_EXIT_CODE, WATCH_INTERVAL_S
from worker.engine.run import run_training

from .conftest import final_weights, tiny_config

# 5 validation items: a sharded evaluation gives each of 2 ranks 3, the last rank one uncounted copy
OPTIONS: dict[str, Any] = {
    "n_devices": 2, "max_steps": 4, "checkpoint_interval": 2, "eval_interval": 2, "eval_max_items": 5,
}  # fmt: skip
KILL_DEADLINE_S = 60  # torchrun's monitor notices within 1 s; the rest is the other rank's teardown


class Watch(TrainerCallbacks):
    def __init__(self, pause_after: int | None = None) -> None:
        self.steps: list[int] = []
        self.starts: list[StartInfo] = []
        self.pause_after = pause_after

    def on_start(self, info: StartInfo) -> None:
        self.starts.append(info)

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.steps.append(step)

    def control(self) -> Control:
        return "pause" if self.pause_after is not None and len(self.steps) > self.pause_after else "continue"


def _lines(output_dir: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if not k.startswith("perf/")} for line in lines]


@pytest.mark.parametrize(
    "mode",
    # full fine-tuning shards the policy: generation, evaluation and checkpoints are collectives
    [{}, {"use_lora": False, "learning_rate": 3e-5}],
    ids=["lora", "full-sharded"],
)
def test_two_ranks_resume_exactly_after_a_pause_and_on_one_process(
    tiny: Fixture, tmp_path: Path, mode: dict[str, Any]
) -> None:
    options = {**OPTIONS, **mode}
    config = tiny_config(tiny, tmp_path / "straight", **options)
    straight = run_training(config, Watch())
    assert straight.status == "completed" and straight.final_step == 4
    # the base model's score at step 0 is what one process gives (0.6 here: a copy counted would be 0.8)
    base = evaluate(tiny.model_dir, None, tiny.validation_file, config.grader, samples=0, temperature=1.0,
                    max_response_tokens=config.max_response_tokens, max_items=5, device="cpu")  # fmt: skip
    assert _lines(tmp_path / "straight")[0]["eval/pass@1"] == base.pass_at_1

    paused = run_training(tiny_config(tiny, tmp_path / "resumed", **options), Watch(pause_after=2))
    assert paused.status == "paused" and paused.final_step == 2
    shutil.copytree(tmp_path / "resumed", tmp_path / "single")  # the same checkpoint, for 1 process
    watch = Watch()
    resumed = run_training(tiny_config(tiny, tmp_path / "resumed", **options), watch)
    assert resumed.status == "completed" and watch.starts[0].start_step == 2
    assert _lines(tmp_path / "resumed") == _lines(tmp_path / "straight")
    for name, tensor in final_weights(tmp_path / "straight").items():
        assert final_weights(tmp_path / "resumed")[name].equal(tensor), name

    # one process takes over the 2-rank checkpoint: same weights and optimizer, its own sampling from there
    watch = Watch()
    single = run_training(tiny_config(tiny, tmp_path / "single", **{**options, "n_devices": 1}), watch)
    assert single.status == "completed" and watch.starts[0].start_step == 2 and watch.steps == [3, 4]
    assert _lines(tmp_path / "single")[:2] == _lines(tmp_path / "straight")[:2]


def _processes(config_path: Path) -> dict[int, int]:
    """RANK of each live process whose command line names `config_path` (torchrun itself: -1), by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            if b"worker.engine.launch" not in cmdline or str(config_path).encode() not in cmdline:
                continue
            environ = dict(
                item.split(b"=", 1) for item in (entry / "environ").read_bytes().split(b"\0") if b"=" in item
            )
        except OSError:  # gone meanwhile, or not ours
            continue
        found[int(entry.name)] = int(environ.get(b"RANK", b"-1"))
    return found


class KillRankOne(TrainerCallbacks):
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.killed_at: float | None = None

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        if self.killed_at is None:
            rank_one = next(pid for pid, rank in _processes(self.config_path).items() if rank == 1)
            os.kill(rank_one, signal.SIGKILL)
            self.killed_at = time.monotonic()


def test_a_follower_dying_after_the_run_finished_does_not_fail_it(
    tiny: Fixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(CRASH_AT_ENV, "follower.stopped")  # rank 1 dies right after rank 0's STOP
    config = tiny_config(tiny, tmp_path / "run", n_devices=2, max_steps=1, validation_file=None)
    result = run_training(config)
    assert result.status == "completed" and result.final_step == 1
    assert result.final_adapter_dir is not None
    assert (result.final_adapter_dir / "adapter_config.json").exists()
    assert "exited with code" in caplog.text and "while shutting down" in caplog.text


def test_a_killed_rank_fails_the_run_and_leaves_no_process(tiny: Fixture, tmp_path: Path) -> None:
    config = tiny_config(tiny, tmp_path / "run", **{**OPTIONS, "max_steps": 50, "validation_file": None})
    config_path = tmp_path / "run" / "config.yaml"
    callbacks = KillRankOne(config_path)
    with pytest.raises(DistributedError) as failure:
        run_training(config, callbacks)
    assert callbacks.killed_at is not None
    assert time.monotonic() - callbacks.killed_at < KILL_DEADLINE_S
    assert failure.value.code == "distributed_process_failed"
    assert "stopped unexpectedly" in failure.value.message
    assert _processes(config_path) == {}


def test_a_rank_ends_once_its_launcher_is_gone() -> None:
    launcher = subprocess.Popen(["sleep", "60"])
    code = (
        "import sys, time; from worker.engine.launch import exit_with_launcher; "
        "exit_with_launcher(int(sys.argv[1])); print('watching', flush=True); time.sleep(60)"
    )
    rank = subprocess.Popen([sys.executable, "-c", code, str(launcher.pid)], stdout=subprocess.PIPE)
    assert rank.stdout is not None and rank.stdout.readline() == b"watching\n"
    launcher.kill()
    launcher.wait()  # reaped, as the worker's parent reaps a killed worker
    started = time.monotonic()
    assert rank.wait(timeout=10) == ORPHAN_EXIT_CODE
    assert time.monotonic() - started < 3 * WATCH_INTERVAL_S


def test_more_devices_than_gpus_is_refused_before_starting(
    tiny: Fixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(launch, "resolve_device", lambda _: torch.device("cuda"))
    with pytest.raises(ConfigError) as refused:
        run_training(tiny_config(tiny, tmp_path / "run", n_devices=2, device="cuda"))
    assert refused.value.param == "n_devices" and "sees 1" in refused.value.message
    assert not (tmp_path / "run").exists()
