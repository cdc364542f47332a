"""Running a server process safely: its own process group, a log file, readiness polling,
fail-fast with the log's tail, and teardown (SIGTERM, then SIGKILL of the whole group) on
success, failure, Ctrl-C and interpreter exit alike.

A server must also die when the Python process that started it dies without running any
clean-up (SIGKILL, a crash). Each server has a watcher for that: a small Python process
(``python -I -S``, in a session of its own so a terminal's Ctrl-C does not reach it) that holds
the read end of a pipe whose only write end this process holds. The kernel closes that end
when this process ends, however it ends, so the watcher reads end-of-file exactly then; it
sends SIGTERM to the server's process group, and SIGKILL after :data:`ORPHAN_GRACE_S` to
whatever is left of it. :meth:`ManagedProcess.stop` first tells the watcher to stand down.

``PR_SET_PDEATHSIG`` is not used: the kernel sends it when the *thread* that forked the child
exits (prctl(2)), so a server started from a short-lived worker thread died with that thread,
and at process death it is sent again at each thread the child passes to on the way out
(llama-server hangs on its second SIGTERM). It reaches only the leader, too, not the group.
The pipe does not depend on threads. One caveat: a copy of this process made with ``os.fork``
(multiprocessing's ``fork`` start method) holds the write end as well, so the watcher acts
when both have ended."""

from __future__ import annotations

import atexit
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import Sequence

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


#: Seconds the watcher of a server whose caller died waits after SIGTERM before SIGKILL.
ORPHAN_GRACE_S = 10.0

# Runs in the watcher (python -I -S -c): reads "<process group> <grace>\n", then waits. A byte
# means the owner stopped the server itself: nothing to do. End-of-file means the owner is gone.
_WATCHER = """
import os, signal, sys, time
line = b""
while not line.endswith(b"\\n"):
    chunk = os.read(0, 1)
    if not chunk:
        sys.exit(0)
    line += chunk
pgid, grace = int(line.split()[0]), float(line.split()[1])
if os.read(0, 1):
    sys.exit(0)
try:
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        time.sleep(0.1)
        os.killpg(pgid, 0)
    os.killpg(pgid, signal.SIGKILL)
except ProcessLookupError:
    pass
"""


class _Watcher:
    """The watcher of one server (see the module docs)."""

    def __init__(self) -> None:
        read_end, self._write_end = os.pipe()  # both non-inheritable: no other child holds them
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHER],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            os.close(self._write_end)
            raise
        finally:
            os.close(read_end)

    def watch(self, pgid: int) -> None:
        """Names the process group to stop if this process ends."""
        os.write(self._write_end, f"{pgid} {ORPHAN_GRACE_S}\n".encode())

    def stand_down(self) -> None:
        """The owner stops the server itself: the watcher exits without signalling."""
        if self._write_end >= 0:
            try:
                os.write(self._write_end, b"q")
            except OSError:
                pass
            os.close(self._write_end)
            self._write_end = -1
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ManagedProcess:
    """A server subprocess started from an argument list (never a shell string), in its own
    process group, with a watcher that stops the group if this process dies (see the module
    docs); it runs until stopped, whichever thread started it."""

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
        try:
            self._watcher = _Watcher()
        except OSError as e:
            self._log.close()
            raise ServerStartError(f"cannot start the watcher of {name}: {sys.executable}: {e}") from e
        try:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,  # its own process group, which stop() and the watcher signal
            )
        except BaseException as e:
            self._log.close()
            self._watcher.stand_down()
            if isinstance(e, OSError):
                raise ServerStartError(f"cannot start {name}: {self.args[0]}: {e}") from e
            raise
        self._watcher.watch(self.proc.pid)
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
        self._watcher.stand_down()
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
