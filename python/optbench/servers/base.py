"""What every engine class provides, and the registry of engines.

An engine is one subclass of :class:`Engine` in its own module of ``optbench.servers``: it
declares its ``[server]`` keys (type, command-line flag, one line of documentation), builds the
argument list, starts the server, reads the engine's version, waits until it is ready and stops
it. :func:`engine_class` finds the subclasses by importing every module of the package, so adding
an engine is adding one file.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from optbench.exceptions import ConfigError, ServerStartError
from optbench.servers.process import ManagedProcess

if TYPE_CHECKING:
    from optbench.config import ServerConfig


@dataclass(frozen=True)
class Key:
    """One ``[server]`` key: its TOML type(s), the command-line flag it becomes (None when the
    engine class uses it itself), and one line of documentation."""

    type: type | tuple[type, ...]
    flag: str | None
    doc: str
    #: (low, high) bounds for numbers; None for no bound on that side. ``low_open`` excludes ``low``.
    bounds: tuple[float | None, float | None] | None = None
    low_open: bool = False


#: Keys every engine that starts a process accepts.
EXTRA_ARGS = Key(list, None, "more command-line arguments, one list element each")

_REGISTRY: dict[str, type["Engine"]] = {}


class Engine:
    """Base class of the engines (see the module docs). ``cfg`` is a validated configuration."""

    #: The configuration's ``engine`` value.
    name: ClassVar[str] = ""
    #: Human name for messages ("vLLM").
    label: ClassVar[str] = ""
    #: The allowed ``[server]`` keys.
    keys: ClassVar[dict[str, Key]] = {}
    #: ``[server]`` keys a configuration must give.
    required: ClassVar[tuple[str, ...]] = ()
    #: Where readiness is polled, then the fallback when that answers 404.
    health_path: ClassVar[str] = "/health"
    #: The highest port a free port is chosen below.
    highest_port: ClassVar[int] = 65535

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            _REGISTRY[cls.name] = cls

    def __init__(self, cfg: "ServerConfig") -> None:
        self.cfg = cfg
        self.process: ManagedProcess | None = None
        self.port: int | None = None
        #: The version :meth:`start` found.
        self.running_version = "unknown"

    # -- configuration ---------------------------------------------------------------------

    @classmethod
    def check(cls, where: str, server: dict[str, Any]) -> None:
        """Validates a ``[server]`` table: known keys, types, bounds, required keys."""
        from optbench.config import check_table

        check_table(where, server, {k: v.type for k, v in cls.keys.items()}, "server.")
        for key, spec in cls.keys.items():
            if key not in server:
                continue
            value = server[key]
            if spec.type is list and not all(isinstance(a, str) for a in value):
                raise ConfigError(f"{where}: key 'server.{key}' must be a list of strings (one argument each)")
            if spec.bounds:
                low, high = spec.bounds
                too_low = low is not None and (value <= low if spec.low_open else value < low)
                if too_low or (high is not None and value > high):
                    lo = "" if low is None else f"{'(' if spec.low_open else '['}{low}"
                    want = f"in {lo}, {high}]" if high is not None else f"at least {low}"
                    raise ConfigError(f"{where}: key 'server.{key}' must be {want}, got {value}")
        for key in cls.required:
            if key not in server:
                raise ConfigError(f"{where}: engine '{cls.name}' needs key 'server.{key}' ({cls.keys[key].doc})")

    def flag_args(self) -> list[str]:
        """``--flag value`` for every configured key that has a flag; ``--flag`` alone for true."""
        args: list[str] = []
        server = self.cfg.server
        for key, spec in self.keys.items():
            if spec.flag is None or key not in server:
                continue
            value = server[key]
            if isinstance(value, bool):
                if value:
                    args.append(spec.flag)
            else:
                args += [spec.flag, str(value)]
        return args

    # -- what subclasses provide -----------------------------------------------------------

    def command(self, port: int) -> list[str]:
        """The argument list that starts the server on ``port`` ([] when nothing is started)."""
        raise NotImplementedError

    def launch_command(self, port: int) -> list[str]:
        """The argument list :meth:`start` runs: :meth:`command` with everything resolved that
        only matters on this machine (an interpreter looked up on ``PATH``, say)."""
        return self.command(port)

    def version(self) -> str:
        """The engine's version, read without starting the server."""
        return "unknown"

    def base_urls(self, base_url: str) -> list[str]:
        """Every URL the load test spreads its requests over, once the server answers at
        ``base_url``: that one alone (an engine in front of replicas lists them all)."""
        return [base_url]

    # -- lifecycle (engines that start a process) --------------------------------------------

    def start(self, port: int, log_path: Path) -> str:
        """Starts the server on ``port``, waits until it is ready; returns its base URL."""
        args = self.launch_command(port)
        version = self.running_version = self.version()
        self.port = port
        log_start = log_path.stat().st_size if log_path.exists() else 0
        self.process = ManagedProcess(args, log_path=log_path, env=self.cfg.env, name=self.name)
        base_url = f"http://{self.cfg.host}:{port}"
        try:
            self.process.wait_ready(
                f"{base_url}{self.health_path}", self.cfg.ready_timeout_s, fallback_url=f"{base_url}/v1/models"
            )
        except ServerStartError as e:
            rejected = rejected_arguments(log_path, log_start)
            if rejected:
                raise ServerStartError(
                    f"{self.cfg.name}: {self.label} {version} rejected {rejected} at start-up: the argument "
                    f"parser of this version does not accept it; remove it from the configuration or use "
                    f"a version that has it (configs/README.md lists the versions checked).\n{e}"
                ) from None
            raise
        return base_url

    def stop(self) -> None:
        """Stops the server's whole process group. Safe to call twice."""
        if self.process is not None:
            self.process.stop()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running_command(self) -> list[str] | None:
        return self.process.args if self.process is not None else None


def engine_class(name: str) -> type[Engine]:
    """The engine class for a configuration's ``engine`` value."""
    engines = all_engines()
    if name not in engines:
        raise ConfigError(f"unknown engine {name!r} (known: {', '.join(sorted(engines))})")
    return engines[name]


def all_engines() -> dict[str, type[Engine]]:
    """Every engine, by name (imports each module of ``optbench.servers`` once)."""
    import optbench.servers as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    return dict(_REGISTRY)


_ARGPARSE_ERRORS = (
    re.compile(r"error: unrecognized arguments: (.+)"),
    re.compile(r"error: argument ([-\w/ ]+?): (.+)"),
    re.compile(r"error: the following arguments are required: (.+)"),
)


def rejected_arguments(log_path: Path, offset: int = 0) -> str | None:
    """The arguments an engine's argument parser rejected, from its log after byte ``offset``
    (None if it did not)."""
    try:
        with log_path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    for pattern in _ARGPARSE_ERRORS:
        m = pattern.search(text)
        if m:
            return " ".join(g.strip() for g in m.groups())
    return None


def resolve_python(value: str | None, where: str) -> str:
    """The interpreter a configuration names in ``server.python``: a path (relative to the
    current directory) when it contains '/', else a name on ``PATH``; default: the interpreter
    running optbench."""
    if not value:
        return sys.executable
    if "/" in value:
        path = Path(value).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(f"{where}: key 'server.python' points at {value}, which is not an executable file")
        return str(path.absolute())
    found = shutil.which(value)
    if not found:
        raise ConfigError(f"{where}: key 'server.python' names {value!r}, which is not on PATH")
    return found


_VERSION_SCRIPT = """
import importlib.metadata as m, importlib.util as u, sys
if u.find_spec(sys.argv[1]) is None:
    print("missing"); sys.exit(0)
for dist in sys.argv[2:]:
    try:
        print(m.version(dist)); break
    except m.PackageNotFoundError:
        pass
else:
    print("unknown")
"""


def module_version(
    python: str, module: str, distributions: tuple[str, ...], env: dict[str, str] | None = None
) -> str | None:
    """The version of ``module`` installed for ``python`` with ``env`` added to the environment
    (from the first of ``distributions`` that is installed; "unknown" when none is); None when
    ``python`` cannot import it."""
    try:
        out = subprocess.run(
            [python, "-c", _VERSION_SCRIPT, module, *distributions],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ServerStartError(f"cannot run {python} to read the {module} version: {e}") from e
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise ServerStartError(f"{python} failed to report the {module} version: {out.stderr.strip()[-500:]}")
    return None if lines[-1] == "missing" else lines[-1]


class PythonModuleEngine(Engine):
    """An engine started as ``python -m <module>`` by the interpreter in ``server.python``,
    so any packaging of the engine (a virtual environment, a ``--target`` folder on
    ``PYTHONPATH``, a distribution with another name) starts the same way."""

    #: The module run with ``-m``.
    module: ClassVar[str] = ""
    #: The top-level package whose version is reported, and the distributions that may hold it.
    package: ClassVar[str] = ""
    distributions: ClassVar[tuple[str, ...]] = ()
    #: The flag that names the weights.
    model_flag: ClassVar[str] = "--model"

    def python(self) -> str:
        return resolve_python(
            self.cfg.server.get("python"), self.cfg.path.as_posix() if self.cfg.path else self.cfg.name
        )

    def model_path(self) -> str:
        """The weights: ``server.model_path`` (a local path is made absolute) or ``model``."""
        value = self.cfg.server.get("model_path", self.cfg.model)
        local = Path(value).expanduser()
        return str(local.absolute()) if local.exists() else value

    def command(self, port: int, python: str | None = None) -> list[str]:
        head = [python or self.cfg.server.get("python") or sys.executable, "-m", self.module]
        return (
            head
            + [
                self.model_flag,
                self.model_path(),
                "--served-model-name",
                self.cfg.model,
                "--host",
                self.cfg.host,
                "--port",
                str(port),
            ]
            + self.flag_args()
            + list(self.cfg.server.get("extra_args", []))
        )

    def version(self) -> str:
        python = self.python()
        version = module_version(python, self.package, self.distributions, self.cfg.env)
        if version is None:
            raise ServerStartError(
                f"{self.cfg.name}: {self.label} is not installed for {python}; install it there, or set "
                f"'server.python' to the interpreter of the environment that has it"
            )
        return version

    def launch_command(self, port: int) -> list[str]:
        return self.command(port, self.python())
