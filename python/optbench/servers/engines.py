"""Turning a configuration into a running server: ``optbench.serve(config)`` finds the
configuration's engine class (one module per engine in this package), starts it, waits until it
is ready and always stops it.

Commands are argument lists, never shell strings; ``print_command`` shows the equivalent
shell line (``optbench serve --print-command CONFIG``) so a configuration can also be started
by hand.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path
from typing import Any

from optbench.config import ServerConfig, load_config
from optbench.exceptions import ServerStartError
from optbench.servers.base import Engine, engine_class
from optbench.servers.process import free_port, has_text, port_is_free

DEFAULT_PORT = 8000


def engine_for(cfg: ServerConfig) -> Engine:
    """The engine object (not started) for a configuration."""
    return engine_class(cfg.engine)(cfg)


def server_command(cfg: ServerConfig, port: int | None = None) -> list[str]:
    """The argument list that starts ``cfg``'s server (``[]`` for ``openai``, which starts nothing)."""
    return engine_for(cfg).command(port or cfg.port or DEFAULT_PORT)


def print_command(cfg: ServerConfig | str | os.PathLike[str]) -> str:
    """The shell line equivalent to starting ``cfg`` (environment first)."""
    if not isinstance(cfg, ServerConfig):
        cfg = load_config(cfg)
    if cfg.engine == "openai":
        return f"# {cfg.name}: an already running server at {cfg.server['base_url']}; nothing to start"
    args = server_command(cfg)
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in cfg.env.items())
    return (env + " " if env else "") + shlex.join(args)


def gpu_info() -> dict[str, Any] | None:
    """Name and memory of the GPUs ``nvidia-smi`` sees (None without ``nvidia-smi``)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.used,memory.total,driver_version", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    for line in out.strip().splitlines():
        name, used, total, driver = [x.strip() for x in line.split(",")]
        gpus.append({"name": name, "memory_used_mib": int(used), "memory_total_mib": int(total), "driver": driver})
    return {"gpus": gpus}


class Server:
    """A configuration's server while it runs: ``base_url``, ``model``, ``version``,
    ``gpu`` (after the model loaded, where ``nvidia-smi`` exists), ``log_path``, ``pid`` and
    ``command``.

    The log is ``<log_dir>/<name>.log`` and is kept when ``log_dir`` is given; otherwise it
    lies in a temporary folder made by :meth:`start` and removed by :meth:`stop` (a start that
    fails with :class:`ServerStartError` keeps it, since the error names the log)."""

    def __init__(self, cfg: ServerConfig, log_dir: str | os.PathLike[str] | None = None) -> None:
        self.config = cfg
        self.model = cfg.model
        self._log_dir = Path(log_dir) if log_dir else None
        #: The log file (None before the first start when no ``log_dir`` was given).
        self.log_path = self._log_dir / f"{cfg.name}.log" if self._log_dir else None
        self._temp_dir: weakref.finalize | None = None
        self.version = "unknown"
        self.gpu: dict[str, Any] | None = None
        self.engine = engine_for(cfg)
        self.base_url = ""
        #: Every URL the load test spreads its requests over: ``[base_url]``, or an ``openai``
        #: configuration's replicas (``server.base_url`` as a list).
        self.base_urls: list[str] = []

    def start(self) -> "Server":
        """Starts the server and waits until it is ready; any failure or interruption (Ctrl-C)
        on the way stops it again before the exception propagates."""
        cfg = self.config
        if cfg.port is not None and cfg.engine != "openai" and not port_is_free(cfg.host, cfg.port):
            raise ServerStartError(
                f"{cfg.name}: port {cfg.port} on {cfg.host} is already in use; stop what holds it or change 'port'"
            )
        if self._log_dir is None:
            folder = tempfile.mkdtemp(prefix="optbench-serve-")
            # Removed by stop(), or at interpreter exit if stop() is never called.
            self._temp_dir = weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)
            self.log_path = Path(folder) / f"{cfg.name}.log"
        assert self.log_path is not None
        try:
            if cfg.engine == "openai":
                self.base_url = self.engine.start(0, self.log_path)
                self.base_urls = self.engine.base_urls(self.base_url)
                return self
            port = cfg.port or free_port(cfg.host, self.engine.highest_port)
            self.base_url = self.engine.start(port, self.log_path)
            self.base_urls = self.engine.base_urls(self.base_url)
            self.version = self.engine.running_version
            self.gpu = gpu_info()
        except ServerStartError:
            if self._temp_dir is not None and has_text(self.log_path):
                self._temp_dir.detach()  # the error names the log: keep it
            self.engine.stop()
            raise
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs (for reading its CPU time, say); None for
        ``openai`` or before ``start``."""
        return self.engine.pid

    @property
    def command(self) -> list[str] | None:
        """The command line the server runs with (the port actually chosen included); None for
        ``openai`` or before ``start``."""
        return self.engine.running_command

    def stop(self) -> None:
        """Stops the server's whole process group (nothing for ``openai``) and removes the
        temporary log folder, if :meth:`start` made one. Safe to call twice."""
        self.engine.stop()
        if self._temp_dir is not None:
            self._temp_dir()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(config: ServerConfig | str | os.PathLike[str], *, log_dir: str | os.PathLike[str] | None = None) -> Server:
    """``with optbench.serve("configs/vllm.toml") as server:`` starts the configuration's server,
    waits until it is ready, and stops its process group on exit, errors and Ctrl-C."""
    cfg = config if isinstance(config, ServerConfig) else load_config(config)
    return Server(cfg, log_dir)


__all__ = ["DEFAULT_PORT", "Server", "serve", "engine_for", "server_command", "print_command", "gpu_info"]
