# The fork server of optbench's sandbox: one pre-started interpreter per worker (started by
# the sandbox with `python3 -I -B -c`), which has imported the modules test programs use and
# forks one child per program. Arguments: the descriptor of its socket to the sandbox, the
# driver's source (driver.py) and a JSON object of constants (the seccomp filters and the
# Landlock system call numbers).
#
# It never reads a program: the sandbox sends, per run, the run's parameters (JSON: uid, work
# directory, limits) and its descriptors (the task, the control pipe, stdout, stderr, the
# cgroup's `cgroup.procs`, the Landlock ruleset) over the socket. Messages from the sandbox:
#   "R" + JSON, with descriptors: fork a child for one run; answered "P" + its pid;
#   "W" + pid (4 bytes): reap that child; answered "S" + status, user and system CPU in us.
# End of file on the socket ends the fork server.
#
# The child makes the same setup, in the same order, as the sandbox's own child does between
# fork and exec (child.rs: ChildSetup::apply), writes the same setup header on the control
# pipe, then runs the driver in a fresh `__main__`, as `python3 -I -B -c <driver>` would. It
# ends the way that interpreter's exit would for the program (its non-daemon threads joined,
# its atexit handlers run, stdout and stderr flushed, the exit code of an uncaught exception
# or SystemExit), without tearing the interpreter down: freeing the fork server's objects
# would copy every page it shares with the fork server, for nothing.
import atexit
import ctypes
import gc
import json
import os
import resource
import signal
import socket
import struct
import sys
import types

# What test programs (and the driver) commonly import, imported once here.
import bisect  # noqa: F401
import collections  # noqa: F401
import copy  # noqa: F401
import fractions  # noqa: F401
import functools  # noqa: F401
import hashlib  # noqa: F401
import heapq  # noqa: F401
import itertools  # noqa: F401
import math  # noqa: F401
import random  # noqa: F401  (reseeded in every child by its own fork handler)
import re  # noqa: F401
import string  # noqa: F401
import typing  # noqa: F401

# The objects made so far belong to the fork server: frozen before each fork (a child's
# collections then never visit, nor copy, them), and no collection in between.
gc.disable()
_sock = socket.socket(fileno=int(sys.argv[1]))
_driver = compile(sys.argv[2], "<string>", "exec")
_const = json.loads(sys.argv[3])
_filters = [bytes.fromhex(f) for f in _const["seccomp"]]
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_ul = ctypes.c_ulong
del sys.argv[1:]
# The sandbox's programs run as other uids (or in a user namespace): keep them out of this
# process's memory (children set it back, as exec would).
_libc.prctl(4, _ul(0), _ul(0), _ul(0), _ul(0))  # PR_SET_DUMPABLE 0

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
# The setup header's bits (child.rs: got).
GOT_IPC, GOT_MOUNT, GOT_PID, GOT_WORKDIR, GOT_PROC, GOT_CGROUP, GOT_RUN = 1, 2, 4, 8, 16, 32, 64


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _serve():
    """Answers the sandbox until end of file (then exits); returns only in a forked child,
    with the run's parameters and descriptors."""
    while True:
        msg, fds, _, _ = socket.recv_fds(_sock, 1 << 16, 16)
        if not msg:
            os._exit(0)
        if msg[:1] == b"R":
            gc.freeze()
            pid = os.fork()
            if pid == 0:
                _sock.close()
                gc.enable()
                return json.loads(msg[1:]), fds
            for fd in fds:
                os.close(fd)
            _sock.sendall(b"P" + struct.pack("<i", pid))
        elif msg[:1] == b"W":
            (pid,) = struct.unpack("<i", msg[1:5])
            try:
                _, status, usage = os.wait4(pid, 0)
            except ChildProcessError:
                _sock.sendall(b"L")  # lost: not a child of ours
                continue
            us = [int(t * 1e6) for t in (usage.ru_utime, usage.ru_stime)]
            _sock.sendall(b"S" + struct.pack("<iqq", status, *us))
        else:
            os._exit(2)


class _Failed(Exception):
    def __init__(self, step, errno):
        self.step, self.errno = step, errno


def _os(step, fn, *args):
    try:
        return fn(*args)
    except OSError as e:
        raise _Failed(step, e.errno or 0) from None


def _pass_on(child, status_fd, send):
    """In a process left behind by the PID namespace's forks (child.rs: wait_and_pass_on)."""
    _libc.prctl(1, _ul(signal.SIGKILL), _ul(0), _ul(0), _ul(0))  # PR_SET_PDEATHSIG
    os.closerange(0, status_fd)
    os.closerange(status_fd + 1, 1 << 20)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(125)
        if pid == child:
            break
    if send:
        os.write(status_fd, struct.pack("i", status))
        os._exit(0)
    passed = os.read(status_fd, 4)
    if len(passed) == 4:
        (status,) = struct.unpack("i", passed)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status))


def _fork_into_pid_namespace():
    r, w = _os(6, os.pipe)
    init = _os(6, os.fork)
    if init > 0:
        _pass_on(init, r, False)
    program = _os(6, os.fork)
    if program > 0:
        _pass_on(program, w, True)
    os.close(r)
    os.close(w)


def _mount_private_views(workdir, tmpfs_options, pid_namespace):
    got = GOT_MOUNT
    mount = _libc.mount
    if mount(None, b"/", None, _ul(MS_REC | MS_PRIVATE), None) != 0:
        return got
    if mount(b"tmpfs", workdir, b"tmpfs", _ul(MS_NOSUID | MS_NODEV), tmpfs_options) == 0:
        got |= GOT_WORKDIR
        _os(7, os.chdir, workdir)
        mount(workdir, b"/dev/shm", None, _ul(MS_BIND), None)
    quiet = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if mount(b"tmpfs", b"/run", b"tmpfs", _ul(quiet | MS_RDONLY), b"size=4k,mode=0755") == 0:
        got |= GOT_RUN
    if pid_namespace and mount(b"proc", b"/proc", b"proc", _ul(quiet), None) == 0:
        got |= GOT_PROC
    return got


def _errno_byte(e):
    return 255 if e < 0 else min(e, 254)


def _setup(p, fds):
    """The run's isolation, as child.rs's ChildSetup::apply; returns the (source, control)
    descriptors the driver gets."""
    fd = lambda name: fds[p[name]] if p.get(name) is not None else -1  # noqa: E731
    control, source = fd("control"), fd("source")
    workdir = p["workdir"].encode()
    # The run's stdio and work directory (std's spawn does this before the setup).
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd("stdout"), 1)
    os.dup2(fd("stderr"), 2)
    os.chdir(workdir)
    got = 0
    _os(0, os.setsid)
    joined = False
    for i in p["cgroup_procs"]:
        try:
            joined = os.write(fds[i], b"0") == 1
        except OSError:
            joined = False
        if not joined:
            break
    if joined:
        got |= GOT_CGROUP
    if p["new_user_namespace"]:
        attempts = [CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWIPC, CLONE_NEWUSER | CLONE_NEWNET]
    else:
        attempts = [
            CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWNS | CLONE_NEWPID,
            CLONE_NEWNET | CLONE_NEWIPC,
            CLONE_NEWNET,
        ]
    netns_errno, flags = 0, 0
    for attempt in attempts:
        if _libc.unshare(attempt) == 0:
            flags, netns_errno = attempt, 0
            break
        netns_errno = ctypes.get_errno()
    if flags & CLONE_NEWIPC:
        got |= GOT_IPC
    if flags & CLONE_NEWPID:
        _fork_into_pid_namespace()
        got |= GOT_PID
    if flags & CLONE_NEWNS:
        got |= _mount_private_views(workdir, p["tmpfs_options"].encode(), bool(flags & CLONE_NEWPID))
    for resource_id, soft, hard in p["rlimits"]:
        _os(1, resource.setrlimit, resource_id, (soft, hard))
    uid = p["run_as"]
    if uid is not None:
        _os(2, os.setgroups, [])
        _os(3, os.setgid, uid)
        _os(4, os.setuid, uid)
        _libc.prctl(4, _ul(1), _ul(0), _ul(0), _ul(0))  # PR_SET_DUMPABLE 1, as after exec
    _libc.prctl(1, _ul(signal.SIGKILL), _ul(0), _ul(0), _ul(0))  # PR_SET_PDEATHSIG
    no_new_privs = _libc.prctl(38, _ul(1), _ul(0), _ul(0), _ul(0)) == 0
    landlock_errno = -1
    if p.get("landlock") is not None:
        landlock_errno = 1  # EPERM: without no_new_privs
        if no_new_privs:
            try:
                d = os.open(workdir, os.O_PATH | os.O_CLOEXEC)
            except OSError as e:
                landlock_errno = max(e.errno or 1, 1)
            else:
                rule = ctypes.create_string_buffer(struct.pack("<Qi", p["landlock_access"], d), 12)
                ruleset = ctypes.c_long(fd("landlock"))
                add_rule = ctypes.c_long(_const["sys_landlock_add_rule"])
                restrict = ctypes.c_long(_const["sys_landlock_restrict_self"])
                ok = (
                    _libc.syscall(add_rule, ruleset, ctypes.c_long(1), rule, ctypes.c_long(0)) == 0
                    and _libc.syscall(restrict, ruleset, ctypes.c_long(0)) == 0
                )
                landlock_errno = 0 if ok else max(ctypes.get_errno(), 1)
                os.close(d)
    seccomp_errno = -1
    if _filters:
        seccomp_errno = 1 if not no_new_privs else 0
        for f in _filters if no_new_privs else []:
            buf = ctypes.create_string_buffer(f, len(f))
            prog = _SockFprog(len(f) // 8, ctypes.addressof(buf))
            if _libc.prctl(22, _ul(2), ctypes.byref(prog), _ul(0), _ul(0)) != 0:  # PR_SET_SECCOMP, FILTER
                seccomp_errno = max(ctypes.get_errno(), 1)
                break
    header = bytes(
        [
            ord("O"),
            _errno_byte(netns_errno),
            int(no_new_privs),
            _errno_byte(landlock_errno),
            got,
            _errno_byte(seccomp_errno),
        ]
    )
    os.write(control, header)
    # Only stdio, the control pipe and the task stay open, as after the spawn's exec.
    keep = sorted({0, 1, 2, control, source})
    for lo, hi in zip(keep, keep[1:] + [1 << 20]):
        os.closerange(lo + 1, hi)
    os.environ["HOME"] = os.environ["TMPDIR"] = p["workdir"]
    return source, control


_run, _fds = _serve()
# In a forked child from here on: one run.
try:
    _source, _control = _setup(_run, _fds)
except _Failed as _e:
    os.write(_fds[_run["control"]], bytes([ord("E"), _e.step, max(0, min(_e.errno, 255))]))
    os._exit(127)
except BaseException as _e:  # a setup that went wrong in an unforeseen way: no run
    os.write(_fds[_run["control"]], b"E\xff\x00" + repr(_e).encode()[:200])
    os._exit(127)
# The driver runs as `python3 -I -B -c <driver> <mode> <task fd> <control fd>` would run it.
_main = types.ModuleType("__main__")
_main.__dict__["__builtins__"] = __builtins__
sys.modules["__main__"] = _main
sys.argv[:] = ["-c", _run["mode"], str(_source), str(_control)]
del _run, _fds, _source, _control


def _end(code):
    """What the interpreter's exit does for a program, then the exit itself."""
    threading = sys.modules.get("threading")
    try:
        if threading is not None:
            threading._shutdown()
        atexit._run_exitfuncs()
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:
                code = code or 120
        os._exit(code)


try:
    exec(_driver, _main.__dict__)
except SystemExit as _e:
    if _e.code is None or isinstance(_e.code, int):
        _end(_e.code or 0)
    print(_e.code, file=sys.stderr)
    _end(1)
except KeyboardInterrupt:
    sys.excepthook(*sys.exc_info())
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
    _end(130)
except BaseException:
    sys.excepthook(*sys.exc_info())
    _end(1)
_end(0)
