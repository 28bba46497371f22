"""Python graders (`def grade(sample, item) -> float`) run in warm OS sandboxes, never in our process.

Each pool member is one bubblewrap sandbox: new user, pid, network (loopback only), ipc, uts and cgroup
namespaces, no environment of the service, a read-only view of the base Python installation, a few
allowed packages and the shared libraries, a small tmpfs /tmp as the only writable place (see
sandbox_launch). Run as root, each sandbox runs as a uid no other live sandbox of the pid namespace has
(sandbox_launch.claim_uid), with no root identity or capability at all. Inside, `sandbox_child.py` (stdlib
only) forks one process per call with CPU, memory, file, task and output limits plus a seccomp filter (no
fork/exec/socket/ptrace; threads allowed; signals and prlimit only for itself). The zygote kills a call at
its wall limit; this side kills and restarts a sandbox that stops answering, and no exception of a call
leaves `PythonGraderPool.run`: a grader can never hang nor break the pool.
"""

import contextlib
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from grading.result import GradeResult, clip_reward
from grading.sandbox_child import encode_message
from grading.sandbox_launch import (
    ALLOWED_PACKAGES,
    SANDBOX_ENV,
    bwrap_command,
    claim_uid,
    read_exact,
    release_uid,
    terminate,
    unsandboxed_command,
    write_all,
)
from grading.sandbox_seccomp import SUPPORTED, seccomp_program

__all__ = [
    "ALLOWED_PACKAGES",
    "PythonGraderPool",
    "SandboxLimits",
    "SandboxUnavailable",
    "sandbox_unavailable_reason",
]
_HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # what bwrap itself gets: none of our secrets
_STARTUP_S = 60.0  # start + preloads (sympy ~1 s) on a loaded machine
_MARGIN_S = 3.0  # past the wall limit, a zygote that has not answered is considered stuck
_TASKS = 16  # RLIMIT_NPROC of a sandboxed call: the zygote, the call and its threads
_DETAIL_CHARS = 500


@dataclass(frozen=True)
class SandboxLimits:
    cpu_s: float = 2.0  # CPU seconds per call (RLIMIT_CPU in whole seconds, rounded up)
    wall_s: float = 5.0  # wall seconds per call (the zygote SIGKILLs the call)
    memory_mb: int = 512  # address space per call (RLIMIT_AS), the interpreter's ~40 MB and preloaded
    # packages included (numpy + sympy + rapidfuzz: ~150 MB)
    output_bytes: int = 65536  # largest result kept; stdout/stderr go to /dev/null
    # no new processes may be started by the grader (fork/clone/exec refused); threads may


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run here; the message says why and what to install."""


class _SandboxFailure(Exception):
    """The sandbox itself (not the grader) failed: it is killed and restarted for the next call."""


class _Sandbox:
    """One warm zygote process (sandboxed or not), used by one thread at a time."""

    def __init__(self, source: str, limits: SandboxLimits, unsandboxed: bool) -> None:
        self.limits = limits
        names = [n for n in ALLOWED_PACKAGES if re.search(rf"\b{n}\b", source)]
        self.init = {
            "source": source,
            "limits": asdict(limits),
            "preload": names,
            "seccomp": seccomp_program(),
            # its own user namespace counts a sandbox's tasks apart (and run as root, its uid is its own);
            # without one they would be counted with every thread of the service's user
            "tasks": None if unsandboxed else _TASKS,
        }
        self.unsandboxed = unsandboxed
        self.proc: subprocess.Popen[bytes] | None = None
        self.uid: int | None = None  # the uid claimed for the running sandbox (run as root)
        self.depth = 0  # the zygote is the launched process (0), or bwrap's child (1)
        self.dirs: list[str] = []

    def _command(self) -> list[str]:
        if not self.unsandboxed:
            self.depth = 1
            if os.geteuid() != 0:
                return bwrap_command(None)
            self.uid = claim_uid()
            return bwrap_command(self.uid)
        # trusted operator opt-in: the same zygote and limits, without namespaces or a private filesystem
        self.dirs = [tempfile.mkdtemp(prefix="grader-"), tempfile.mkdtemp(prefix="grader-packages-")]
        return unsandboxed_command(*self.dirs)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**SANDBOX_ENV, **_HOST_ENV} if self.unsandboxed else _HOST_ENV,
            cwd="/",  # bwrap passes PWD on: not our working directory
            start_new_session=True,  # one process group of its own, killed whole as a last resort
        )
        assert self.proc.stdin is not None and self.proc.stderr is not None
        os.set_blocking(self.proc.stdin.fileno(), False)  # see write_all
        os.set_blocking(self.proc.stderr.fileno(), False)  # read only after its end, for bwrap's errors
        reply = self._exchange(self.init, time.monotonic() + _STARTUP_S)
        if not reply.get("ready"):
            raise _SandboxFailure(f"the sandbox did not start: {reply}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _exchange(self, message: Any, deadline: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        try:
            write_all(self.proc.stdin.fileno(), encode_message(message), deadline)
        except BrokenPipeError as exc:
            raise _SandboxFailure("the sandbox exited") from exc
        fd = self.proc.stdout.fileno()
        size = int.from_bytes(read_exact(fd, 4, deadline), "big")
        if size > self.limits.output_bytes + 4096:
            raise _SandboxFailure(f"the sandbox answered {size} bytes")
        reply = json.loads(read_exact(fd, size, deadline))
        if not isinstance(reply, dict):
            raise _SandboxFailure("the sandbox answered garbage")
        return reply

    def grade(self, sample: Mapping[str, Any], item: Mapping[str, Any]) -> GradeResult:
        """The call's result; never an exception: whatever fails here ends the sandbox (restarted by the next
        call) and is this call's python_grader_server_error."""
        started = time.monotonic()
        try:
            if not self.alive:
                self.kill()
                self.start()
            deadline = time.monotonic() + self.limits.wall_s + _MARGIN_S  # after a restart: the call's own
            reply = self._exchange({"sample": sample, "item": item}, deadline)
            return _to_result(reply, time.monotonic() - started)
        except Exception as exc:
            known = isinstance(exc, _SandboxFailure | OSError | EOFError)  # TimeoutError is an OSError
            details = (str(exc) if known else f"{type(exc).__name__}: {exc}")[:_DETAIL_CHARS] + self.kill()
            took = time.monotonic() - started
            return GradeResult.failed("python_grader_server_error", details, execution_time=took)

    def kill(self, *, graceful: bool = False) -> str:
        """Ends the whole sandbox; returns the tail of what it wrote on stderr (bwrap's errors)."""
        proc, self.proc = self.proc, None
        tail = ""
        if proc is not None:
            assert proc.stdin is not None and proc.stderr is not None
            if graceful:  # an idle zygote exits at the end of its input, its namespace with it
                with contextlib.suppress(OSError):
                    proc.stdin.close()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=2)
            if proc.poll() is None:
                terminate(proc, self.depth)
            with contextlib.suppress(OSError):
                tail = os.read(proc.stderr.fileno(), 4096).decode(errors="replace").strip()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                with contextlib.suppress(OSError):
                    pipe.close()  # type: ignore[union-attr]
        if self.uid is not None:  # every process of the sandbox has ended
            release_uid(self.uid)
            self.uid = None
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)
        return f": {tail}" if tail else ""


def _to_result(reply: dict[str, Any], elapsed: float) -> GradeResult:
    """The zygote's reply (one of value/bad/error/timeout/server_error) as a grade."""
    took = float(reply.get("elapsed", elapsed))
    if "value" in reply and (reward := clip_reward(reply["value"])) is not None:
        return GradeResult(reward, scores={"python": reply["value"]}, execution_time=took)
    if "value" in reply or "bad" in reply:  # NaN and infinities come as numbers, the rest as a repr
        shown = repr(reply["value"]) if "value" in reply else reply["bad"]
        flag, details = "python_grader_runtime_error", f"grade returned {shown}, not a finite number"
    elif "timeout" in reply:
        flag, details = "unresponsive_reward_error", reply["timeout"]
    elif "error" in reply:
        flag, details = "python_grader_runtime_error", reply["error"]
    else:
        flag, details = "python_grader_server_error", reply.get("server_error", repr(reply))
    return GradeResult.failed(flag, str(details), execution_time=took)


class PythonGraderPool:
    """`size` warm sandboxes grading one source; `run` grades a batch concurrently, results in order."""

    def __init__(
        self,
        source: str,
        *,
        size: int = 2,
        limits: SandboxLimits = SandboxLimits(),  # frozen: one shared default is safe
        unsandboxed: bool = False,
    ) -> None:
        if size < 1:
            raise ValueError("a pool needs at least one sandbox")
        if not unsandboxed and (reason := sandbox_unavailable_reason()) is not None:
            raise SandboxUnavailable(reason)
        try:
            self._members = [_Sandbox(source, limits, unsandboxed) for _ in range(size)]
        except ValueError as exc:  # no seccomp filter for this machine
            raise SandboxUnavailable(str(exc)) from exc
        self._free: queue.SimpleQueue[_Sandbox] = queue.SimpleQueue()
        for member in self._members:
            self._free.put(member)
        # sandboxes are started on these long-lived threads: bwrap's --die-with-parent follows the thread
        # that started it, so a sandbox started on a short-lived thread would die with that thread
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="python-grader")
        self._closed = False
        try:
            for future in [self._executor.submit(member.start) for member in self._members]:
                future.result()
        except Exception as exc:
            self.close()
            raise SandboxUnavailable(f"the Python grader sandbox did not start: {exc}") from exc

    def run(self, calls: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> list[GradeResult]:
        """One result per call, in order: a call's failure is that call's result, never an exception
        (RuntimeError only for a closed pool)."""
        if self._closed:
            raise RuntimeError("the grader pool is closed")
        futures = [self._executor.submit(self._grade, sample, item) for sample, item in calls]
        return [future.result() for future in futures]

    def _grade(self, sample: Mapping[str, Any], item: Mapping[str, Any]) -> GradeResult:
        member = self._free.get()
        try:
            if self._closed:  # a run racing close(): never restart a retired sandbox
                raise RuntimeError("the grader pool is closed")
            return member.grade(sample, item)
        finally:
            self._free.put(member)

    def close(self) -> None:
        """Ends every sandbox once its current call is done, on the threads that started them: a thread's
        end is a SIGKILL to the bwrap it started, which would orphan the zygote instead of reaping it."""
        if self._closed:
            return
        self._closed = True
        retiring = [self._executor.submit(self._retire) for _ in self._members]
        for future in retiring:
            self._free.put(future.result())  # back, ended: a racing run() finds the pool closed
        self._executor.shutdown(wait=True)

    def _retire(self) -> "_Sandbox":
        member = self._free.get()
        member.kill(graceful=True)
        return member

    def __enter__(self) -> "PythonGraderPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_reason_lock = threading.Lock()
_FAILURE_KEPT_S = 60.0  # a failed probe (a start that timed out on a loaded machine, say) is retried after
_probed: tuple[float, str | None] | None = None  # the last probe: when, and its answer


def _probe() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"Python graders need Linux (bubblewrap, seccomp); this is {sys.platform}"
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed: apt-get install bubblewrap"
    if os.uname().machine not in SUPPORTED:
        return f"no seccomp filter for {os.uname().machine} (supported: {', '.join(SUPPORTED)})"
    probe = _Sandbox("def grade(sample, item):\n    return 0.5\n", SandboxLimits(), unsandboxed=False)
    try:
        probe.start()
        result = probe.grade({"output_text": ""}, {})
    except Exception as exc:
        hint = " (unprivileged user namespaces disabled? see the sysctls kernel.unprivileged_userns_clone"
        hint += " and kernel.apparmor_restrict_unprivileged_userns)"
        return f"bubblewrap cannot start a sandbox here{hint}: {exc}{probe.kill()}"
    finally:
        probe.kill()
    if result.reward != 0.5:
        return f"the sandbox starts but cannot grade: {result.errors}"
    return None


def sandbox_unavailable_reason() -> str | None:
    """None when the sandbox works here (a probe grades in it; a success is kept for good), else why not (kept
    for _FAILURE_KEPT_S, then probed again)."""
    global _probed
    with _reason_lock:
        if _probed is None or (_probed[1] is not None and time.monotonic() - _probed[0] >= _FAILURE_KEPT_S):
            _probed = (time.monotonic(), _probe())
        return _probed[1]
