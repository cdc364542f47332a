"""``optbench run``: for each configuration start its server, warm up, load-test, evaluate, stop;
then write the comparison table and RESULTS.md.

Layout of a run (``results/runs/<run id>/``)::

    <config name>/<config name>.log  the server's log
    <config name>/requests.parquet   the load test's per-request rows
    <config name>/samples.parquet    the evaluation's per-sample rows
    <config name>/meta.json          status, failure reason, engine version, GPU, settings

``results/results.csv`` and ``RESULTS.md`` are rebuilt from those files (``optbench report``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from optbench.config import ServerConfig, load_config
from optbench.datasets import build_test_dataset
from optbench.evaluate import evaluate
from optbench.exceptions import ConfigError, OptbenchError
from optbench.loadtest import load_test
from optbench.options import EvaluationOptions, LoadTestOptions
from optbench.results import new_run_id
from optbench.servers.engines import serve


@dataclass(frozen=True)
class Profile:
    """The options a run starts from, before each configuration's own ``[load_test]`` and
    ``[evaluation]`` tables."""

    load_test: LoadTestOptions
    evaluation: EvaluationOptions
    doc: str


#: ``reference``: 100 requests at concurrency 8 with 2048-token prompts and 1024 output tokens
#: (2 warm-up requests), then the whole dataset. ``quick`` fits a CPU machine: a short load test
#: and a small slice of every category with short generations.
PROFILES: dict[str, Profile] = {
    "reference": Profile(
        LoadTestOptions(num_requests=100, concurrency=8, input_tokens=2048, output_tokens=1024, warmup=2),
        EvaluationOptions(),
        "100 requests at concurrency 8, 2048-token prompts, 1024 output tokens; the whole dataset",
    ),
    "quick": Profile(
        LoadTestOptions(num_requests=12, concurrency=4, input_tokens=256, output_tokens=48, warmup=1, ignore_eos=True),
        EvaluationOptions(limit=2, max_tokens={"qa": 24, "reasoning": 96, "chat": 48, "code": 96}),
        "12 requests at concurrency 4, 256-token prompts, 48 output tokens; 2 items per category",
    ),
}
#: Former profile names, still accepted with a deprecation warning.
RENAMED_PROFILES = {"full": "reference"}


def profile_named(name: str) -> Profile:
    """The profile called ``name`` (a former name warns and still works)."""
    if name in RENAMED_PROFILES:
        warnings.warn(
            f"profile {name!r} is deprecated: use {RENAMED_PROFILES[name]!r} (the same thing)",
            DeprecationWarning,
            stacklevel=3,
        )
        name = RENAMED_PROFILES[name]
    if name not in PROFILES:
        raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, got {name!r}")
    return PROFILES[name]


def __getattr__(name: str) -> Any:
    if name == "BRIEF_LOAD_TEST":  # the reference profile's load test under its former name
        warnings.warn(
            "optbench.run.BRIEF_LOAD_TEST is deprecated: use PROFILES['reference'].load_test",
            DeprecationWarning,
            stacklevel=2,
        )
        return PROFILES["reference"].load_test.to_dict()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class ConfigOutcome:
    """What happened to one configuration in a run."""

    name: str
    status: str  # "ok" or "failed"
    reason: str | None
    directory: Path


def _log(msg: str) -> None:
    print(f"[optbench run] {msg}", file=sys.stderr, flush=True)


def ensure_dataset(dataset: str | os.PathLike[str], source: str | None) -> Path:
    """The dataset file, built first from ``source`` (a folder or ``hub``) when it is missing."""
    path = Path(dataset)
    if path.is_file():
        return path
    if source is None:
        raise ConfigError(
            f"{path} does not exist: build it with `optbench dataset build --source ...` or pass --dataset-source"
        )
    _log(f"building the evaluation dataset {path} from {source}")
    build_test_dataset(source, output=path)
    return path


def run_one(cfg: ServerConfig, run_dir: Path, profile: str, dataset: Path | None, progress: bool) -> ConfigOutcome:
    """Serves, load-tests and evaluates one configuration; never raises for the configuration's
    own failures (they are recorded in meta.json)."""
    out = run_dir / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    # The profile's options; what the configuration sets explicitly wins.
    chosen = profile_named(profile)
    lt = LoadTestOptions.make(chosen.load_test, **cfg.load_test)
    ev = EvaluationOptions.make(chosen.evaluation, **cfg.evaluation)
    meta: dict[str, Any] = {
        "name": cfg.name,
        "engine": cfg.engine,
        "model": cfg.model,
        "baseline": cfg.baseline,
        "config_file": str(cfg.path) if cfg.path else None,
        "profile": profile,
        "load_test": lt.to_dict(),
        "evaluation": ev.to_dict(),
        "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    phase = "start"
    try:
        _log(f"{cfg.name}: starting {cfg.engine} ({cfg.model})")
        with serve(cfg, log_dir=out) as server:
            meta.update(base_url=server.base_url, engine_version=server.version, gpu=server.gpu)
            phase = "load test"
            _log(f"{cfg.name}: load test ({lt.num_requests} requests, concurrency {lt.concurrency})")
            result = load_test(server.base_url, server.model, lt, label=cfg.name, progress=progress)
            result.to_parquet(out / "requests.parquet")
            if dataset is not None:
                phase = "evaluation"
                _log(f"{cfg.name}: evaluation ({dataset})")
                evaluation = evaluate(
                    server.base_url, server.model, ev, dataset=dataset, label=cfg.name, progress=progress
                )
                evaluation.to_parquet(out / "samples.parquet")
                if "code_isolation" in evaluation.summary:
                    meta["code_isolation"] = evaluation.summary["code_isolation"]
        meta.update(status="ok", reason=None)
    except KeyboardInterrupt:
        meta.update(status="failed", reason=f"interrupted during {phase}")
        _write_meta(out, meta)
        raise
    except (OptbenchError, OSError) as e:
        meta.update(status="failed", reason=f"{phase}: {e}")
        _log(f"{cfg.name}: FAILED in {phase}: {e}")
    except Exception as e:  # a bug must not lose the other configurations' results
        meta.update(status="failed", reason=f"{phase}: {type(e).__name__}: {e}", traceback=traceback.format_exc())
        _log(f"{cfg.name}: FAILED in {phase}: {type(e).__name__}: {e}")
    meta["finished_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    _write_meta(out, meta)
    return ConfigOutcome(cfg.name, meta["status"], meta.get("reason"), out)


def _write_meta(out: Path, meta: dict[str, Any]) -> None:
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")


def run(
    configs: Sequence[str | os.PathLike[str] | ServerConfig],
    *,
    profile: str = "reference",
    dataset: str | os.PathLike[str] | None = "data/test_dataset.json",
    dataset_source: str | None = None,
    results_dir: str | os.PathLike[str] = "results",
    report_path: str | os.PathLike[str] | None = "RESULTS.md",
    run_id: str | None = None,
    progress: bool = True,
    ray: bool | str | None = None,
    ray_storage: str | None = None,
) -> dict[str, Any]:
    """Runs every configuration in turn and writes ``results/results.csv`` and RESULTS.md.

    A configuration that fails is recorded with its reason and the others still run.
    ``dataset=None`` skips the quality evaluation (speed only). ``ray``: run the configurations
    as tasks on a Ray cluster instead (``True``: Ray's default cluster, else its address;
    ``ray_storage``: a folder or URI the tasks send their files through; see
    :mod:`optbench.ray_runner`). Returns the report (see :func:`optbench.report.build_report`)."""
    from optbench.report import build_report

    profile_named(profile)  # an unknown name fails before any server starts
    profile = RENAMED_PROFILES.get(profile, profile)
    cfgs = [c if isinstance(c, ServerConfig) else load_config(c) for c in configs]
    if not cfgs:
        raise ConfigError("give at least one configuration")
    names = [c.name for c in cfgs]
    if len(set(names)) != len(names):
        raise ConfigError(f"configuration names must differ, got {names}")
    on_ray = None
    if ray is not None and ray is not False:
        from optbench.ray_runner import prepare

        on_ray = prepare(cfgs, ray, ray_storage)  # Ray installed, resources valid: before any work
    elif ray_storage is not None:
        raise ConfigError("--ray-storage needs --ray")
    data = None if dataset is None else ensure_dataset(dataset, dataset_source)
    run_dir = Path(results_dir) / "runs" / (run_id or new_run_id("run"))
    if on_ray is not None:
        on_ray.run(run_dir, profile, data, progress)
        return build_report(run_dir, results_dir=results_dir, report_path=report_path)
    for i, cfg in enumerate(cfgs, 1):
        _log(f"configuration {i}/{len(cfgs)}: {cfg.name}")
        run_one(cfg, run_dir, profile, data, progress)
    return build_report(run_dir, results_dir=results_dir, report_path=report_path)
