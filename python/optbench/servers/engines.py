"""Turning a configuration into a running server: the argument list of each engine, and
``optbench.serve(config)`` which starts it, waits until it is ready and always stops it.

Commands are argument lists, never shell strings; ``print_command`` shows the equivalent
shell line (``optbench serve --print-command CONFIG``) so a configuration can also be started
by hand.
"""

from __future__ import annotations

import importlib.metadata
import os
import shlex
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from optbench.config import ServerConfig, load_config
from optbench.exceptions import ConfigError, ServerStartError
from optbench.servers.llama_cpp import LlamaServer
from optbench.servers.process import ManagedProcess, free_port, port_is_free

DEFAULT_PORT = 8000


def _flag_args(server: dict[str, Any], flags: dict[str, str]) -> list[str]:
    """``--flag value`` for every configured key; ``--flag`` alone for a true boolean."""
    args: list[str] = []
    for key, flag in flags.items():
        if key not in server:
            continue
        value = server[key]
        if isinstance(value, bool):
            if value:
                args.append(flag)
        else:
            args += [flag, str(value)]
    return args


def server_command(cfg: ServerConfig, port: int | None = None) -> list[str]:
    """The argument list that starts ``cfg``'s server (``[]`` for ``openai``, which starts nothing)."""
    port = port or cfg.port or DEFAULT_PORT
    s = cfg.server
    extra = list(s.get("extra_args", []))
    if cfg.engine == "vllm":
        return ["vllm", "serve", cfg.model, "--host", cfg.host, "--port", str(port)] + _flag_args(s, {
            "served_model_name": "--served-model-name",
            "max_model_len": "--max-model-len",
            "gpu_memory_utilization": "--gpu-memory-utilization",
            "max_num_seqs": "--max-num-seqs",
            "tensor_parallel_size": "--tensor-parallel-size",
            "dtype": "--dtype",
            "quantization": "--quantization",
        }) + extra
    if cfg.engine == "sglang":
        python = s.get("python", "python3")
        return [python, "-m", "sglang.launch_server", "--model-path", cfg.model, "--host", cfg.host,
                "--port", str(port)] + _flag_args(s, {
            "served_model_name": "--served-model-name",
            "context_length": "--context-length",
            "mem_fraction_static": "--mem-fraction-static",
            "max_running_requests": "--max-running-requests",
            "tp_size": "--tp-size",
            "dtype": "--dtype",
            "quantization": "--quantization",
            "enable_torch_compile": "--enable-torch-compile",
        }) + extra
    if cfg.engine == "llama_cpp":
        return _llama_server(cfg, port).command()
    return []


def _llama_server(cfg: ServerConfig, port: int | None, log_path: str | os.PathLike[str] | None = None) -> LlamaServer:
    s = cfg.server
    model_path = s.get("model_path", "embedded")
    try:
        return LlamaServer(
            None if model_path == "embedded" else model_path,
            binary=s.get("binary"),
            host=cfg.host,
            port=port,
            parallel=s.get("parallel", 4),
            ctx_size=s.get("ctx_size"),
            threads=s.get("threads"),
            gpu_layers=s.get("gpu_layers"),
            alias=cfg.model,
            extra_args=s.get("extra_args", []),
            log_path=log_path,
            ready_timeout_s=cfg.ready_timeout_s,
        )
    except ConfigError as e:
        raise ConfigError(f"{cfg.path or cfg.name}: {e}") from None


def print_command(cfg: ServerConfig | str | os.PathLike[str]) -> str:
    """The shell line equivalent to starting ``cfg`` (environment first)."""
    if not isinstance(cfg, ServerConfig):
        cfg = load_config(cfg)
    if cfg.engine == "openai":
        return f"# {cfg.name}: an already running server at {cfg.server['base_url']}; nothing to start"
    if cfg.engine == "llama_cpp":
        try:
            args = server_command(cfg)
        except ConfigError:
            # Not installed here: show the command with placeholders rather than fail.
            s = cfg.server
            args = ["llama-server", "--model", s.get("model_path", "<model.gguf>"), "--alias", cfg.model,
                    "--host", cfg.host, "--port", str(cfg.port or DEFAULT_PORT),
                    "--parallel", str(s.get("parallel", 4)),
                    "--ctx-size", str(s.get("ctx_size", 4096 * s.get("parallel", 4))), "--metrics"]
            if "gpu_layers" in s:
                args += ["--n-gpu-layers", str(s["gpu_layers"])]
            args += s.get("extra_args", [])
    else:
        args = server_command(cfg)
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in cfg.env.items())
    return (env + " " if env else "") + shlex.join(args)


def engine_version(cfg: ServerConfig) -> str:
    """The engine's version where it can be found without starting it."""
    if cfg.engine in ("vllm", "sglang"):
        try:
            return importlib.metadata.version(cfg.engine)
        except importlib.metadata.PackageNotFoundError:
            return "unknown (not installed in this Python)"
    return "unknown"


def gpu_info() -> dict[str, Any] | None:
    """Name and memory of the GPUs ``nvidia-smi`` sees (None without ``nvidia-smi``)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.used,memory.total,driver_version", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30, check=True,
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
    ``command``."""

    def __init__(self, cfg: ServerConfig, log_dir: str | os.PathLike[str] | None = None) -> None:
        self.config = cfg
        self.model = cfg.model
        self.log_path = Path(log_dir or tempfile.mkdtemp(prefix="optbench-serve-")) / f"{cfg.name}.log"
        self.version = "unknown"
        self.gpu: dict[str, Any] | None = None
        self._llama: LlamaServer | None = None
        self._process: ManagedProcess | None = None
        self.base_url = ""

    def start(self) -> "Server":
        cfg = self.config
        if cfg.engine == "openai":
            self.base_url = cfg.server["base_url"].rstrip("/")
            root = self.base_url.removesuffix("/v1")
            try:
                req = urllib.request.Request(f"{root}/v1/models")
                key_env = cfg.server.get("api_key_env")
                if key_env and os.environ.get(key_env):
                    req.add_header("Authorization", f"Bearer {os.environ[key_env]}")
                urllib.request.urlopen(req, timeout=10).close()
            except OSError as e:
                raise ServerStartError(f"{cfg.name}: {root}/v1/models did not answer ({e}); is the server running?") from e
            return self
        if cfg.port is not None and not port_is_free(cfg.host, cfg.port):
            raise ServerStartError(f"{cfg.name}: port {cfg.port} on {cfg.host} is already in use; stop what holds it or change 'port'")
        port = cfg.port or free_port(cfg.host)
        if cfg.engine == "llama_cpp":
            self._llama = _llama_server(cfg, port, self.log_path).start()
            self.base_url, self.version = self._llama.base_url, self._llama.version or "unknown"
        else:
            args = server_command(cfg, port)
            if not shutil.which(args[0]):
                raise ServerStartError(f"{cfg.name}: {args[0]!r} not found: engine {cfg.engine} is not installed here")
            self.version = engine_version(cfg)
            self._process = ManagedProcess(args, log_path=self.log_path, env=cfg.env, name=cfg.engine)
            self.base_url = f"http://{cfg.host}:{port}"
            self._process.wait_ready(f"{self.base_url}/health", cfg.ready_timeout_s, fallback_url=f"{self.base_url}/v1/models")
        self.gpu = gpu_info()
        return self

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs (for reading its CPU time, say); None for
        ``openai`` or before ``start``."""
        proc = self._llama.process if self._llama else self._process
        return proc.pid if proc is not None else None

    @property
    def command(self) -> list[str] | None:
        """The command line the server runs with (the port actually chosen included); None for
        ``openai`` or before ``start``."""
        if self._llama:
            return self._llama.command()
        return self._process.args if self._process else None

    def stop(self) -> None:
        """Stops the server's whole process group (nothing for ``openai``). Safe to call twice."""
        if self._llama:
            self._llama.stop()
        if self._process:
            self._process.stop()

    def __enter__(self) -> "Server":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(config: ServerConfig | str | os.PathLike[str], *, log_dir: str | os.PathLike[str] | None = None) -> Server:
    """``with optbench.serve("configs/vllm.toml") as server:`` starts the configuration's server,
    waits until it is ready, and stops its process group on exit, errors and Ctrl-C."""
    cfg = config if isinstance(config, ServerConfig) else load_config(config)
    return Server(cfg, log_dir)


__all__ = ["DEFAULT_PORT", "Server", "serve", "server_command", "print_command", "gpu_info"]
