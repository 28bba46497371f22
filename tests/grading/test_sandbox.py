"""PythonGraderPool's normal behaviour: rewards, order under concurrency, threads, recovery of a sandbox
whose zygote died or stopped answering or whose reply broke this side, uids of its own, and the same zygote
without bubblewrap (`unsandboxed=True`)."""

import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from grading import sandbox, sandbox_child, sandbox_launch
from grading.sandbox import PythonGraderPool, SandboxLimits, SandboxUnavailable, sandbox_unavailable_reason
from grading.sandbox_seccomp import seccomp_program

if shutil.which("bwrap") is None and not os.environ.get("CI"):
    pytest.skip("bubblewrap (bwrap) is not installed: apt-get install bubblewrap", allow_module_level=True)

SOURCE = """
import time

def grade(sample, item):
    time.sleep(item.get("delay", 0))
    if "answer" in item:
        return 1.0 if sample["output_text"] == item["answer"] else 0.0
    return item["value"]
"""
LIMITS = SandboxLimits(cpu_s=1, wall_s=1)


def call(**item: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    return {"output_text": item.pop("text", ""), "output_json": None}, item


@pytest.fixture(scope="module")
def pool() -> Iterator[PythonGraderPool]:
    with PythonGraderPool(SOURCE, size=2, limits=LIMITS) as graders:
        yield graders


def zygote_pid(pool: PythonGraderPool, member: int = 0) -> int:
    """The zygote: bwrap's child (pid 1 of the sandbox's pid namespace)."""
    proc = pool._members[member].proc
    assert proc is not None
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == proc.pid:
                return int(entry.name)
    raise AssertionError("no zygote under the sandbox's bwrap")


def test_the_sandbox_works_here() -> None:
    assert sandbox_unavailable_reason() is None


def test_without_bubblewrap_the_reason_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    assert sandbox._probe() == "bubblewrap (bwrap) is not installed: apt-get install bubblewrap"
    monkeypatch.setattr(sandbox, "sandbox_unavailable_reason", lambda: "no sandbox here")
    with pytest.raises(SandboxUnavailable, match="no sandbox here"):
        PythonGraderPool(SOURCE)


def test_the_seccomp_filter_exists_for_both_architectures() -> None:
    for machine in ("x86_64", "aarch64"):
        filter_ = seccomp_program(machine)
        # kill, tkill, tgkill, rt_sigqueueinfo, rt_tgsigqueueinfo, prlimit64: for the call's own pid only
        assert len(bytes.fromhex(filter_["program"])) % 8 == 0 and len(filter_["pid_slots"]) == 6
    with pytest.raises(ValueError, match="no seccomp filter for riscv64"):
        seccomp_program("riscv64")


def test_partial_credit_and_clipping(pool: PythonGraderPool) -> None:
    values = [0.25, 0.5, 0, 1, 1.5, -2.0, 7]
    results = pool.run([call(value=v) for v in values])
    assert [r.reward for r in results] == [0.25, 0.5, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert [r.scores["python"] for r in results] == values
    assert all(r.ok and 0 < r.execution_time < LIMITS.wall_s for r in results)


def test_exact_match_grader_sees_sample_and_item(pool: PythonGraderPool) -> None:
    results = pool.run([call(text="42", answer="42"), call(text="41", answer="42")])
    assert [r.reward for r in results] == [1.0, 0.0]


def test_results_keep_their_order_under_concurrency(pool: PythonGraderPool) -> None:
    """Early calls take longest, so the two sandboxes finish them out of order."""
    calls = [call(value=i / 64, delay=(63 - i) / 6400) for i in range(64)]
    assert [r.reward for r in pool.run(calls)] == [i / 64 for i in range(64)]


def test_concurrent_runs_from_several_threads(pool: PythonGraderPool) -> None:
    results: dict[int, list[float]] = {}

    def batch(offset: int) -> None:
        results[offset] = [r.reward for r in pool.run([call(value=(offset + i) / 100) for i in range(20)])]

    threads = [threading.Thread(target=batch, args=(offset,)) for offset in (0, 30, 60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {offset: [(offset + i) / 100 for i in range(20)] for offset in (0, 30, 60)}


def test_the_cpu_limit_counts_cpu_time() -> None:
    """A busy loop ends at cpu_s of CPU time (not at the generous wall limit), however loaded the machine."""
    with PythonGraderPool(
        "def grade(s, i):\n    while True:\n        pass\n", size=1, limits=SandboxLimits(cpu_s=1, wall_s=30)
    ) as pool:
        [looping] = pool.run([call()])
    assert looping.errors["unresponsive_reward_error"] == "grade used more than 1 s of CPU time"
    # RLIMIT_CPU counts user and system time of every thread of the call, which can run a few ms ahead of the
    # host's wall clock for the call (0.998 s was seen)
    assert 0.9 <= looping.execution_time < 30


def test_grader_errors_in_the_source() -> None:
    with PythonGraderPool("def grade(sample, item):\n    return (\n", size=1) as broken:
        [result] = broken.run([call(value=1)])
    assert result.errors["python_grader_runtime_error"].startswith("SyntaxError: ")
    with PythonGraderPool("def score(sample, item):\n    return 1\n", size=1) as unnamed:
        [result] = unnamed.run([call(value=1)])
    assert "defines no function grade" in result.errors["python_grader_runtime_error"]


def test_recovers_after_its_zygote_is_killed() -> None:
    with PythonGraderPool(SOURCE, size=1, limits=LIMITS) as pool:
        proc = pool._members[0].proc
        assert proc is not None
        os.kill(zygote_pid(pool), signal.SIGKILL)
        proc.wait(timeout=10)  # the sandbox is gone (bwrap exits with its zygote)
        assert [r.reward for r in pool.run([call(value=0.5)] * 3)] == [0.5] * 3  # restarted first


def test_a_zygote_dying_mid_call_is_a_server_error_then_the_pool_recovers() -> None:
    with PythonGraderPool(SOURCE, size=1, limits=LIMITS) as pool:
        os.kill(zygote_pid(pool), signal.SIGKILL)  # maybe before, maybe during the next call's exchange
        first = pool.run([call(value=0.5)])[0]
        assert first.reward == 0.5 or "python_grader_server_error" in first.errors, first
        assert [r.reward for r in pool.run([call(value=0.5)] * 3)] == [0.5] * 3


def test_a_zygote_that_stops_answering_is_killed_and_replaced() -> None:
    with PythonGraderPool(SOURCE, size=1, limits=LIMITS) as pool:
        os.kill(zygote_pid(pool), signal.SIGSTOP)
        started = time.monotonic()
        [stuck] = pool.run([call(value=0.5)])
        assert time.monotonic() - started < LIMITS.wall_s + 5
        assert "stopped answering" in stuck.errors["python_grader_server_error"], stuck
        assert [r.reward for r in pool.run([call(value=0.5)] * 2)] == [0.5] * 2


def test_unsandboxed_runs_the_same_zygote_and_limits() -> None:
    with PythonGraderPool(SOURCE, size=1, limits=LIMITS, unsandboxed=True) as pool:
        assert [r.reward for r in pool.run([call(value=0.75)])] == [0.75]
        [slow] = pool.run([call(value=0.5, delay=30)])
        assert "wall clock" in slow.errors["unresponsive_reward_error"]
    with PythonGraderPool("import os\ndef grade(s, i):\n    os.fork()\n", size=1, unsandboxed=True) as pool:
        [forked] = pool.run([call()])
    assert forked.errors["python_grader_runtime_error"].startswith("PermissionError")


def test_a_closed_pool_refuses_work() -> None:
    pool = PythonGraderPool(SOURCE, size=1, limits=LIMITS)
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.run([call(value=1)])


THREADS = """
import os, resource, threading

def grade(sample, item):
    barrier = threading.Barrier(item["threads"] + 1)  # every thread alive at once
    shares = []
    def work():
        barrier.wait(timeout=5)
        shares.append(1 / item["threads"])
    threads = [threading.Thread(target=work) for _ in range(item["threads"])]
    for thread in threads:
        thread.start()
    barrier.wait(timeout=5)
    for thread in threads:
        thread.join()
    resource.setrlimit(resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE))  # prlimit64(0)
    resource.prlimit(os.getpid(), resource.RLIMIT_NOFILE)
    try:
        if os.fork() == 0:
            os._exit(0)
    except PermissionError:
        return sum(shares)
    return 0.0
"""


@pytest.mark.parametrize("unsandboxed", [False, True])
def test_threads_start_and_join_but_no_process(unsandboxed: bool) -> None:
    with PythonGraderPool(THREADS, size=1, limits=LIMITS, unsandboxed=unsandboxed) as pool:
        results = pool.run([call(threads=1), call(threads=8)])
    assert [r.reward for r in results] == [1.0, 1.0], results


def test_a_restart_leaves_the_call_its_whole_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The call's deadline starts once its sandbox is up again, however long the restart took."""
    monkeypatch.setattr(sandbox, "_MARGIN_S", 0.5)
    with PythonGraderPool(SOURCE, size=1, limits=LIMITS) as pool:
        member = pool._members[0]
        start = member.start

        def slow_start() -> None:  # a restart as slow as on a loaded machine
            start()
            time.sleep(LIMITS.wall_s + 1)

        monkeypatch.setattr(member, "start", slow_start)
        os.kill(zygote_pid(pool), signal.SIGKILL)
        assert member.proc is not None
        member.proc.wait(timeout=10)
        [result] = pool.run([call(value=0.5, delay=0.2)])
    assert result.reward == 0.5, result


def test_an_unexpected_error_is_that_calls_server_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing raised while a call is graded leaves run(): the call is a server error; a new sandbox."""
    with PythonGraderPool(SOURCE, size=1, limits=LIMITS) as pool:
        before = pool._members[0].proc

        def broken(reply: dict[str, Any], elapsed: float) -> None:
            raise RecursionError("maximum recursion depth exceeded")

        with monkeypatch.context() as patch:
            patch.setattr(sandbox, "_to_result", broken)
            [failed] = pool.run([call(value=0.5)])
        assert failed.reward == 0.0 and list(failed.errors) == ["python_grader_server_error"]
        assert failed.errors["python_grader_server_error"].startswith("RecursionError: maximum recursion")
        assert [r.reward for r in pool.run([call(value=0.5)] * 2)] == [0.5] * 2
        assert pool._members[0].proc is not before


def test_a_failed_probe_is_tried_again_a_success_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    failure = "the sandbox did not start: the sandbox stopped answering"  # e.g. a machine under load
    answers = iter([failure, None])
    monkeypatch.setattr(sandbox, "_probed", None)
    monkeypatch.setattr(sandbox, "_probe", lambda: next(answers))
    assert sandbox_unavailable_reason() == failure
    assert sandbox_unavailable_reason() == failure  # kept a while: not one probe per job
    assert sandbox._probed is not None
    monkeypatch.setattr(sandbox, "_probed", (sandbox._probed[0] - 61, failure))  # a minute later
    assert sandbox_unavailable_reason() is None
    monkeypatch.setattr(sandbox, "_probe", lambda: "never asked again")
    assert sandbox_unavailable_reason() is None


@pytest.mark.skipif(os.geteuid() != 0, reason="only a service run as root gives each sandbox a uid")
def test_each_sandbox_runs_as_a_uid_no_other_process_has(pool: PythonGraderPool) -> None:
    uids = set()
    for member in range(2):
        status = Path(f"/proc/{zygote_pid(pool, member)}/status").read_text()
        uids.add(int(status.split("Uid:")[1].split()[0]))  # its real uid, as the host sees it
    assert len(uids) == 2 and uids <= set(sandbox_launch.uid_block(os.getpid())), uids


def test_uid_blocks_of_two_processes_never_meet() -> None:
    first, second, last = (sandbox_launch.uid_block(pid) for pid in (1, 2, 4_194_303))  # the largest pid
    assert len(first) == 512 and not set(first) & set(second)
    assert first[0] > 1_000_000_000 and last[-1] < 2**32 - 1  # far from people's uids, below (uid_t) -1
    claimed = [sandbox_launch.claim_uid() for _ in range(3)]
    assert len(set(claimed)) == 3 and set(claimed) <= set(sandbox_launch.uid_block(os.getpid()))
    for uid in claimed:
        sandbox_launch.release_uid(uid)


@pytest.mark.parametrize(
    ("result", "reply"),
    [
        (b'{"value": 0.5}', {"value": 0.5}),
        (b'{"value": 2}', {"value": 2.0}),
        (b'{"value": NaN}', {"value": math.nan}),
        (b'{"bad": "None"}', {"bad": "None"}),
        (b'{"error": "KeyError: 1 (line 3, in grade)"}', {"error": "KeyError: 1 (line 3, in grade)"}),
        (b'{"value": true}', sandbox_child.UNREADABLE),
        (b'{"value": "1"}', sandbox_child.UNREADABLE),
        (b'{"value": 1' + b"0" * 400 + b"}", sandbox_child.UNREADABLE),  # no float holds it
        (b'{"error": [["deep"]]}', sandbox_child.UNREADABLE),
        (b'{"error": "' + b"x" * 2000 + b'"}', sandbox_child.UNREADABLE),
        (b'{"bad": {"a": 1}}', sandbox_child.UNREADABLE),
        (b'{"value": 1, "error": "x"}', sandbox_child.UNREADABLE),
        (b'{"timeout": "forged"}', sandbox_child.UNREADABLE),
        (b'{"error": ' + b"[" * 5000 + b"]" * 5000 + b"}", sandbox_child.UNREADABLE),
        (b"[1]", sandbox_child.UNREADABLE),
        (b"not json", sandbox_child.UNREADABLE),
    ],
)
def test_the_zygote_passes_on_only_results_a_call_can_give(result: bytes, reply: dict[str, Any]) -> None:
    limits = {"wall_s": 1, "cpu_s": 1, "output_bytes": 65536}
    verdict = sandbox_child._verdict(sandbox_child.SET_UP + result, False, 0, 0.0, limits)
    if reply.get("value") is math.nan:
        assert math.isnan(verdict["value"]) and list(verdict) == ["value"]
    else:
        assert verdict == reply
