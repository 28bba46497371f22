"""Multi-device runs: `launch` starts torchrun on this host and relays rank 0's callbacks; `main` is
what each rank runs (`python -m torch.distributed.run ... -m worker.engine.launch config.yaml`).

torchrun (not a hand-made launcher) gives every rank its RANK/WORLD_SIZE/LOCAL_RANK, the rendezvous on a
free local port (`--standalone`) and the failure handling: with `--max-restarts 0`, when any rank exits
its agent stops the others and exits non-zero, so a SIGKILLed rank never leaves the rest hanging in a
collective. The ranks' output goes to `<output_dir>/ranks.log`.

Every rank also watches the launcher's pid: a rank that outlived a SIGKILLed worker would go on writing
the run directory (a shared mount, in the default deployment) while the requeued job resumes from it on
another host, and rank 0 would otherwise notice only at its next callback, possibly a long step away.
"""

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist

from worker.engine.callbacks import TrainerCallbacks, TrainingResult
from worker.engine.checkpoint import crash_point
from worker.engine.config import RunConfig
from worker.engine.distributed import EVALUATE, GATHER, GATHER_WEIGHTS, STEP, STOP
from worker.engine.errors import ConfigError, DistributedError, EngineError
from worker.engine.memory import reset_peak_memory
from worker.engine.policy import resolve_device
from worker.engine.relay import ADDRESS_ENV, TOKEN_ENV, RelayCallbacks, RelayServer
from worker.engine.trainer import Trainer

logger = logging.getLogger(__name__)
RANKS_LOG = "ranks.log"
STOP_GRACE_S = 60  # torchrun's own grace for its ranks is 30 s; then it is killed with them
LAUNCHER_PID_ENV = "SPPO_LAUNCHER_PID"
WATCH_INTERVAL_S = 1.0
ORPHAN_EXIT_CODE = 1


def torchrun_command(config_path: Path, n_devices: int) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n_devices}",
        "--max-restarts=0", "--monitor-interval=1", "-m", "worker.engine.launch", str(config_path),
    ]  # fmt: skip


def launch(config: RunConfig, callbacks: TrainerCallbacks) -> TrainingResult:
    """Run `config` on `config.n_devices` local processes; `callbacks` see what one process would show."""
    visible = torch.cuda.device_count()
    if resolve_device(config.device).type == "cuda" and visible < config.n_devices:
        raise ConfigError(
            f"n_devices {config.n_devices} needs as many GPUs, and this worker sees {visible}", "n_devices"
        )
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config_path = output_dir / "config.yaml"
    config.to_yaml(config_path)
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // config.n_devices)))
    with RelayServer(callbacks) as relay, (output_dir / RANKS_LOG).open("ab") as log:
        env = {**os.environ, **relay.env(), "OMP_NUM_THREADS": threads, LAUNCHER_PID_ENV: str(os.getpid())}
        # its own session: a Ctrl-C or SIGTERM meant for this process reaches the ranks only through us
        process = subprocess.Popen(
            torchrun_command(config_path, config.n_devices),
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            relay.serve(alive=lambda: process.poll() is None)
            code = process.wait()
        finally:
            _stop(process)
    if relay.callback_error is not None:
        raise relay.callback_error
    if relay.error is not None:
        raise relay.error
    if relay.result is not None:  # rank 0 finished (files written, followers released) before any failure
        if code != 0:
            logger.warning(
                "the run %s at step %d, then a training process exited with code %d while shutting down; "
                "its output is in %s", relay.result.status, relay.result.final_step, code, RANKS_LOG,
            )  # fmt: skip
        return relay.result
    raise DistributedError(
        f"One of the run's {config.n_devices} training processes stopped unexpectedly (torchrun exit code "
        f"{code}) and the others were stopped with it. Checkpoints written so far are kept; the operators "
        f"find the processes' output in {RANKS_LOG}."
    )


def _stop(process: "subprocess.Popen[bytes]") -> None:
    """Ask torchrun to stop its ranks (it forwards SIGTERM, then kills), then make sure it is gone."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def exit_with_launcher(pid: int) -> None:
    """End this process (a daemon thread polls) as soon as process `pid` no longer exists."""

    def watch() -> None:
        while True:
            time.sleep(WATCH_INTERVAL_S)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                logger.error("the launcher (pid %d) is gone: stopping this rank", pid)
                os._exit(ORPHAN_EXIT_CODE)
            except PermissionError:  # the pid now belongs to someone else's process: ours is gone too
                os._exit(ORPHAN_EXIT_CODE)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def follow(trainer: Trainer) -> None:
    """A follower rank: resume like rank 0, then do what rank 0 announces until it says STOP: train a
    step, or (a sharded policy) take part in an evaluation or in gathering the state to save."""
    trainer.resume()
    actions = {
        STEP: trainer.train_step,
        EVALUATE: trainer.evaluate,
        GATHER: trainer.full_state,
        GATHER_WEIGHTS: trainer.policy_weights,
    }
    while (command := trainer.dist.command(STOP)) != STOP:
        actions[command]()


def main(config_path: str) -> None:
    """One rank of a launched run; rank 0 reports to the launcher through the relay."""
    logging.basicConfig(level=logging.INFO, format=f"rank {os.environ['RANK']} %(levelname)s %(message)s")
    exit_with_launcher(int(os.environ[LAUNCHER_PID_ENV]))
    config = RunConfig.from_yaml(config_path)
    relay = (
        RelayCallbacks(os.environ[ADDRESS_ENV], os.environ[TOKEN_ENV]) if os.environ["RANK"] == "0" else None
    )
    reset_peak_memory()
    try:
        trainer = Trainer(config, relay or TrainerCallbacks())
        if relay is None:
            follow(trainer)
            crash_point("follower.stopped", trainer.step)
            return
        result = trainer.run()
        # reported before the followers are released: one that dies on its way out (seen once, a SIGABRT
        # in rank 1's teardown after a sharded run) can no longer turn a finished run into a failed one
        relay.report_result(result)
        trainer.dist.command(STOP)
    except EngineError as exc:
        if relay is not None:
            relay.report_error(exc)
        raise
    finally:
        if relay is not None:
            relay.close()
        if dist.is_initialized():
            dist.destroy_process_group()


def exit_rank() -> NoReturn:
    """End a rank that finished cleanly without interpreter finalization. A sharded model keeps the gloo
    process group alive past destroy_process_group, and tearing it down during finalization, where its
    worker threads still hold tensors, can abort the process ("terminate called without an active
    exception", SIGABRT: twice in ~60 sharded runs here, once failing a finished run)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
    exit_rank()
