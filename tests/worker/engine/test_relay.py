"""The callback relay between rank 0 and the launcher, over a real loopback socket, without torchrun."""

import threading
from pathlib import Path
from typing import Any

import pytest

from worker.engine.callbacks import Control, StartInfo, TrainerCallbacks, TrainingResult
from worker.engine.errors import EngineError
from worker.engine.relay import ADDRESS_ENV, TOKEN_ENV, RelayCallbacks, RelayError, RelayServer


class Seen(TrainerCallbacks):
    def __init__(self, fail_on_step: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail_on_step = fail_on_step

    def on_start(self, info: StartInfo) -> None:
        self.calls.append(("on_start", info))

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        if self.fail_on_step:
            raise LookupError("the job is no longer this worker's")
        self.calls.append(("on_step", (step, metrics)))

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        self.calls.append(("on_checkpoint", path))

    def on_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        self.calls.append(("on_samples", (step, samples)))

    def control(self) -> Control:
        return "pause"


def _serve(server: RelayServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve, args=(lambda: True,), daemon=True)
    thread.start()
    return thread


def _client(server: RelayServer, token: str | None = None) -> RelayCallbacks:
    env = server.env()
    return RelayCallbacks(env[ADDRESS_ENV], token or env[TOKEN_ENV])


def test_calls_arrive_typed_and_the_result_comes_back(tmp_path: Path) -> None:
    seen = Seen()
    with RelayServer(seen) as server:
        thread = _serve(server)
        client = _client(server)
        client.on_start(StartInfo(total_steps=4, start_step=2, output_dir=tmp_path))
        client.on_step(3, {"rollout/reward_mean": 0.25, "train/kl": float("nan")})
        client.on_checkpoint(3, tmp_path / "checkpoints" / "step-000003", {})
        client.on_samples(4, [{"index": 1, "completion": "<b>7</b>", "sub_rewards": {"a": 0.5}}])
        assert client.control() == "pause"
        result = TrainingResult("completed", 4, 4, {"a": 1.0}, {}, tmp_path / "final", [tmp_path / "c"])
        client.report_result(result)
        client.close()
        thread.join(timeout=5)
    assert seen.calls[0] == ("on_start", StartInfo(4, 2, tmp_path))
    step, metrics = seen.calls[1][1]
    assert step == 3 and metrics["rollout/reward_mean"] == 0.25 and metrics["train/kl"] != metrics["train/kl"]
    assert seen.calls[2] == ("on_checkpoint", tmp_path / "checkpoints" / "step-000003")
    assert seen.calls[3] == (
        "on_samples",
        (4, [{"index": 1, "completion": "<b>7</b>", "sub_rewards": {"a": 0.5}}]),
    )
    assert server.result == result


def test_a_failing_callback_stops_rank_0_and_is_kept_for_the_launcher() -> None:
    with RelayServer(Seen(fail_on_step=True)) as server:
        thread = _serve(server)
        client = _client(server)
        with pytest.raises(RelayError, match="no longer this worker's"):
            client.on_step(1, {})
        with pytest.raises(RelayError):  # nothing more is served once a callback failed
            client.control()
        client.report_error(EngineError("training_diverged", "the loss became nan"))
        client.close()
        thread.join(timeout=5)
    assert isinstance(server.callback_error, LookupError)
    assert server.error is not None and server.error.code == "training_diverged"


def test_a_connection_without_the_token_is_not_served() -> None:
    seen = Seen()
    with RelayServer(seen) as server:
        thread = _serve(server)
        client = _client(server, token="wrong")
        with pytest.raises(RelayError):
            client.on_step(1, {})
        thread.join(timeout=5)
    assert seen.calls == [] and not thread.is_alive()
