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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from optbench.config import ServerConfig, load_config
from optbench.datasets import build_test_dataset
from optbench.evaluate import evaluate
from optbench.exceptions import ConfigError, OptbenchError
from optbench.loadtest import load_test
from optbench.results import new_run_id
from optbench.servers.engines import serve

#: The brief's load test and the full dataset.
BRIEF_LOAD_TEST: dict[str, Any] = dict(num_requests=100, concurrency=8, input_tokens=2048, output_tokens=1024,
                                       warmup=2, temperature=0.0)

#: Profiles shrink the work with one flag. ``quick`` fits a CPU machine: a short load test and
#: a small slice of every category with short generations.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {"load_test": {}, "evaluation": {}},
    "quick": {
        "load_test": dict(num_requests=12, concurrency=4, input_tokens=256, output_tokens=48, warmup=1, ignore_eos=True),
        "evaluation": dict(limit=2, max_tokens={"qa": 24, "reasoning": 96, "chat": 48, "code": 96}),
    },
}


@dataclass
class ConfigOutcome:
    """What happened to one configuration in a run."""

    name: str
    status: str  # "ok" or "failed"
    reason: str | None
    directory: Path


def _log(msg: str) -> None:
    print(f"[optbench run] {msg}", file=sys.stderr, flush=True)


def default_dataset_source() -> str | None:
    """Where the demo gets its evaluation data: ``../shared/datasets`` when it exists (this
    project's development machines), else the Hugging Face hub when ``datasets`` is installed,
    else nowhere (quality is then skipped)."""
    import importlib.util

    local = Path("..") / "shared" / "datasets"
    if (local / "gsm8k_test.jsonl").exists():
        return str(local)
    if importlib.util.find_spec("datasets") is not None:
        return "hub"
    return None


def default_embedding_model() -> str | None:
    """The chat scorer's model for the demo: ``../shared/models/all-MiniLM-L6-v2`` when it
    exists, else the hub id when ``huggingface_hub`` is installed, else None (chat is skipped)."""
    import importlib.util

    local = Path("..") / "shared" / "models" / "all-MiniLM-L6-v2"
    if (local / "model.onnx").exists():
        return str(local)
    if os.environ.get("OPTBENCH_EMBEDDING_MODEL") or importlib.util.find_spec("huggingface_hub") is not None:
        return None  # the scorer's own default (env var or hub id) will do
    return ""


def ensure_dataset(dataset: str | os.PathLike[str], source: str | None) -> Path:
    """The dataset file, built first from ``source`` (a folder or ``hub``) when it is missing."""
    path = Path(dataset)
    if path.is_file():
        return path
    if source is None:
        raise ConfigError(f"{path} does not exist: build it with `optbench dataset build --source ...` or pass --dataset-source")
    _log(f"building the evaluation dataset {path} from {source}")
    build_test_dataset(source, output=path)
    return path


def run_one(cfg: ServerConfig, run_dir: Path, profile: str, dataset: Path | None, progress: bool) -> ConfigOutcome:
    """Serves, load-tests and evaluates one configuration; never raises for the configuration's
    own failures (they are recorded in meta.json)."""
    out = run_dir / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    # The brief's defaults, shrunk by the profile; what the configuration sets explicitly wins.
    lt = {**BRIEF_LOAD_TEST, **PROFILES[profile]["load_test"], **cfg.load_test}
    ev = {**PROFILES[profile]["evaluation"], **cfg.evaluation}
    meta: dict[str, Any] = {"name": cfg.name, "engine": cfg.engine, "model": cfg.model, "baseline": cfg.baseline,
                            "config_file": str(cfg.path) if cfg.path else None, "profile": profile,
                            "load_test": lt, "evaluation": {k: v for k, v in ev.items()},
                            "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    phase = "start"
    try:
        _log(f"{cfg.name}: starting {cfg.engine} ({cfg.model})")
        with serve(cfg, log_dir=out) as server:
            meta.update(base_url=server.base_url, engine_version=server.version, gpu=server.gpu)
            phase = "load test"
            _log(f"{cfg.name}: load test ({lt['num_requests']} requests, concurrency {lt['concurrency']})")
            result = load_test(server.base_url, server.model, label=cfg.name, progress=progress, **lt)
            result.to_parquet(out / "requests.parquet")
            if dataset is not None:
                phase = "evaluation"
                _log(f"{cfg.name}: evaluation ({dataset})")
                evaluation = evaluate(server.base_url, server.model, dataset=dataset, label=cfg.name, progress=progress, **ev)
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
    profile: str = "full",
    dataset: str | os.PathLike[str] | None = "data/test_dataset.json",
    dataset_source: str | None = None,
    results_dir: str | os.PathLike[str] = "results",
    report_path: str | os.PathLike[str] | None = "RESULTS.md",
    run_id: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Runs every configuration in turn and writes ``results/results.csv`` and RESULTS.md.

    A configuration that fails is recorded with its reason and the others still run.
    ``dataset=None`` skips the quality evaluation (speed only). Returns the report (see
    :func:`optbench.report.build_report`)."""
    from optbench.report import build_report

    if profile not in PROFILES:
        raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    cfgs = [c if isinstance(c, ServerConfig) else load_config(c) for c in configs]
    if not cfgs:
        raise ConfigError("give at least one configuration")
    names = [c.name for c in cfgs]
    if len(set(names)) != len(names):
        raise ConfigError(f"configuration names must differ, got {names}")
    data = None if dataset is None else ensure_dataset(dataset, dataset_source)
    run_dir = Path(results_dir) / "runs" / (run_id or new_run_id("run"))
    for i, cfg in enumerate(cfgs, 1):
        _log(f"configuration {i}/{len(cfgs)}: {cfg.name}")
        run_one(cfg, run_dir, profile, data, progress)
    return build_report(run_dir, results_dir=results_dir, report_path=report_path)
