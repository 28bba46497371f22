"""How a Python-grader sandbox is launched and talked to; run as a script, the root launcher (stdlib only).

The sandbox is bubblewrap with every namespace new (user, pid, network: loopback only, ipc, uts, cgroup),
no further user namespaces, no environment of the service, and a filesystem of read-only binds only: the
shared libraries (/usr/lib, /lib*), the base interpreter and its stdlib (never the venv, which holds the
service's code; the base installation's own site-packages are hidden), ALLOWED_PACKAGES and the zygote,
plus /proc of its own pid namespace, five devices (null, zero, full, random, urandom) and a size-limited
tmpfs /tmp, the only writable place (the root bwrap builds is remounted read-only).

Run as root, the sandbox must not be root: this file, run as a script by the bare interpreter, stages
every source (opened while still root, since the interpreter may live under a 0700 home such as pyenv's
/root) as /tmp/0, /tmp/1, ... on a fresh 0755 tmpfs in a private mount namespace, drops to an unused uid
and gid with no groups (so no capabilities at all) and execs bwrap. That uid is the sandbox's alone
(`claim_uid`): no other sandbox of this or another service process in the pid namespace runs as it
meanwhile. It execs rather than forks: the service's child is bwrap itself, which reaps the sandbox, so no
orphan is left to an init that may never reap it (the service's own process, in a container).

    python -I -S sandbox_launch.py UID SOURCE... -- /usr/bin/bwrap ARGS...
"""

import contextlib
import ctypes
import functools
import os
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from importlib.util import find_spec
from pathlib import Path

# the third-party packages a grader may import (read-only, whichever are installed in our environment)
ALLOWED_PACKAGES = ("numpy", "sympy", "mpmath", "rapidfuzz")
# run as root, sandboxes take uids from here on (far above people's, system's and subordinate ranges): each
# process a block of UIDS_PER_PROCESS by its pid, the last block (pid 2**22 - 1) ending below 2**32 - 1
SANDBOX_UID_BASE = 1_900_000_000
UIDS_PER_PROCESS = 512  # sandboxes one process may run at once
_PIDS = 1 << 22  # Linux's largest pid_max
SANDBOX_ENV = {  # all a sandboxed process sees of an environment
    "PATH": "/opt/python/bin",
    "LANG": "C.UTF-8",
    "HOME": "/tmp",
    "PYTHONDONTWRITEBYTECODE": "1",
    "LD_LIBRARY_PATH": "/opt/python/lib",  # the interpreter's RUNPATH names a host path
    "OPENBLAS_NUM_THREADS": "1",  # numpy starts no threads: a thread in the zygote would not survive its fork
    "OMP_NUM_THREADS": "1",
}
TMP_BYTES = 32 * 1024 * 1024  # the sandbox's /tmp (RAM-backed); the zygote wipes it after every call
CHILD = Path(__file__).with_name("sandbox_child.py")
_PY = f"python{sys.version_info.major}.{sys.version_info.minor}"
_STAGE = "/tmp"
_CLONE_NEWNS, _MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x20000, 2, 4, 4096, 16384, 1 << 18
_uids_held: set[int] = set()  # this process's sandboxes' uids
_uid_lock = threading.Lock()


def uid_block(pid: int) -> range:
    """The sandbox uids of the process `pid`: no other process's (two live processes never share a pid)."""
    start = SANDBOX_UID_BASE + pid % _PIDS * UIDS_PER_PROCESS
    return range(start, start + UIDS_PER_PROCESS)


def claim_uid() -> int:
    """A uid for a new sandbox that no other live sandbox of the pid namespace has: a free one of this
    process's block. release_uid gives it back."""
    with _uid_lock:
        uid = next((uid for uid in uid_block(os.getpid()) if uid not in _uids_held), None)
        if uid is None:
            raise RuntimeError(f"this process already runs {UIDS_PER_PROCESS} sandboxes")
        _uids_held.add(uid)
        return uid


def release_uid(uid: int) -> None:
    """After the sandbox that ran as `uid` has ended, every process of it."""
    with _uid_lock:
        _uids_held.discard(uid)


def base_python() -> str:
    """The base installation's interpreter (a venv's python would put the venv in reach)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def package_dirs() -> list[Path]:
    """The allowed packages that are installed, and their bundled shared libraries (`numpy.libs`)."""
    dirs: list[Path] = []
    for name in ALLOWED_PACKAGES:
        spec = find_spec(name)  # finds without importing
        if spec is None or not spec.submodule_search_locations:
            continue
        package = Path(next(iter(spec.submodule_search_locations)))
        dirs += [p for p in (package, package.with_name(f"{name}.libs")) if p.is_dir()]
    return dirs


def _binds() -> list[tuple[str, str]]:
    """(host path, sandbox path) of everything bound read-only besides the shared libraries."""
    binds = [
        (base_python(), f"/opt/python/bin/{_PY}"),
        (sysconfig.get_path("stdlib"), f"/opt/python/lib/{_PY}"),
    ]
    soname = str(sysconfig.get_config_var("INSTSONAME"))
    libpython = Path(str(sysconfig.get_config_var("LIBDIR")), soname)
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libpython.exists():
        binds.append((str(libpython), f"/opt/python/lib/{soname}"))
    binds += [(str(path), f"/opt/packages/{path.name}") for path in package_dirs()]
    return [*binds, (str(CHILD), "/opt/grader/zygote.py")]


@functools.cache
def _bwrap_options() -> str:
    """bwrap's --help: --size and --perms came in 0.5-0.7, --disable-userns in 0.8."""
    try:
        return subprocess.run([_bwrap(), "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _bwrap() -> str:
    return shutil.which("bwrap") or "bwrap"


def bwrap_command(uid: int | None) -> list[str]:
    """The sandbox's command line; with a uid (we are root) started through this launcher as that uid."""
    binds, launcher = _binds(), []
    if uid is not None:
        launcher = [base_python(), "-I", "-S", __file__, str(uid), *(source for source, _ in binds), "--"]
        binds = [(f"{_STAGE}/{index}", dest) for index, (_, dest) in enumerate(binds)]
    # --as-pid-1: the zygote is the namespace's init (no bwrap reaper whose /proc/1 shows bwrap's command)
    command = [_bwrap(), "--unshare-all", "--unshare-user", "--die-with-parent", "--as-pid-1"]
    command += ["--new-session", "--clearenv", "--uid", "65534", "--gid", "65534", "--hostname", "grader"]
    if "--disable-userns" in _bwrap_options():  # older: seccomp refuses unshare and clone anyway
        command.append("--disable-userns")
    for path in ("/usr/lib", "/usr/lib64", "/lib", "/lib64"):  # the C library and shared libraries
        if os.path.islink(path):
            command += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            command += ["--ro-bind", path, path]
    for source, dest in binds:
        command += ["--ro-bind", source, dest]
    if os.path.isdir(os.path.join(sysconfig.get_path("stdlib"), "site-packages")):
        hidden = f"/opt/python/lib/{_PY}/site-packages"  # the base installation's own packages
        command += ["--tmpfs", hidden, "--remount-ro", hidden]
    for device in ("null", "zero", "full", "random", "urandom"):  # not --dev: its tmpfs is writable
        command += ["--dev-bind", f"/dev/{device}", f"/dev/{device}"]
    command += ["--symlink", "/proc/self/fd", "/dev/fd", "--proc", "/proc"]
    if "--size" in _bwrap_options():  # an unbounded tmpfs would be RAM without limit: then no /tmp
        command += ["--perms", "1777", "--size", str(TMP_BYTES), "--tmpfs", "/tmp"]
    else:
        command += ["--dir", "/tmp"]
    command += ["--chdir", "/tmp", "--remount-ro", "/"]  # the root bwrap builds is writable otherwise
    for key, value in SANDBOX_ENV.items():
        command += ["--setenv", key, value]
    zygote = [f"/opt/python/bin/{_PY}", "-I", "-S", "/opt/grader/zygote.py", "/tmp", "/opt/packages"]
    return launcher + command + zygote


def unsandboxed_command(scratch: str, packages: str) -> list[str]:
    """The same zygote without bubblewrap: `packages` gets links to the allowed packages only."""
    for path in package_dirs():
        os.symlink(path, os.path.join(packages, path.name))
    return [base_python(), "-I", "-S", str(CHILD), scratch, packages]


# ---- talking to a running sandbox, never blocked past a deadline (the host side)


def read_exact(fd: int, size: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    while size:
        _wait(fd, deadline, readable=True)
        data = os.read(fd, min(size, 1 << 20))
        if not data:
            raise EOFError("the sandbox exited")
        chunks.append(data)
        size -= len(data)
    return b"".join(chunks)


def write_all(fd: int, data: bytes, deadline: float) -> None:
    """On a non-blocking fd: a sandbox that stopped reading cannot block this thread past the deadline."""
    view = memoryview(data)
    while view:
        _wait(fd, deadline, readable=False)
        with contextlib.suppress(BlockingIOError):
            view = view[os.write(fd, view) :]


def _wait(fd: int, deadline: float, *, readable: bool) -> None:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the sandbox stopped answering; it was killed")
        ready = select.select([fd], [], [], remaining) if readable else select.select([], [fd], [], remaining)
        if ready[0] or ready[1]:
            return


def descendants(root: int) -> list[list[int]]:
    """`root`'s process tree by depth ([[root], [its children], ...], then empty levels), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError), open(f"{entry.path}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    levels = [[root]]
    while next_level := [child for pid in levels[-1] for child in children.get(pid, [])]:
        levels.append(next_level)
    return levels + [[]] * 3


def terminate(proc: "subprocess.Popen[bytes]", depth: int) -> None:
    """Kills a launched sandbox: its zygote (the pid namespace's init), `depth` levels below `proc`, only;
    bwrap then exits and is reaped here. Killing bwrap too would leave the zygote an orphan for an init that
    may never reap it. At depth 0 (unsandboxed) the zygote and its call share the launched process's group."""
    zygotes = descendants(proc.pid)[depth] if depth else []
    for pid in zygotes:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    if not zygotes:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# ---- the root launcher (run as a script)


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def main(argv: list[str]) -> None:
    """The root launcher: stage the sources, become `uid`, exec bwrap."""
    uid, split = int(argv[1]), argv.index("--")
    sources, command = argv[2:split], argv[split + 1 :]
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "mount --make-rprivate /")
    # opened in the new namespace (a bind's source must be one of its mounts), before the tmpfs hides any
    fds = [os.open(source, os.O_PATH | os.O_CLOEXEC) for source in sources]
    _check(libc.mount(b"tmpfs", _STAGE.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, b"mode=0755"), "tmpfs")
    for index, fd in enumerate(fds):
        target = f"{_STAGE}/{index}"
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.mkdir(target)
        else:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
        # the magic link reaches the source even where the tmpfs (or a 0700 parent) hides its path
        source = f"/proc/self/fd/{fd}".encode()
        _check(libc.mount(source, target.encode(), None, _MS_BIND | _MS_REC, None), f"bind {target}")
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # leaving uid 0 clears every capability
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv)
