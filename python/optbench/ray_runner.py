"""``optbench run --ray``: the configurations of a run as Ray tasks, one per configuration, on a
Ray cluster (an existing one, or a local one started for the run).

Each task runs :func:`optbench.run.run_one` (serve, load-test, evaluate, stop) on the node Ray
picks from the configuration's ``[resources]`` table (:func:`task_options`), in a temporary
folder there, then sends the configuration's folder (Parquet files, ``meta.json``, the server's
log) back to the driver: as the task's return value (a tar archive; needs nothing shared), or
through ``storage``, a folder or URI that the nodes and the driver all reach (``pyarrow.fs``:
a local or shared path, ``s3://``, ``gs://``, ``hdfs://``). The driver places each folder in
the run's folder as it arrives, so the report is built from the same files as a local run.

What the driver prints: a line per task state change (submitted, finished, failed, lost) and,
through Ray's ``log_to_driver``, every task's own log lines prefixed with ``(optbench:<config>
pid=..., ip=...)``; while tasks are outstanding, a line a minute naming them.

Failures: a configuration that fails inside :func:`run_one` is recorded there as always. A task
that raises, or is lost (its worker killed or crashed, its node gone, cancelled, killed by Ray's
memory monitor) is recorded by the driver: ``meta.json`` with status ``failed`` and a reason
naming what happened, so it shows in results.csv and RESULTS.md; the other tasks go on. Tasks
are never retried by Ray (``max_retries=0``): a benchmark is not silently run twice; running
the same command with the same run id again runs what did not complete and skips what did
(``meta.json`` status ``ok`` with its Parquet files readable), moving the earlier attempt's
files to ``<config>/attempts/<time>/`` as a local run does.

Nothing finished is lost with a task: each task works in ``<work dir>/<task id>/`` on its node
(:data:`WORK_DIR_ENV`, default the system's temporary folder), where its phases journal every
finished request; the folder is removed once the driver has the files. When a task is lost,
the driver takes that folder as the configuration's failed attempt if it can read it (the
driver's own machine, or a work dir on a shared file system), so the report counts the
requests that finished before the loss; otherwise the reason says on which node and where
the folder was left.

Ray is an optional dependency (``pip install 'optbench[ray]'``); this module imports it only
when a run asks for it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import os
import shutil
import socket
import sys
import tarfile
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from optbench.config import ServerConfig
from optbench.exceptions import ConfigError, OptbenchError
from optbench.files import atomic_write_text
from optbench.run import config_meta, is_complete, run_one, set_aside_earlier_attempt

INSTALL_HINT = "pip install 'optbench[ray]'"
#: Seconds between the driver's "still running" lines.
HEARTBEAT_S = 60.0
#: Environment variables of the driver that every task gets (optbench's own settings, e.g.
#: ``OPTBENCH_EMBEDDING_MODEL``), besides those the configurations' ``server.api_key_env`` name.
FORWARDED_ENV_PREFIX = "OPTBENCH_"
#: The environment variable naming the folder, on each node, where tasks work
#: (``<it>/optbench-ray/<task id>/``); default the system's temporary folder. Forwarded to the
#: tasks like every ``OPTBENCH_`` variable.
WORK_DIR_ENV = "OPTBENCH_RAY_WORK_DIR"
#: A task's description of itself in its work folder: node, worker pid, task id.
TASK_FILE = "task.json"


def _log(msg: str) -> None:
    print(f"[optbench ray] {msg}", file=sys.stderr, flush=True)


def import_ray() -> ModuleType:
    """The ``ray`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray needs Ray, which is not installed for {sys.executable}: {INSTALL_HINT}") from None
    return ray


def default_gpus(cfg: ServerConfig) -> float:
    """The GPUs a configuration's server uses, from its ``[server]`` settings: vLLM's
    ``tensor_parallel_size`` and SGLang's ``tp_size`` (default 1), 1 for llama.cpp with
    ``gpu_layers`` above 0, else 0 (llama.cpp on CPU, ``openai``)."""
    if cfg.engine == "vllm":
        return float(cfg.server.get("tensor_parallel_size", 1))
    if cfg.engine == "sglang":
        return float(cfg.server.get("tp_size", 1))
    if cfg.engine == "llama_cpp":
        return 1.0 if cfg.server.get("gpu_layers", 0) > 0 else 0.0
    return 0.0


def task_options(cfg: ServerConfig) -> dict[str, Any]:
    """The Ray task options of a configuration, from its ``[resources]`` table."""
    r = cfg.resources
    opts: dict[str, Any] = {
        "num_cpus": r.get("num_cpus", 1),
        "num_gpus": r.get("num_gpus", default_gpus(cfg)),
    }
    if "accelerator_type" in r:
        opts["accelerator_type"] = r["accelerator_type"]
    if r.get("resources"):
        opts["resources"] = dict(r["resources"])
    if r.get("labels"):
        opts["label_selector"] = dict(r["labels"])
    return opts


def _where(cfg: ServerConfig) -> str:
    return str(cfg.path) if cfg.path else cfg.name


def _storage_fs(storage: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path in it) of a folder or URI."""
    from pyarrow import fs

    if "://" not in storage:
        return fs.LocalFileSystem(), str(Path(storage).resolve())
    try:
        return fs.FileSystem.from_uri(storage)
    except Exception as e:  # pyarrow raises ArrowInvalid / ArrowNotImplementedError / OSError
        raise ConfigError(f"--ray-storage {storage}: {e}") from None


def _pack(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(folder, arcname=".")
    return buf.getvalue()


def _unpack(data: bytes, into: Path) -> None:
    """Extracts a task's archive: regular files and folders only, all inside ``into``."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        members = tar.getmembers()
        for m in members:
            parts = Path(m.name).parts
            if not (m.isfile() or m.isdir()) or Path(m.name).is_absolute() or ".." in parts:
                raise OptbenchError(f"unexpected entry {m.name!r} in a task's results")
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: the same checks, by tarfile
            tar.extractall(into, members=members, filter="data")
        else:
            tar.extractall(into, members=members)


def _dataset_on_node(dataset: tuple[str, bytes] | None, tmp: Path) -> Path | None:
    """The dataset file on this node: the driver's own path when it holds the same bytes here
    (one machine, or a shared file system), else a copy in the task's temporary folder."""
    if dataset is None:
        return None
    path, data = dataset
    try:
        if Path(path).read_bytes() == data:
            return Path(path)
    except OSError:
        pass
    copy = tmp / Path(path).name
    copy.write_bytes(data)
    return copy


def task_work_dir(task_id: str) -> Path:
    """The folder a task works in on its node (see :data:`WORK_DIR_ENV`)."""
    return Path(os.environ.get(WORK_DIR_ENV) or tempfile.gettempdir()) / "optbench-ray" / task_id


def run_config_task(
    cfg: ServerConfig,
    profile: str,
    dataset: tuple[str, bytes] | None,
    progress: bool,
    cwd: str,
    storage: str | None,
    run_id: str,
    options: dict[str, Any],
    run_settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The body of a configuration's Ray task: :func:`run_one` in a temporary folder (with the
    run's ``run_settings``: ``calibrate``, ``trials``), then the folder back to the driver
    (returned as a tar archive, or written under ``storage``)."""
    import ray

    ctx = ray.get_runtime_context()
    node = {
        "node_ip": ray.util.get_node_ip_address(),
        "node_id": ctx.get_node_id(),
        "task_id": ctx.get_task_id(),
        "worker_pid": os.getpid(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "options": options,
    }
    _log(f"{cfg.name}: running on {node['node_ip']} (pid {os.getpid()}, GPUs {node['gpu_ids'] or 'none'})")
    work = task_work_dir(node["task_id"])
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(work / TASK_FILE, json.dumps(node, indent=1, default=str) + "\n")
    # Relative paths in a configuration mean what they mean for the driver, where the same
    # folder exists on this node (the same machine, a shared file system or the same image).
    before = os.getcwd()
    if Path(cwd).is_dir():
        os.chdir(cwd)
    try:
        run_dir = work / "run"
        data = _dataset_on_node(dataset, work)
        outcome = run_one(cfg, run_dir, profile, data, progress, **(run_settings or {}))
        meta_file = outcome.directory / "meta.json"
        meta = json.loads(meta_file.read_text())
        meta["ray"] = node
        atomic_write_text(meta_file, json.dumps(meta, indent=1, default=str) + "\n")
        result: dict[str, Any] = {"status": outcome.status, "reason": outcome.reason, "archive": None}
        if storage is None:
            result["archive"] = _pack(outcome.directory)
        else:
            from pyarrow import fs

            filesystem, base = _storage_fs(storage)
            target = f"{base.rstrip('/')}/{run_id}/{cfg.name}"
            filesystem.create_dir(target, recursive=True)
            fs.copy_files(str(outcome.directory), target, destination_filesystem=filesystem)
        # The files are on their way to the driver: the work folder holds nothing more. (A task
        # that dies before this line leaves it, with its journals, for the driver to recover.)
        shutil.rmtree(work, ignore_errors=True)
        return result
    finally:
        os.chdir(before)


def _lost_reason(ray: ModuleType, e: BaseException) -> str:
    """What happened to a task that did not return, in a line."""
    ex = ray.exceptions
    detail = (str(e).strip().splitlines() or [""])[0][:300]
    kind = type(e).__name__
    if isinstance(e, ex.RayTaskError):
        cause = e.cause if getattr(e, "cause", None) is not None else e
        text = (str(cause).strip().splitlines() or [""])[0][:300]
        return f"the Ray task raised {type(cause).__name__}: {text}"
    if isinstance(e, ex.TaskCancelledError):
        return f"the Ray task was cancelled ({kind})"
    if isinstance(e, ex.OutOfMemoryError):
        return f"Ray's memory monitor killed the task's worker ({kind}): {detail}"
    if isinstance(e, ex.NodeDiedError):
        return f"the Ray node running the task died ({kind}): {detail}"
    if isinstance(e, ex.WorkerCrashedError):
        return f"the Ray worker running the task died: killed or crashed ({kind})"
    return f"the Ray task was lost ({kind}): {detail}"


def _failed_meta(cfg: ServerConfig, profile: str, reason: str, options: dict[str, Any]) -> dict[str, Any]:
    """``meta.json`` of a configuration whose task never returned its own."""
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return {
        **config_meta(cfg, profile),
        "status": "failed",
        "reason": reason,
        "finished_utc": now,
        "ray": {"options": options},
    }


def _replace_folder(target: Path, fill: Any) -> None:
    """Replaces ``target`` by a folder that ``fill(folder)`` writes, so a configuration's folder
    never mixes files of two attempts; an earlier attempt's files go to ``attempts/<time>/`` in
    the new folder (:func:`optbench.run.set_aside_earlier_attempt`), never deleted."""
    incoming = Path(tempfile.mkdtemp(prefix=f".{target.name}.incoming-", dir=target.parent))
    try:
        fill(incoming)
        if target.exists():
            set_aside_earlier_attempt(target, keep_answer_journal=False)
            if (target / "attempts").is_dir():
                (target / "attempts").rename(incoming / "attempts")
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        incoming.rename(target)
    finally:
        if incoming.exists():
            shutil.rmtree(incoming, ignore_errors=True)


def _fits_now(ray: ModuleType, opts: dict[str, Any]) -> bool:
    """Whether some live node has every resource the task asks for (labels aside)."""
    want = {"CPU": opts["num_cpus"], "GPU": opts["num_gpus"], **opts.get("resources", {})}
    if "accelerator_type" in opts:
        want[f"accelerator_type:{opts['accelerator_type']}"] = 0.001
    for node in ray.nodes():
        have = node.get("Resources", {})
        if node.get("Alive") and all(have.get(k, 0) >= v for k, v in want.items() if v > 0):
            return True
    return False


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A :class:`ConfigError` unless something answers at a ``HOST:PORT`` or
    ``ray://HOST:PORT`` address (Ray itself retries an unreachable one for minutes)."""
    target = address[len("ray://") :] if address.startswith("ray://") else address
    host, sep, port = target.rpartition(":")
    if target in ("auto", "local") or not sep or not port.isdigit():
        return  # Ray's own names, or a form Ray rejects at once with its own message
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(
            f"--ray {address}: nothing answers at {host}:{port} ({e}); is the cluster up "
            "(`ray status` on its head) and is this its head's address?"
        ) from None


def _env_for(cfgs: Sequence[ServerConfig]) -> dict[str, str]:
    names = {k for k in os.environ if k.startswith(FORWARDED_ENV_PREFIX)}
    names |= {c.server["api_key_env"] for c in cfgs if isinstance(c.server.get("api_key_env"), str)}
    return {k: os.environ[k] for k in sorted(names) if k in os.environ}


@dataclass
class RayRun:
    """A run's configurations checked for Ray before any work starts; :meth:`run` runs them."""

    ray: ModuleType
    address: str | None
    storage: str | None
    cfgs: list[ServerConfig]
    options: dict[str, dict[str, Any]]

    def run(self, run_dir: Path, profile: str, dataset: Path | None, progress: bool, **run_settings: Any) -> None:
        """Runs every configuration not already complete in ``run_dir`` as a Ray task and
        places each one's folder in ``run_dir``; returns when every task has ended.
        ``run_settings`` (``calibrate``, ``trials``) go to each task's :func:`run_one`."""
        ray = self.ray
        todo = []
        for cfg in self.cfgs:
            if is_complete(run_dir / cfg.name, evaluated=dataset is not None):
                _log(f"{cfg.name}: already complete in {run_dir / cfg.name} (status ok): skipped")
            else:
                todo.append(cfg)
        if not todo:
            return
        owns = not ray.is_initialized()
        if owns:
            _log(f"connecting to the Ray cluster at {self.address or 'the default address'}")
            try:
                ray.init(address=self.address, log_to_driver=True)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ConfigError(f"--ray {self.address or ''}: cannot start or reach a Ray cluster: {e}") from None
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._run(todo, run_dir, profile, dataset, progress, run_settings)
        finally:
            if owns:
                ray.shutdown()

    def _run(
        self,
        todo: list[ServerConfig],
        run_dir: Path,
        profile: str,
        dataset: Path | None,
        progress: bool,
        run_settings: dict[str, Any],
    ) -> None:
        ray = self.ray
        shipped = None if dataset is None else ray.put((str(dataset.resolve()), dataset.read_bytes()))
        task = ray.remote(run_config_task)
        env = _env_for(todo)
        pending: dict[Any, ServerConfig] = {}
        for cfg in todo:
            opts = self.options[cfg.name]
            # Several configurations may share a node: each server gets a free port there.
            body = replace(cfg, port=None)
            ref = task.options(
                **opts, name=f"optbench:{cfg.name}", max_retries=0, runtime_env={"env_vars": env} if env else None
            ).remote(body, profile, shipped, progress, os.getcwd(), self.storage, run_dir.name, opts, run_settings)
            pending[ref] = cfg
            asks = ", ".join(f"{k} {v}" for k, v in opts.items())
            _log(f"{cfg.name}: submitted ({asks})")
            if not _fits_now(ray, opts):
                _log(f"{cfg.name}: no node has these resources now: it waits until one does (or Ctrl-C)")
        finished: list[str] = []
        started = time.monotonic()
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=HEARTBEAT_S)
                if not done:
                    names = ", ".join(c.name for c in pending.values())
                    _log(f"still running after {time.monotonic() - started:.0f} s: {names}")
                    continue
                for ref in done:
                    cfg = pending.pop(ref)
                    self._collect(ref, cfg, run_dir, profile)
                    finished.append(cfg.name)
        except KeyboardInterrupt:
            for ref, cfg in pending.items():
                ray.cancel(ref, force=True)
            for ref, cfg in pending.items():
                with contextlib.suppress(Exception):  # the worker's end, for its files to be whole
                    ray.wait([ref], timeout=5.0)
                self._record_failed(
                    cfg,
                    run_dir,
                    profile,
                    "interrupted: the Ray task was cancelled",
                    work=task_work_dir(ref.task_id().hex()),
                )
            raise
        finally:
            _order(run_dir, [c.name for c in todo if c.name in finished])

    def _collect(self, ref: Any, cfg: ServerConfig, run_dir: Path, profile: str) -> None:
        ray = self.ray
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as e:
            reason = _lost_reason(ray, e)
            _log(f"{cfg.name}: FAILED: {reason}")
            self._record_failed(cfg, run_dir, profile, reason, work=task_work_dir(ref.task_id().hex()))
            return
        try:
            if result["archive"] is not None:
                _replace_folder(run_dir / cfg.name, lambda d: _unpack(result["archive"], d))
            else:
                self._fetch(cfg, run_dir)
        except (OSError, OptbenchError, tarfile.TarError) as e:
            reason = f"the task's results could not be written back: {type(e).__name__}: {e}"
            _log(f"{cfg.name}: FAILED: {reason}")
            self._record_failed(cfg, run_dir, profile, reason, traceback.format_exc())
            return
        if result["status"] == "ok":
            _log(f"{cfg.name}: finished ok")
        else:
            _log(f"{cfg.name}: finished, failed: {result['reason']}")

    def _fetch(self, cfg: ServerConfig, run_dir: Path) -> None:
        from pyarrow import fs

        assert self.storage is not None
        filesystem, base = _storage_fs(self.storage)
        source = f"{base.rstrip('/')}/{run_dir.name}/{cfg.name}"
        _replace_folder(
            run_dir / cfg.name,
            lambda d: fs.copy_files(source, str(d), source_filesystem=filesystem),
        )

    def _record_failed(
        self,
        cfg: ServerConfig,
        run_dir: Path,
        profile: str,
        reason: str,
        trace: str | None = None,
        work: Path | None = None,
    ) -> None:
        """Writes a configuration whose task never returned as ``failed``. With the task's
        ``work`` folder readable here, its files (the server's log, the phases' journals) become
        the configuration's, so the report counts the requests that finished before the loss."""
        meta = _failed_meta(cfg, profile, reason, self.options[cfg.name])
        if trace:
            meta["traceback"] = trace
        left = None if work is None else work / "run" / cfg.name
        if work is not None and left is not None and left.is_dir():
            with contextlib.suppress(OSError, ValueError):
                earlier = json.loads((left / "meta.json").read_text())
                # What the attempt recorded (start time, phase, base URL, calibration), with the
                # driver's account of how it ended.
                meta = {**earlier, **{k: v for k, v in meta.items() if k != "ray"}, "ray": meta["ray"]}
            with contextlib.suppress(OSError, ValueError):
                meta["ray"] = {**json.loads((work / TASK_FILE).read_text()), **meta["ray"]}
            _log(f"{cfg.name}: kept the lost task's files from {left}")
        elif left is not None:
            meta["reason"] = (
                f"{reason}; the files it had written, with the requests that finished, stay on the node that "
                f"ran it, in {left}"
            )
        text = json.dumps(meta, indent=1, default=str) + "\n"

        def fill(d: Path) -> None:
            if left is not None and left.is_dir():
                for p in left.iterdir():
                    if p.name != "meta.json" and not p.name.endswith(".lock"):
                        (shutil.copytree if p.is_dir() else shutil.copy2)(p, d / p.name)
            atomic_write_text(d / "meta.json", text)

        _replace_folder(run_dir / cfg.name, fill)
        if work is not None and left is not None and left.is_dir():
            shutil.rmtree(work, ignore_errors=True)


def _order(run_dir: Path, names: list[str]) -> None:
    """Stamps the ``meta.json`` files of ``names`` in that order (the report lists configurations
    by it), so a run's table keeps the command's order however the tasks finished."""
    base = time.time() - len(names) * 0.01
    for i, name in enumerate(names):
        meta = run_dir / name / "meta.json"
        if meta.exists():
            t = base + i * 0.01
            os.utime(meta, (t, t))


def prepare(cfgs: Sequence[ServerConfig], address: bool | str, storage: str | None) -> RayRun:
    """Checks before any work starts that Ray is installed and that every configuration's
    resources make valid Ray task options; ``address`` is ``True`` for Ray's default (the
    cluster ``RAY_ADDRESS`` or ``ray start`` on this machine names, else a new local one) or an
    address (``auto``, ``HOST:PORT``, ``ray://HOST:10001``)."""
    if address is False:
        raise ConfigError("ray must be True or a cluster address")
    if isinstance(address, str) and not address.strip():
        raise ConfigError("--ray: the cluster address is empty")
    ray = import_ray()
    if isinstance(address, str):
        check_reachable(address)
    elif os.environ.get("RAY_ADDRESS") and not ray.is_initialized():
        check_reachable(os.environ["RAY_ADDRESS"])
    options = {}
    task = ray.remote(run_config_task)
    for cfg in cfgs:
        opts = task_options(cfg)
        try:
            task.options(**opts)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{_where(cfg)}: [resources] is not valid for Ray {ray.__version__}: {e}") from None
        options[cfg.name] = opts
    if storage is not None:
        if "://" not in storage:  # the same folder for the tasks, whatever their working directory
            storage = str(Path(storage).resolve())
        _storage_fs(storage)
    return RayRun(ray, None if address is True else address, storage, list(cfgs), options)
