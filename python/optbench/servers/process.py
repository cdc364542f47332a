"""Running a server process safely: its own process group, a log file, readiness polling,
fail-fast with the log's tail, and teardown (SIGTERM, then SIGKILL of the whole group) on
success, failure, Ctrl-C and interpreter exit alike.

A server must also die when the Python process that started it dies without running any
clean-up (SIGKILL, a crash). On Linux the child asks for that with ``PR_SET_PDEATHSIG``, but
the kernel sends that signal when the *thread* that forked the child exits, not the process
(prctl(2)): a server started from a short-lived worker thread would get SIGTERM as soon as that
thread ended. So every server is forked by one daemon thread of this module, the spawner,
which lives as long as the process (a new one is started after ``os.fork``): its exit is the
process's exit, and the signal means exactly "the caller is gone"."""

from __future__ import annotations

import atexit
import ctypes
import functools
import os
import queue
import random
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import weakref
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Sequence

from optbench.exceptions import ConfigError, ServerStartError

_LIVE: "weakref.WeakSet[ManagedProcess]" = weakref.WeakSet()


def free_port(host: str = "127.0.0.1", highest: int = 65535) -> int:
    """A port that nothing listens on right now (at most ``highest``: some engines derive
    other ports from theirs, SGLang 0.5 its gRPC port at +10000)."""
    if highest >= 65535:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return int(s.getsockname()[1])
    for _ in range(200):
        port = random.randint(20000, highest)
        if port_is_free(host, port):
            return port
    raise ServerStartError(f"no free port between 20000 and {highest} on {host}")


def port_is_free(host: str, port: int) -> bool:
    """True when a server can listen on ``host:port``: nothing listens there. Connections of a
    server that stopped moments ago (TIME_WAIT) do not count; servers set ``SO_REUSEADDR``
    and start despite them."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def has_text(path: Path | None) -> bool:
    """True when ``path`` is a file with something in it (a log worth keeping)."""
    try:
        return path is not None and path.stat().st_size > 0
    except OSError:
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _load_prctl() -> Any:
    """libc's ``prctl``, looked up once in the parent: the child only calls it (loading a
    library between fork and exec can deadlock on a lock another thread held at the fork)."""
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _new_session_dying_with_parent(parent_pid: int) -> None:  # pragma: no cover - runs in the child
    """Child set-up: a new session (so the whole group can be signalled) and, on Linux, a
    SIGTERM when the parent dies (see the module docs for why the spawner thread forks), so a
    crashed caller never leaves a server behind. A parent that died before the request took
    effect is noticed by the parent id having changed already; the child then exits."""
    os.setsid()
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:
            os._exit(1)


class _Spawner:
    """The daemon thread that forks every server (see the module docs): ``submit(fn)`` runs
    ``fn`` on it; the returned future holds its result or exception."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: "queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]" = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0

    @staticmethod
    def _loop(jobs: "queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]") -> None:
        while True:
            fn, future = jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as e:
                future.set_exception(e)

    def submit(self, fn: Callable[[], Any]) -> "Future[Any]":
        with self._lock:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                # First use, or a forked copy of the process, which has no copy of the thread.
                self._jobs = queue.SimpleQueue()
                self._thread = threading.Thread(
                    target=self._loop, args=(self._jobs,), name="optbench-server-spawner", daemon=True
                )
                self._thread.start()
                self._pid = os.getpid()
            future: "Future[Any]" = Future()
            self._jobs.put((fn, future))
        return future


_SPAWNER = _Spawner()


def _kill_started(future: "Future[subprocess.Popen[bytes]]") -> None:
    """Kills the process group of a server whose start was interrupted."""
    if future.exception() is None:
        proc = future.result()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


class ManagedProcess:
    """A server subprocess started from an argument list (never a shell string), forked by
    the spawner thread (see the module docs) so it outlives the thread that asked for it."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        log_path: str | os.PathLike[str],
        env: dict[str, str] | None = None,
        name: str = "server",
    ) -> None:
        if isinstance(args, str):
            raise ConfigError("a server command must be a list of arguments, not a shell string")
        self.args = [str(a) for a in args]
        self.name = name
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        full_env = {**os.environ, **(env or {})}
        preexec = functools.partial(_new_session_dying_with_parent, os.getpid())
        future = _SPAWNER.submit(
            lambda: subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=full_env,
                preexec_fn=preexec,
            )
        )
        try:
            self.proc: subprocess.Popen[bytes] = future.result()
        except OSError as e:
            self._log.close()
            raise ServerStartError(f"cannot start {name}: {self.args[0]}: {e}") from e
        except BaseException:
            # Interrupted (Ctrl-C) while the spawner forks: stop the child once it exists.
            future.add_done_callback(_kill_started)
            self._log.close()
            raise
        _LIVE.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log."""
        return _tail(self.log_path, lines)

    def wait_ready(self, url: str, timeout_s: float, fallback_url: str | None = None) -> None:
        """Polls ``url`` (then ``fallback_url`` if ``url`` answers 404) until it answers 200.
        Raises :class:`ServerStartError` with the log's tail if the process exits or the
        timeout passes. Whatever ends the wait without success (those errors, Ctrl-C, any
        other exception) stops the process first."""
        try:
            self._poll_ready(url, timeout_s, fallback_url)
        except BaseException:
            self.stop()
            raise

    def _poll_ready(self, url: str, timeout_s: float, fallback_url: str | None) -> None:
        deadline = time.monotonic() + timeout_s
        urls = [url] + ([fallback_url] if fallback_url else [])
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not self.running():
                code = self.proc.returncode
                raise ServerStartError(
                    f"{self.name} exited with code {code} before it was ready; log {self.log_path}:\n{self.log_tail()}"
                )
            target = urls[0]
            try:
                with urllib.request.urlopen(target, timeout=2) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code} from {target}"
                if e.code == 404 and len(urls) > 1:
                    urls.pop(0)
            except (urllib.error.URLError, OSError) as e:
                last = str(getattr(e, "reason", e))
            time.sleep(0.2)
        raise ServerStartError(
            f"{self.name} was not ready after {timeout_s:.0f} s (last: {last}); log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM to the process group, then SIGKILL after ``grace_s``. Safe to call twice."""
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:
            # The leader is gone; its group may not be.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if not self._log.closed:
            self._log.close()
        _LIVE.discard(self)
        return self.proc.returncode

    def __del__(self) -> None:
        try:
            if self.proc.poll() is None:
                self.stop(grace_s=2.0)
        except Exception:
            pass


@atexit.register
def _stop_all() -> None:
    for p in list(_LIVE):
        p.stop(grace_s=3.0)
