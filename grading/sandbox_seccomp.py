"""The seccomp filter of every Python-grader call (host side; the zygote installs it in each forked call).

A denylist in classic BPF over struct seccomp_data (nr at 0, arch at 4, the low word of args[0] at 16 on
these little-endian machines): no new process or program (fork, vfork, execve, clone without
CLONE_THREAD: threads are allowed), no namespace, mount, tracing, BPF, io_uring, keyring or `socket`
(`socketpair`, an unnamed pair inside the process, stays), and signals (kill, tkill, tgkill,
rt_sigqueueinfo, rt_tgsigqueueinfo) and resource limits (prlimit64) only for the call's own process, so it
cannot touch the zygote, nor the service when there is no sandbox around it. Another architecture's
syscalls (i386 via int 0x80, x32) kill the process. The call's pid is only known after the fork: the zygote
writes it into `pid_slots`.
"""

import os
import struct
from typing import Any

_ARCHES = {  # machine → (AUDIT_ARCH, "syscall number ..."): what a call may not do
    "x86_64": (
        0xC000003E,
        "fork 57 vfork 58 execve 59 execveat 322 clone 56 clone3 435 kill 62 tkill 200 tgkill 234 "
        "rt_sigqueueinfo 129 rt_tgsigqueueinfo 297 prlimit64 302 pidfd_open 434 pidfd_send_signal 424 "
        "ptrace 101 process_vm_readv 310 process_vm_writev 311 "
        "unshare 272 setns 308 mount 165 umount2 166 pivot_root 155 chroot 161 bpf 321 perf_event_open 298 "
        "userfaultfd 323 keyctl 250 add_key 248 request_key 249 socket 41 io_uring_setup 425 "
        "io_uring_enter 426 io_uring_register 427",
    ),
    "aarch64": (  # no fork/vfork there: the C library forks with clone
        0xC00000B7,
        "execve 221 execveat 281 clone 220 clone3 435 kill 129 tkill 130 tgkill 131 rt_sigqueueinfo 138 "
        "rt_tgsigqueueinfo 240 prlimit64 261 pidfd_open 434 pidfd_send_signal 424 ptrace 117 "
        "process_vm_readv 270 process_vm_writev 271 unshare 97 setns 268 "
        "mount 40 umount2 39 pivot_root 41 chroot 51 bpf 280 perf_event_open 241 userfaultfd 282 "
        "keyctl 219 add_key 217 request_key 218 socket 198 io_uring_setup 425 io_uring_enter 426 "
        "io_uring_register 427",
    ),
}
SUPPORTED = tuple(_ARCHES)
_KILL_PROCESS, _ALLOW, _ERRNO = 0x80000000, 0x7FFF0000, 0x00050000
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_CLONE_THREAD, _EPERM, _ENOSYS = 0x10000, 1, 38
# allowed only towards the call's own process (its pid as the first argument; 0 too for prlimit64: "myself")
_OWN_PID = ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "prlimit64")
Op = tuple[int, int, int, int]  # struct sock_filter: code, jt, jf, k


def seccomp_program(machine: str | None = None) -> dict[str, Any]:
    """{"program": hex of the instructions, "pid_slots": where the call's pid goes} for this machine."""
    machine = machine or os.uname().machine
    if machine not in _ARCHES:
        raise ValueError(f"no seccomp filter for {machine} (supported: {', '.join(SUPPORTED)})")
    audit_arch, table = _ARCHES[machine]
    words = table.split()
    ops: list[Op] = [(_LD_ABS, 0, 0, 4), (_JEQ, 1, 0, audit_arch), (_RET, 0, 0, _KILL_PROCESS)]
    ops.append((_LD_ABS, 0, 0, 0))
    if machine == "x86_64":  # x32 syscalls alias the 64-bit ones under another number
        ops += [(_JGE, 0, 1, 0x40000000), (_RET, 0, 0, _KILL_PROCESS)]
    pid_slots = []
    for name, number in zip(words[::2], map(int, words[1::2]), strict=True):
        if name == "clone":  # threads are allowed (clone with CLONE_THREAD), processes are not
            ops += _arg_rule(number, _JSET, _CLONE_THREAD)
        elif name == "prlimit64":
            pid_slots.append(len(ops) + 3)
            ops += _own_limits_rule(number)
        elif name in _OWN_PID:
            pid_slots.append(len(ops) + 2)  # _arg_rule's test instruction
            ops += _arg_rule(number, _JEQ, 0)
        else:  # ENOSYS for clone3 makes the C library fall back to clone, which is filtered by its flags
            ops += [(_JEQ, 0, 1, number), (_RET, 0, 0, _ERRNO | (_ENOSYS if name == "clone3" else _EPERM))]
    ops.append((_RET, 0, 0, _ALLOW))
    return {"program": b"".join(struct.pack("HBBI", *op) for op in ops).hex(), "pid_slots": pid_slots}


def _arg_rule(number: int, test: int, k: int) -> list[Op]:
    """Syscall `number` is allowed when its first argument passes `test` against k, else EPERM."""
    return [
        (_JEQ, 0, 4, number),
        (_LD_ABS, 0, 0, 16),
        (test, 0, 1, k),
        (_RET, 0, 0, _ALLOW),
        (_RET, 0, 0, _ERRNO | _EPERM),
    ]


def _own_limits_rule(number: int) -> list[Op]:
    """prlimit64 is allowed for pid 0 (the caller, as getrlimit/setrlimit use it) and the call's own pid."""
    return [
        (_JEQ, 0, 5, number),
        (_LD_ABS, 0, 0, 16),
        (_JEQ, 2, 0, 0),
        (_JEQ, 1, 0, 0),  # the call's pid goes here
        (_RET, 0, 0, _ERRNO | _EPERM),
        (_RET, 0, 0, _ALLOW),
    ]
