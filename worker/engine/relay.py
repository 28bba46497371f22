"""TrainerCallbacks across a process boundary: rank 0 of a torchrun job calls the launcher's callbacks.

The launcher's process keeps the real callbacks (the worker's JobReporter with its DB, Redis and
heartbeat; the CLI's progress bar); rank 0 holds a `RelayCallbacks` that forwards every call over a
loopback TCP connection as one line of JSON and waits for the reply line. Waiting makes each call
behave as it does in one process: `control()` returns the launcher's answer, and a checkpoint is
recorded before rank 0 goes on (and may prune it later). The connection is authenticated by a random
token passed in the ranks' environment. When the launcher dies, rank 0's next call fails and it exits;
torchrun then stops the other ranks.
"""

import json
import secrets
import socket
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from worker.engine.callbacks import Control, Level, StartInfo, TrainerCallbacks, TrainingResult
from worker.engine.errors import EngineError

ADDRESS_ENV = "SPPO_RELAY_ADDRESS"
TOKEN_ENV = "SPPO_RELAY_TOKEN"
ACCEPT_POLL_S = 0.5  # how often the launcher checks that the ranks still live before rank 0 connects
CALLBACKS = ("on_start", "on_samples", "on_step", "on_event", "on_checkpoint", "on_evaluation", "control")


class RelayError(Exception):
    """The launcher's callback failed or the launcher is gone: rank 0 stops the run."""


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, default=str).encode() + b"\n"


class RelayServer:
    """The launcher's end: answers rank 0's calls with `callbacks` and keeps how the run ended."""

    def __init__(self, callbacks: TrainerCallbacks) -> None:
        self.callbacks = callbacks
        self.token = secrets.token_hex(16)
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.result: TrainingResult | None = None
        self.error: EngineError | None = None  # an engine error rank 0 reported
        self.callback_error: BaseException | None = None  # raised by one of `callbacks`; re-raised later

    def __enter__(self) -> "RelayServer":
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._socket.close()

    def env(self) -> dict[str, str]:
        host, port = self._socket.getsockname()[:2]
        return {ADDRESS_ENV: f"{host}:{port}", TOKEN_ENV: self.token}

    def serve(self, alive: Callable[[], bool]) -> None:
        """Answer rank 0 until it disconnects; return early if `alive()` fails before it connects."""
        self._socket.settimeout(ACCEPT_POLL_S)
        while True:
            try:
                conn, _ = self._socket.accept()
                break
            except TimeoutError:
                if not alive():
                    return
        conn.settimeout(None)  # a step may take hours between calls; a dead rank 0 closes the socket
        with conn, conn.makefile("rwb") as stream:
            if stream.readline().strip() != self.token.encode():
                return
            for raw in stream:
                stream.write(_line(self._answer(json.loads(raw))))
                stream.flush()

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        call, args = request["call"], request["args"]
        if call == "result":
            self.result = _result(args)
            return {"ok": None}
        if call == "error":
            self.error = EngineError(args["code"], args["message"], args["param"])
            return {"ok": None}
        if call not in CALLBACKS or self.callback_error is not None:
            return {"error": f"refused call {call!r}"}
        if call == "on_start":
            args = {"info": StartInfo(args["total_steps"], args["start_step"], Path(args["output_dir"]))}
        elif call == "on_checkpoint":
            args = {**args, "path": Path(args["path"])}
        try:
            return {"ok": getattr(self.callbacks, call)(**args)}
        except Exception as exc:  # the launcher raises it once the ranks are down, as one process would
            self.callback_error = exc
            return {"error": f"{type(exc).__name__}: {exc}"}


def _result(values: dict[str, Any]) -> TrainingResult:
    adapter = values["final_adapter_dir"]
    return TrainingResult(
        **{
            **values,
            "final_adapter_dir": None if adapter is None else Path(adapter),
            "checkpoints": [Path(p) for p in values["checkpoints"]],
        }
    )


class RelayCallbacks(TrainerCallbacks):
    """Rank 0's end: every callback is a blocking call to the launcher's RelayServer."""

    def __init__(self, address: str, token: str) -> None:
        host, port = address.rsplit(":", 1)
        self._socket = socket.create_connection((host, int(port)))
        self._stream = self._socket.makefile("rwb")
        self._stream.write(token.encode() + b"\n")
        self._stream.flush()

    def _call(self, call: str, **args: Any) -> Any:
        try:
            self._stream.write(_line({"call": call, "args": args}))
            self._stream.flush()
            raw = self._stream.readline()
        except OSError as exc:
            raise RelayError(f"the launcher is unreachable: {exc}") from exc
        if not raw:
            raise RelayError("the launcher closed the connection")
        reply = json.loads(raw)
        if "error" in reply:
            raise RelayError(reply["error"])
        return reply["ok"]

    def on_start(self, info: StartInfo) -> None:
        self._call("on_start", total_steps=info.total_steps, start_step=info.start_step,
                   output_dir=str(info.output_dir))  # fmt: skip

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self._call("on_step", step=step, metrics=metrics)

    def on_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        self._call("on_samples", step=step, samples=samples)

    def on_event(self, level: Level, message: str, data: dict[str, Any] | None = None) -> None:
        self._call("on_event", level=level, message=message, data=data)

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        self._call("on_checkpoint", step=step, path=str(path), metrics=metrics)

    def on_evaluation(self, step: int, scores: dict[str, float]) -> None:
        self._call("on_evaluation", step=step, scores=scores)

    def control(self) -> Control:
        return cast(Control, self._call("control"))

    def report_result(self, result: TrainingResult) -> None:
        self._call("result", **asdict(result))

    def report_error(self, error: EngineError) -> None:
        self._call("error", code=error.code, message=error.message, param=error.param)

    def close(self) -> None:
        self._stream.close()
        self._socket.close()
