"""The zygote of a Python-grader sandbox: runs INSIDE it (`python -I -S`); stdlib only, nothing of ours.

It reads length-prefixed JSON requests on stdin and answers on stdout, but never runs user code itself:
each call is a fresh fork that sets its limits and a seccomp filter, then compiles the user's source,
calls `grade(sample, item)` and writes one small JSON result on a pipe of its own. The zygote kills it at
the wall limit, keeps at most `output_bytes` of its result, reaps it and wipes the scratch directory. User
code holds that pipe too: only a result a call can give (a number, a short text) ever goes to the host.

    python -I -S sandbox_child.py SCRATCH_DIR [PACKAGES_DIR]
"""

import builtins
import ctypes
import gc
import json
import math
import os
import resource
import select
import shutil
import signal
import struct
import sys
import time
import traceback
from typing import Any

MAX_REQUEST_BYTES = 256 * 1024 * 1024  # the host is trusted; this only stops a corrupt length prefix
FILE_BYTES = 1024 * 1024  # RLIMIT_FSIZE: the largest file a grader may write in its scratch directory
OPEN_FILES = 64
TEXT_CHARS = 300  # how much of a repr or an exception message is kept
ERROR_CHARS = 1000  # the longest text a result holds (an error's type and function names are the user's too)
STDLIB_PRELOAD = ("math", "re", "string", "statistics", "collections", "itertools", "functools", "difflib")
UNREADABLE = {"error": "grade returned an unreadable result"}  # what a forged or broken result gives

SET_UP, SETUP_FAILED = b"\x01", b"\x00"  # the first byte a call writes on its result pipe


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _prctl(option: int, arg: int, arg2: int = 0) -> None:
    libc = ctypes.CDLL(None, use_errno=True)  # loaded by the zygote's start, so forked calls find it mapped
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(option, arg, arg2, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def install_seccomp(program: bytes, pid_slots: list[int]) -> None:
    """Applies the host's filter (grading.sandbox_seccomp) to this process: its own pid goes into the
    instructions at `pid_slots`, the signal rules (k is the last 4 bytes of each 8-byte instruction)."""
    patched = bytearray(program)
    for slot in pid_slots:
        struct.pack_into("I", patched, slot * 8 + 4, os.getpid())
    buffer = ctypes.create_string_buffer(bytes(patched))
    fprog = _Fprog(len(patched) // 8, ctypes.addressof(buffer))
    _prctl(38, 1)  # PR_SET_NO_NEW_PRIVS: needed for an unprivileged filter; no setuid gain ever again
    _prctl(22, 2, ctypes.addressof(fprog))  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER


# ---- framing: a 4-byte big-endian length, then UTF-8 JSON (the host uses the same two functions)


def encode_message(obj: Any) -> bytes:
    body = json.dumps(obj, default=str).encode()
    return len(body).to_bytes(4, "big") + body


def _read_message(fd: int) -> Any:
    def exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            if not (chunk := os.read(fd, min(size - len(data), 1 << 20))):
                raise EOFError("the host closed the pipe")
            data += chunk
        return data

    size = int.from_bytes(exactly(4), "big")
    if size > MAX_REQUEST_BYTES:
        raise ValueError(f"request of {size} bytes")
    return json.loads(exactly(size))


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


# ---- one call, in its own forked process


def _text(value: Any, render: Any = repr) -> str:
    """A bounded rendering of user data (its __repr__/__str__ is user code and may fail)."""
    try:
        text = str(render(value))
    except BaseException:  # any failure of user code just gives a placeholder
        text = f"<unprintable {type(value).__name__}>"
    return text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 3] + "..."


def error_text(exc: BaseException) -> str:
    """`ExcType: message (line N, in func)`: the last traceback line that is in the grader's source."""
    where = ""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<grader>"]
    if isinstance(exc, SyntaxError) and exc.filename == "<grader>":
        where = f" (line {exc.lineno})"
    elif frames:
        where = f" (line {frames[-1].lineno}, in {frames[-1].name})"
    message = _text(exc, str)
    text = f"{type(exc).__name__}: {message}{where}" if message else f"{type(exc).__name__}{where}"
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."


def grade_reply(source: str, sample: Any, item: Any) -> dict[str, Any]:
    """Runs the user's grader; a number comes back as a float (NaN/inf included), anything else as repr."""
    try:
        namespace: dict[str, Any] = {"__name__": "grader", "__builtins__": builtins}
        exec(compile(source, "<grader>", "exec"), namespace)
        grade = namespace.get("grade")
        if not callable(grade):
            return {"error": "NameError: the grader defines no function grade(sample, item)"}
        value = grade(sample, item)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return {"bad": _text(value)}
        return {"value": float(value)}
    except BaseException as exc:  # SystemExit and KeyboardInterrupt are user errors too
        try:
            return {"error": error_text(exc)}
        except BaseException:  # e.g. MemoryError while formatting
            return {"error": type(exc).__name__}


def _limit_self(state: dict[str, Any], result_fd: int) -> None:
    """In the forked call, before any user code: its own output, files, limits and seccomp filter."""
    limits, devnull = state["limits"], state["devnull"]
    for fd in (0, 1, 2):  # print() of any size goes nowhere and costs nobody anything
        os.dup2(devnull, fd)
    os.closerange(3, result_fd)  # the zygote's protocol pipes among them
    os.closerange(result_fd + 1, 1 << 16)
    cpu = max(1, math.ceil(limits["cpu_s"]))
    memory = int(limits["memory_mb"]) * 1024 * 1024
    for which, value in (
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),  # SIGXCPU at the limit, SIGKILL a second later
        (resource.RLIMIT_AS, (memory, memory)),  # an allocation past it raises MemoryError
        (resource.RLIMIT_FSIZE, (FILE_BYTES, FILE_BYTES)),
        (resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES)),
        (resource.RLIMIT_CORE, (0, 0)),
    ):
        resource.setrlimit(which, value)
    if state["tasks"] is not None:  # the zygote, this call and its threads (seccomp refuses new processes)
        resource.setrlimit(resource.RLIMIT_NPROC, (state["tasks"], state["tasks"]))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails with EFBIG instead
    install_seccomp(*state["seccomp"])


def _run_child(request: dict[str, Any], state: dict[str, Any], result_fd: int) -> None:
    """The forked process: never returns into the zygote's loop. Its first result byte says whether its
    limits were set (SET_UP) or not (SETUP_FAILED + why), written before user code can touch the pipe."""
    try:
        try:
            _limit_self(state, result_fd)
        except BaseException as exc:  # without its limits no user code may run
            _write_all(result_fd, SETUP_FAILED + f"{type(exc).__name__}: {exc}".encode()[:TEXT_CHARS])
            os._exit(0)
        _write_all(result_fd, SET_UP)
        reply = grade_reply(state["source"], request.get("sample"), request.get("item"))
        try:
            data = json.dumps(reply).encode()
        except BaseException:
            data = b'{"error": "the result could not be encoded"}'
        _write_all(result_fd, data)
    finally:
        os._exit(0)


# ---- the zygote


def _collect(fd: int, deadline: float, limit: int) -> tuple[bytes, bool]:
    """What the call wrote until it exited (`limit` + 1 bytes at most), and whether its time ran out."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b"".join(chunks), True
        if not select.select([fd], [], [], remaining)[0]:
            continue
        data = os.read(fd, 65536)
        if not data:
            break
        chunks.append(data)
        size += len(data)
    return b"".join(chunks), False


def _verdict(
    data: bytes, timed_out: bool, status: int, cpu_s: float, limits: dict[str, Any]
) -> dict[str, Any]:
    """The reply for one call: its own result when it wrote one, else why it has none."""
    if timed_out:
        return {"timeout": f"grade did not return within {limits['wall_s']:g} s (wall clock)"}
    if not data.startswith(SET_UP):
        why = data[1:].decode(errors="replace") if data else "the call died before its limits were set"
        return {"server_error": why}
    if len(data) - 1 > limits["output_bytes"]:
        return {"error": f"grade's result is larger than {limits['output_bytes']} bytes"}
    if len(data) > 1:
        try:
            return _checked(json.loads(data[1:]))
        except (ValueError, RecursionError):  # not JSON, or nested deeper than anyone parses
            return dict(UNREADABLE)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL)
    if killed and cpu_s >= max(1, math.ceil(limits["cpu_s"])) - 0.05:
        return {"timeout": f"grade used more than {limits['cpu_s']:g} s of CPU time"}
    if os.WIFSIGNALED(status):
        return {"error": f"the grader process died: killed by {signal.Signals(os.WTERMSIG(status)).name}"}
    code = os.waitstatus_to_exitcode(status)
    return {"error": f"the grader process exited with status {code} and no result"}


def _checked(result: Any) -> dict[str, Any]:
    """A call's result when it is one grade_reply gives: {"value": a float} (NaN and infinities too; JSON's
    types are exact, a bool is no float) or {"bad"|"error": a text of at most ERROR_CHARS}. Anything else
    was forged on the pipe by the grader."""
    key, value = next(iter(result.items())) if isinstance(result, dict) and len(result) == 1 else ("", None)
    if key == "value" and (type(value) is float or (type(value) is int and abs(value) <= sys.float_info.max)):
        return {"value": float(value)}
    if key in ("bad", "error") and isinstance(value, str) and len(value) <= ERROR_CHARS:
        return {key: value}
    return dict(UNREADABLE)


def handle(request: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """One call in a fresh process, killed at the wall-time limit; the scratch directory is wiped after."""
    limits = state["limits"]
    started = time.monotonic()
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        return {"server_error": f"fork failed: {exc}", "elapsed": 0.0}
    if pid == 0:  # the call: whatever happens, it never comes back to this loop
        try:
            os.close(read_fd)
            _run_child(request, state, write_fd)
        finally:
            os._exit(70)
    os.close(write_fd)
    try:
        data, timed_out = _collect(read_fd, started + limits["wall_s"], limits["output_bytes"] + 1)
    finally:
        os.close(read_fd)
        _await_exit(pid, started + limits["wall_s"])  # its own exit status, when it ends in time
        os.kill(pid, signal.SIGKILL)  # a no-op on a child that exited: it stays a zombie until reaped
        _, status, usage = os.wait4(pid, 0)
    reply = _verdict(data, timed_out, status, usage.ru_utime + usage.ru_stime, limits)
    reply["elapsed"] = time.monotonic() - started
    _wipe(state["scratch"])
    return reply


def _await_exit(pid: int, deadline: float) -> None:
    """A call that closed its result pipe is usually exiting: wait for that, at most until the deadline."""
    try:
        pidfd = os.pidfd_open(pid)  # Linux 5.3+; without it the call is killed at once
    except (AttributeError, OSError):
        return
    try:
        select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))
    finally:
        os.close(pidfd)


def _wipe(scratch: str) -> None:
    """Files a call left in the scratch directory would be state shared with the next call."""
    for entry in os.scandir(scratch):
        try:
            if entry.is_dir(follow_symlinks=False):
                os.chmod(entry.path, 0o700)
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:
            pass


def _start(argv: list[str]) -> tuple[int, int, dict[str, Any]]:
    """Moves the protocol pipes off 0/1, reads the init message, preloads, and says ready."""
    in_fd, out_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    scratch = argv[1]
    if len(argv) > 2:
        sys.path.append(argv[2])  # the allowed third-party packages, read-only
    os.chdir(scratch)
    init = _read_message(in_fd)
    preloaded = []
    for name in [*STDLIB_PRELOAD, *init.get("preload", [])]:
        try:  # imported once here, every call finds them loaded (sympy alone takes ~1 s to import)
            __import__(name)
            preloaded.append(name)
        except Exception:  # a missing package fails in the call that imports it
            continue
    _prctl(4, 0)  # PR_SET_DUMPABLE 0: no call can open this process's memory through /proc
    gc.freeze()  # the preloaded objects are never scanned again, so forked calls share their pages
    state = {"source": init["source"], "limits": init["limits"], "devnull": devnull, "scratch": scratch}
    state["tasks"] = init.get("tasks")  # RLIMIT_NPROC of a call, or None to keep the inherited one
    state["seccomp"] = (bytes.fromhex(init["seccomp"]["program"]), init["seccomp"]["pid_slots"])
    _write_all(out_fd, encode_message({"ready": True, "preloaded": preloaded}))
    return in_fd, out_fd, state


def main(argv: list[str]) -> None:
    in_fd, out_fd, state = _start(argv)
    while True:
        try:
            request = _read_message(in_fd)
        except EOFError:
            return
        _write_all(out_fd, encode_message(handle(request, state)))


if __name__ == "__main__":
    main(sys.argv)
