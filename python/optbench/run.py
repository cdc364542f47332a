"""``optbench run``: for each configuration start its server, warm up, load-test, evaluate, stop;
then write the comparison table and RESULTS.md.

Layout of a run (``results/runs/<run id>/``)::

    <config name>/<config name>.log  the server's log
    <config name>/requests.parquet   the load test's per-request rows (trial 1)
    <config name>/requests_trial<i>.parquet  trial i's rows, with ``trials`` > 1 (the same load test again)
    <config name>/samples.parquet    the evaluation's per-sample rows
    <config name>/under_load.parquet the answers at concurrency 1 and N, item by item (quality under load)
    <config name>/meta.json          status, failure reason, engine version, GPU, settings
    <config name>/*.journal.jsonl    while a phase runs: each request as it finishes
    <config name>/under_load.journal/  while quality under load runs: its answers as they finish

``results/results.csv`` and ``RESULTS.md`` are rebuilt from those files (``optbench report``).

Nothing paid for is lost: meta.json says ``running`` (and the phase) from the start, every
file is written whole or not at all, and each phase's requests go to a journal as they
finish. A run killed mid-way (SIGKILL, the OOM killer) leaves a configuration the report shows
as ``interrupted`` with the requests its journal holds; SIGTERM and Ctrl-C stop the run, keep
the finished requests and still write the report. Running the same command again with
``--resume`` (or the same ``run_id``) skips the configurations already complete and runs the
others again, moving their earlier files to ``<config name>/attempts/<time>/``, except the
quality-under-load journal: its answers are reused when their settings match.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from optbench import evidence
from optbench.calibration import summary_line as calibration_line
from optbench.compare import trial_parquet
from optbench.config import ServerConfig, load_config, run_settings
from optbench.datasets import build_test_dataset
from optbench.evaluate import evaluate
from optbench.exceptions import ConfigError, OptbenchError
from optbench.files import atomic_write_text, utc_stamp
from optbench.loadtest import load_test
from optbench.options import EvaluationOptions, LoadTestOptions
from optbench.results import JOURNAL as LOAD_TEST_JOURNAL
from optbench.results import ensure_results_dir, new_run_id
from optbench.servers.engines import serve
from optbench.urls import redact_urls


#: The most load-test trials per configuration.
MAX_TRIALS = 1000

#: The evaluation's answers as they finish (JSON lines), while it runs.
EVALUATION_JOURNAL = "samples.journal.jsonl"
#: Quality under load's answers as they finish (a folder, :mod:`optbench.answer_journal`): kept
#: in place when an interrupted configuration runs again, which then resumes from them.
UNDER_LOAD_JOURNAL = "under_load.journal"


@dataclass(frozen=True)
class Profile:
    """The options a run starts from, before each configuration's own ``[load_test]`` and
    ``[evaluation]`` tables."""

    load_test: LoadTestOptions
    evaluation: EvaluationOptions
    doc: str


#: ``reference``: 100 requests at concurrency 8 with 2048-token prompts and 1024 output tokens
#: (2 warm-up requests), then the whole dataset, generated again at concurrency 1 to compare with the
#: answers at the load test's concurrency (``under_load_concurrency``). ``quick`` fits a CPU machine: a short load test
#: and a small slice of every category with short generations.
PROFILES: dict[str, Profile] = {
    "reference": Profile(
        LoadTestOptions(num_requests=100, concurrency=8, input_tokens=2048, output_tokens=1024, warmup=2),
        EvaluationOptions(under_load_concurrency=8),
        "100 requests at concurrency 8, 2048-token prompts, 1024 output tokens; the whole dataset, "
        "and its answers at concurrency 1 against 8 (quality under load)",
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


def evaluation_options(chosen: Profile, cfg: ServerConfig, lt: LoadTestOptions) -> EvaluationOptions:
    """The profile's evaluation options with the configuration's ``[evaluation]`` keys; a
    profile's quality under load (``under_load_concurrency``) follows the configuration's
    load-test concurrency ``lt`` unless the configuration sets its own."""
    ev = EvaluationOptions.make(chosen.evaluation, **cfg.evaluation)
    if ev.under_load_concurrency is not None and "under_load_concurrency" not in cfg.evaluation and lt.concurrency:
        ev = EvaluationOptions.make(ev, under_load_concurrency=lt.concurrency)
    return ev


def config_meta(cfg: ServerConfig, profile: str) -> dict[str, Any]:
    """What every ``meta.json`` of a configuration starts with: its identity and the options it
    runs with (the profile's, with what the configuration sets explicitly winning)."""
    chosen = profile_named(profile)
    lt = LoadTestOptions.make(chosen.load_test, **cfg.load_test)
    return {
        "name": cfg.name,
        "engine": cfg.engine,
        "model": cfg.model,
        "baseline": cfg.baseline,
        "config_file": str(cfg.path) if cfg.path else None,
        "profile": profile,
        "load_test": lt.to_dict(),
        "evaluation": evaluation_options(chosen, cfg, lt).to_dict(),
    }


def run_one(
    cfg: ServerConfig,
    run_dir: Path,
    profile: str,
    dataset: Path | None,
    progress: bool,
    calibrate: bool = True,
    trials: int = 1,
) -> ConfigOutcome:
    """Serves, load-tests and evaluates one configuration; never raises for the configuration's
    own failures (they are recorded in meta.json). Ctrl-C or SIGTERM keeps the finished
    requests, records the configuration as ``interrupted`` and raises KeyboardInterrupt.
    With ``calibrate`` the client's error is measured first (:mod:`optbench.calibration`);
    the server's ``/metrics`` and the GPUs are watched during the load test
    (:mod:`optbench.evidence`)."""
    out = run_dir / cfg.name
    set_aside_earlier_attempt(out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = profile_named(profile)
    lt = LoadTestOptions.make(chosen.load_test, **cfg.load_test)
    ev = evaluation_options(chosen, cfg, lt)
    meta = config_meta(cfg, profile)  # the same options, as JSON
    meta.update(
        {
            "trials": trials,
            "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "status": "running",
            "gpu_cost_per_hour": cfg.gpu_cost_per_hour,
        }
    )
    phase = "start"

    def enter(p: str) -> None:
        nonlocal phase
        phase = meta["phase"] = p
        _write_meta(out, meta)  # a killed run leaves the phase it died in

    try:
        enter("start")
        _log(f"{cfg.name}: starting {cfg.engine} ({cfg.model})")
        with serve(cfg, log_dir=out) as server:
            meta.update(base_url=server.base_url, engine_version=server.version, gpu=server.gpu)
            if calibrate:
                enter("calibration")
                meta["calibration"] = evidence.calibrate_for(lt)
                _log(f"{cfg.name}: {calibration_line(meta['calibration'])}")
            env = {**os.environ, **cfg.env}  # the server's: its CUDA_VISIBLE_DEVICES
            for trial in range(1, trials + 1):
                of = f", trial {trial} of {trials}" if trials > 1 else ""
                enter(f"load test{of}")
                _log(f"{cfg.name}: load test ({lt.num_requests} requests, concurrency {lt.concurrency}{of})")
                journal = out / LOAD_TEST_JOURNAL
                observer = evidence.Observer(
                    server.base_url, gpus=cfg.engine != "openai", env=env, api_key_env=lt.api_key_env
                )
                with observer as seen:
                    result = load_test(
                        server.base_urls, server.model, lt, label=cfg.name, progress=progress, journal=journal
                    )
                if trial == 1:  # the server's view and the GPU's of the first trial
                    meta.update(seen.record(result, meta.get("calibration")))
                result.to_parquet(out / trial_parquet(trial))
                _remove_journal(journal)
                if result.stop_reason == "cancelled":
                    raise KeyboardInterrupt
            if dataset is not None:
                enter("evaluation")
                _log(f"{cfg.name}: evaluation ({dataset})")
                journal = out / EVALUATION_JOURNAL
                evaluation = evaluate(
                    server.base_url,
                    server.model,
                    ev,
                    dataset=dataset,
                    label=cfg.name,
                    progress=progress,
                    journal=journal,
                )
                evaluation.to_parquet(out / "samples.parquet")
                _remove_journal(journal)
                if evaluation.summary.get("stop_reason") == "cancelled":
                    raise KeyboardInterrupt
                if "code_isolation" in evaluation.summary:
                    meta["code_isolation"] = evaluation.summary["code_isolation"]
                if ev.under_load_concurrency is not None:
                    enter("quality under load")
                    _under_load(cfg, server, ev, dataset, evaluation, out, progress)
        meta.update(status="ok", reason=None)
    except KeyboardInterrupt:
        meta.update(status="interrupted", reason=f"interrupted (Ctrl-C or SIGTERM) during {phase}")
        meta["finished_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
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


def _under_load(
    cfg: ServerConfig, server: Any, ev: EvaluationOptions, dataset: Path, evaluation: Any, out: Path, progress: bool
) -> None:
    """Quality under load: the answers at concurrency 1 against those at ``under_load_concurrency``
    (the evaluation's own answers when it ran at that concurrency), to ``under_load.parquet``."""
    from optbench.under_load import UNDER_LOAD_PARQUET, quality_under_load

    n = ev.under_load_concurrency
    _log(f"{cfg.name}: quality under load (the answers at concurrency 1 against {n})")
    result = quality_under_load(
        server.base_url,
        server.model,
        ev,
        dataset=dataset,
        label=cfg.name,
        progress=progress,
        loaded=evaluation if ev.concurrency == n else None,
        journal=out / UNDER_LOAD_JOURNAL,
        journal_target=json.dumps({"name": cfg.name, "engine": cfg.engine, "server": cfg.server}, default=str),
    )
    result.to_parquet(out / UNDER_LOAD_PARQUET)
    if "cancelled" in (result.alone.summary.get("stop_reason"), result.loaded.summary.get("stop_reason")):
        raise KeyboardInterrupt


def _write_meta(out: Path, meta: dict[str, Any]) -> None:
    # URLs without their credentials, also inside a failure's reason.
    meta = {
        k: redact_urls(v) if k in ("base_url", "reason", "traceback") and isinstance(v, str) else v
        for k, v in meta.items()
    }
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1, default=str) + "\n")


def _remove_journal(journal: Path) -> None:
    """Once a phase's Parquet is written its journal holds nothing more."""
    for path in (journal, journal.with_suffix(".json"), Path(f"{journal}.lock")):
        path.unlink(missing_ok=True)


def is_complete(out: Path, evaluated: bool) -> bool:
    """Whether a configuration's folder holds a finished result: meta.json says ``ok`` and its
    Parquet files can be read."""
    try:
        meta = json.loads((out / "meta.json").read_text())
        files = ["requests.parquet"] + (["samples.parquet"] if evaluated else [])
        for name in files:
            pq.read_metadata(out / name)
    except (OSError, ValueError, pa.ArrowException):
        return False
    return isinstance(meta, dict) and meta.get("status") == "ok"


def set_aside_earlier_attempt(out: Path, keep_answer_journal: bool = True) -> None:
    """Moves the files of an earlier, unfinished attempt at a configuration to
    ``attempts/<time>/`` inside its folder, so running it again loses nothing; with
    ``keep_answer_journal`` the quality-under-load journal stays, for the new attempt to resume
    from (a Ray task starts on its node without it, so there it goes with the rest)."""
    if not out.is_dir():
        return
    kept = ("attempts", UNDER_LOAD_JOURNAL) if keep_answer_journal else ("attempts",)
    files = [p for p in out.iterdir() if p.name not in kept]
    if not files:
        return
    stamp = utc_stamp()
    dest = out / "attempts" / stamp
    dest.mkdir(parents=True)
    for p in files:
        p.rename(dest / p.name)


def run(
    configs: Sequence[str | os.PathLike[str] | ServerConfig],
    *,
    profile: str = "reference",
    dataset: str | os.PathLike[str] | None = "data/test_dataset.json",
    dataset_source: str | None = None,
    results_dir: str | os.PathLike[str] = "results",
    report_path: str | os.PathLike[str] | None = "RESULTS.md",
    run_id: str | None = None,
    resume: bool = False,
    progress: bool = True,
    ray: bool | str | None = None,
    ray_storage: str | None = None,
    calibrate: bool = True,
    trials: int = 1,
) -> dict[str, Any]:
    """Runs every configuration in turn and writes ``results/results.csv`` and RESULTS.md.

    A configuration that fails is recorded with its reason and the others still run.
    ``dataset=None`` skips the quality evaluation (speed only). ``run_id`` names the run's
    folder (``results/runs/<run_id>``); when that folder exists, configurations already
    complete there are skipped and the others run again. ``resume=True`` without a
    ``run_id`` continues the newest run. Ctrl-C or SIGTERM stops after keeping the finished
    requests, writes the report of what finished, then raises KeyboardInterrupt. ``ray``: run
    the configurations as tasks on a Ray cluster instead (``True``: Ray's default cluster, else
    its address; ``ray_storage``: a folder or URI the tasks send their files through; see
    :mod:`optbench.ray_runner`). ``calibrate=False`` skips the client's self-calibration before
    each load test (a few seconds against optbench's mock server; see
    :mod:`optbench.calibration`). ``trials`` runs each configuration's load test that many
    times (``requests.parquet``, then ``requests_trial2.parquet``...): results.csv shows the
    median over the trials and :func:`optbench.compare` resamples whole trials from 3 on.
    Returns the report (see :func:`optbench.report.build_report`)."""
    from optbench.report import build_report

    profile_named(profile)  # an unknown name fails before any server starts
    if isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= MAX_TRIALS:
        raise ConfigError(f"trials must be an integer from 1 to {MAX_TRIALS}, got {trials!r}")
    profile = RENAMED_PROFILES.get(profile, profile)
    if run_id is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", run_id):
        raise ConfigError(f"run_id {run_id!r}: use letters, digits and ._- (it names a folder under runs/)")
    cfgs = [c if isinstance(c, ServerConfig) else load_config(c) for c in configs]
    if not cfgs:
        raise ConfigError("give at least one configuration")
    names = [c.name for c in cfgs]
    if len(set(names)) != len(names):
        raise ConfigError(f"configuration names must differ, got {names}")
    for cfg in cfgs:  # the rules between options, with the profile's, before any server starts
        run_settings(cfg, profile_named(profile).load_test, profile_named(profile).evaluation)
    ensure_results_dir(results_dir)
    on_ray = None
    if ray is not None and ray is not False:
        from optbench.ray_runner import prepare

        on_ray = prepare(cfgs, ray, ray_storage)  # Ray installed, resources valid: before any work
    elif ray_storage is not None:
        raise ConfigError("--ray-storage needs --ray")
    data = None if dataset is None else ensure_dataset(dataset, dataset_source)
    if resume and run_id is None:
        from optbench.report import latest_run

        run_dir = latest_run(results_dir)
    else:
        run_dir = Path(results_dir) / "runs" / (run_id or new_run_id("run"))
    if on_ray is not None:
        on_ray.run(run_dir, profile, data, progress, calibrate=calibrate, trials=trials)
        return build_report(run_dir, results_dir=results_dir, report_path=report_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        for i, cfg in enumerate(cfgs, 1):
            if is_complete(run_dir / cfg.name, evaluated=data is not None):
                _log(f"configuration {i}/{len(cfgs)}: {cfg.name} is complete in {run_dir}: skipped")
                continue
            _log(f"configuration {i}/{len(cfgs)}: {cfg.name}")
            run_one(cfg, run_dir, profile, data, progress, calibrate=calibrate, trials=trials)
    except KeyboardInterrupt:
        _log(f"interrupted: writing the report of what finished; continue with --resume (run {run_dir.name})")
        with contextlib.suppress(OptbenchError):
            build_report(run_dir, results_dir=results_dir, report_path=report_path)
        raise
    return build_report(run_dir, results_dir=results_dir, report_path=report_path)
