"""Hostile Python graders: each one ends with reward 0 and the right flag in bounded time, sees and changes
nothing of the host, and the pool grades normally right after.

One pool serves the whole catalogue: its grader dispatches on item["case"], and the host paths, port and
secret each case aims at travel in the item.
"""

import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from grading.result import GradeResult
from grading.sandbox import PythonGraderPool, SandboxLimits, sandbox_unavailable_reason

if shutil.which("bwrap") is None and not os.environ.get("CI"):
    pytest.skip("bubblewrap (bwrap) is not installed: apt-get install bubblewrap", allow_module_level=True)

LIMITS = SandboxLimits(cpu_s=1, wall_s=2, memory_mb=256)
BOUND_S = LIMITS.wall_s + 3  # every call, hostile or not, is answered within this
SECRET = "correct-horse-battery-staple"
SOURCE = """
import ctypes, os, resource, signal, stat, struct, subprocess, sys, time

def grade(sample, item):
    return globals()["case_" + item["case"]](item)

def case_ok(item):
    return 1.0

def case_loop(item):
    while True:
        pass

def case_sleep(item):
    time.sleep(60)

def case_bytearray(item):
    return len(bytearray(10**10))

def case_growing_list(item):
    chunks = []
    while True:
        chunks.append(b" " * 10**6)

def case_fork(item):
    if os.fork() == 0:
        os._exit(0)
    return 1.0

def case_subprocess(item):
    subprocess.run(["/bin/sh", "-c", f"touch {item['marker']}"], check=True)
    return 1.0

def case_system(item):
    if os.system(f"touch {item['marker']}") != 0:
        raise OSError("system() failed")
    return 1.0

def case_connect(item):
    import socket
    socket.create_connection(("127.0.0.1", item["port"]), timeout=1).close()
    return 1.0

def case_interfaces(item):
    lines = open("/proc/net/dev").read().splitlines()[2:]
    raise ValueError(sorted(line.split(":")[0].strip() for line in lines))

def case_read(item):
    return len(open(item["path"]).read())

def case_listdir(item):
    return len(os.listdir(item["path"]))

def case_root_listing(item):
    raise ValueError(sorted(os.listdir("/")))

def case_environment(item):
    texts, reads = [repr(dict(os.environ))], []
    for path in ("/proc/self/environ", "/proc/1/environ", "/proc/2/environ"):
        try:
            texts.append(open(path, "rb").read().decode(errors="replace"))
            reads.append("read")
        except OSError as exc:
            reads.append(type(exc).__name__)
    seen = any(item["name"] in text or item["secret"] in text for text in texts)
    raise ValueError(f"seen={seen} reads={reads} keys={sorted(os.environ)}")

def case_write(item):
    with open(item["path"], "w") as file:
        file.write("escaped")
    return 1.0

def case_print(item):
    line = "x" * 999_999
    for _ in range(100):
        print(line)
        print(line, file=sys.stderr)
    return 1.0

def case_kill_zygote(item):
    os.kill(os.getppid(), signal.SIGKILL)
    return 1.0

def case_interrupt_init(item):
    os.kill(1, signal.SIGINT)  # the zygote is the pid namespace's init: SIGINT would be its KeyboardInterrupt
    return 1.0

SYSCALLS = {"x86_64": {"rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297},
            "aarch64": {"rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240}}

def queue_signal(name, *targets):
    libc = ctypes.CDLL(None, use_errno=True)
    info = ctypes.create_string_buffer(128)  # siginfo_t: si_signo, si_errno, si_code SI_QUEUE (-1)
    struct.pack_into("iii", info, 0, signal.SIGINT, 0, -1)
    number = SYSCALLS[os.uname().machine][name]
    args = [ctypes.c_long(target) for target in targets]
    if libc.syscall(ctypes.c_long(number), *args, ctypes.c_long(signal.SIGINT), info) != 0:
        raise OSError(ctypes.get_errno(), f"{name}: {os.strerror(ctypes.get_errno())}")
    return 1.0

def case_sigqueue_zygote(item):
    return queue_signal("rt_sigqueueinfo", os.getppid())

def case_tgsigqueue_zygote(item):
    return queue_signal("rt_tgsigqueueinfo", os.getppid(), os.getppid())

def case_prlimit_zygote(item):
    resource.prlimit(os.getppid(), resource.RLIMIT_NOFILE, (3, 3))  # no pipe for its next call
    return 1.0

def case_forge(item):
    # the result pipe is the one pipe a call holds: write a result grade_reply never gives, then leave
    for fd in range(3, 64):
        try:
            is_pipe = stat.S_ISFIFO(os.fstat(fd).st_mode)
        except OSError:
            continue
        if is_pipe:
            os.write(fd, item["result"].encode())
            os._exit(0)
    return 1.0

def case_segfault(item):
    return len(ctypes.string_at(0))

def case_raise(item):
    raise KeyError("no such answer")

def case_string(item):
    return "1.0"

def case_nan(item):
    return float("nan")

def case_inf(item):
    return float("inf")

def case_true(item):
    return True

def case_numpy(item):
    import numpy
    return float(numpy.mean(numpy.array([0.25, 0.75])))

def case_rapidfuzz(item):
    from rapidfuzz import fuzz
    return fuzz.ratio("kitten", "sitting") / 100

COUNT = 0

def case_counter(item):
    global COUNT
    COUNT += 1
    leftover = os.path.exists("/tmp/left-behind")
    open("/tmp/left-behind", "w").write("state")
    return COUNT / 10 + (0.5 if leftover else 0.0)
"""


@pytest.fixture(scope="module")
def pool() -> Iterator[PythonGraderPool]:
    assert sandbox_unavailable_reason() is None
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPPO_SECRET_TEST", SECRET)  # the service's environment while it starts sandboxes
        with PythonGraderPool(SOURCE, size=2, limits=LIMITS) as graders:
            yield graders


def hostile(pool: PythonGraderPool, case: str, **item: Any) -> GradeResult:
    """Grades one hostile case in bounded time, then checks the pool still grades normally."""
    started = time.monotonic()
    [result] = pool.run([({"output_text": "", "output_json": None}, {"case": case, **item})])
    assert time.monotonic() - started < BOUND_S, (case, result)
    assert [r.reward for r in pool.run([({"output_text": ""}, {"case": "ok"})] * 4)] == [1.0] * 4
    return result


def failed(result: GradeResult, flag: str) -> str:
    assert result.reward == 0.0 and list(result.errors) == [flag], result
    return result.errors[flag]


def test_infinite_loop_is_stopped(pool: PythonGraderPool) -> None:
    details = failed(hostile(pool, "loop"), "unresponsive_reward_error")
    assert "CPU time" in details or "wall clock" in details  # whichever comes first on a loaded machine


def test_a_grader_that_never_returns_is_killed_at_the_wall_limit(pool: PythonGraderPool) -> None:
    assert "wall clock" in failed(hostile(pool, "sleep"), "unresponsive_reward_error")


@pytest.mark.parametrize("case", ["bytearray", "growing_list"])
def test_memory_bomb_is_a_memory_error(pool: PythonGraderPool, case: str) -> None:
    assert failed(hostile(pool, case), "python_grader_runtime_error").startswith("MemoryError")


@pytest.mark.parametrize("case", ["fork", "subprocess", "system"])
def test_no_process_can_be_started(pool: PythonGraderPool, case: str, tmp_path: Path) -> None:
    marker = tmp_path / "spawned"
    details = failed(hostile(pool, case, marker=str(marker)), "python_grader_runtime_error")
    assert details.startswith(("PermissionError", "OSError")), details
    assert not marker.exists()


def test_no_network_not_even_the_hosts_loopback(pool: PythonGraderPool) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        result = hostile(pool, "connect", port=server.getsockname()[1])
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody ever connected
    assert failed(result, "python_grader_runtime_error").startswith(("PermissionError", "OSError"))
    # and below the refused socket() a network namespace of its own: a loopback, no interface of ours
    assert failed(hostile(pool, "interfaces"), "python_grader_runtime_error").startswith("ValueError: ['lo']")


def test_the_data_directory_and_the_checkout_are_invisible(pool: PythonGraderPool, tmp_path: Path) -> None:
    data_dir = tmp_path / ".sppo"
    data_dir.mkdir()
    (data_dir / "secret.txt").write_text(SECRET)
    for case, path in [
        ("read", data_dir / "secret.txt"),
        ("listdir", data_dir),
        ("listdir", Path("/work")),
        ("listdir", Path("/root")),
        ("listdir", Path.cwd()),
        ("read", Path("/etc/passwd")),
    ]:
        details = failed(hostile(pool, case, path=str(path)), "python_grader_runtime_error")
        assert details.startswith("FileNotFoundError") and SECRET not in details, (path, details)
    listing = failed(hostile(pool, "root_listing"), "python_grader_runtime_error")
    assert listing.startswith("ValueError: ['dev', 'lib', 'lib64', 'opt', 'proc', 'tmp', 'usr']"), listing


def test_the_services_environment_is_not_visible(pool: PythonGraderPool) -> None:
    assert os.environ["SPPO_SECRET_TEST"] == SECRET  # in our environment since before the pool started
    details = failed(
        hostile(pool, "environment", name="SPPO_SECRET_TEST", secret=SECRET), "python_grader_runtime_error"
    )
    assert details.startswith("ValueError: seen=False reads=["), details
    assert "keys=['HOME', 'LANG', 'LD_LIBRARY_PATH', 'OMP_NUM_THREADS'" in details  # only the sandbox's


def test_nothing_can_be_written_outside_the_sandbox(pool: PythonGraderPool, tmp_path: Path) -> None:
    for path in [tmp_path / "escaped.txt", Path("/usr/escaped.txt"), Path("/escaped.txt")]:
        details = failed(hostile(pool, "write", path=str(path)), "python_grader_runtime_error")
        assert details.startswith(("FileNotFoundError", "OSError", "PermissionError")), details
        assert not path.exists()


def test_a_hundred_megabytes_of_output_costs_nothing(pool: PythonGraderPool) -> None:
    result = hostile(pool, "print")
    assert result.reward == 1.0 and result.ok


@pytest.mark.parametrize(
    "case", ["kill_zygote", "interrupt_init", "sigqueue_zygote", "tgsigqueue_zygote", "prlimit_zygote"]
)
def test_the_zygote_cannot_be_signalled_or_limited(pool: PythonGraderPool, case: str) -> None:
    assert failed(hostile(pool, case), "python_grader_runtime_error").startswith("PermissionError")


# around Python's recursion limit: the zygote could read some of these, this side (frames deeper) not all
DEPTHS = [*range(980, 1000), 5000]


@pytest.mark.parametrize(
    "result",
    [
        *('{"error": ' + "[" * depth + "]" * depth + "}" for depth in DEPTHS),
        '{"error": {' + ", ".join(f'"k{i}": {i}' for i in range(4000)) + "}}",  # ~50 kB of object
        '{"error": "' + "x" * 60_000 + '"}',
        '{"value": "1.0"}',
        '{"value": true}',
        '{"value": 1' + "0" * 4000 + "}",
        '{"timeout": "forged"}',
        '{"value": 1.0, "error": "both"}',
    ],
)
def test_a_forged_result_is_a_runtime_error(pool: PythonGraderPool, result: str) -> None:
    """A grader holds its result pipe: whatever it writes there, the call is an error, never the host's."""
    details = failed(hostile(pool, "forge", result=result), "python_grader_runtime_error")
    assert details == "grade returned an unreadable result"


def test_a_crashing_grader_is_a_runtime_error(pool: PythonGraderPool) -> None:
    assert "SIGSEGV" in failed(hostile(pool, "segfault"), "python_grader_runtime_error")


@pytest.mark.parametrize(
    ("case", "details"),
    [
        ("raise", "KeyError: 'no such answer' (line "),
        ("string", "grade returned '1.0', not a finite number"),
        ("nan", "grade returned nan, not a finite number"),
        ("inf", "grade returned inf, not a finite number"),
        ("true", "grade returned True, not a finite number"),
    ],
)
def test_bad_results_are_runtime_errors(pool: PythonGraderPool, case: str, details: str) -> None:
    assert failed(hostile(pool, case), "python_grader_runtime_error").startswith(details)


def test_allowed_packages_import(pool: PythonGraderPool) -> None:
    assert hostile(pool, "numpy").reward == 0.5
    assert hostile(pool, "rapidfuzz").reward == pytest.approx(0.6153846)


def test_no_state_survives_a_call(pool: PythonGraderPool) -> None:
    """A global counter stays 1 and a file left in /tmp is gone for the next call."""
    results = pool.run([({"output_text": ""}, {"case": "counter"})] * 8)
    assert [r.reward for r in results] == [0.1] * 8
