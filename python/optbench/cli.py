"""The ``optbench`` command line.

optbench load-test --base-url URL --model NAME [options]   load-test a running server
optbench load-test --embedded [options]                    ... or the embedded llama-server
optbench search --slo ttft_ms=500,itl_ms=50 [target] [...]   the highest load meeting an SLO
optbench demo                                              `run` on the embedded server, quick profile
optbench embedded-server [--port N]                        serve the embedded model until Ctrl-C
optbench dataset build --source FOLDER|hub                 build data/test_dataset.json (520 prompts)
optbench evaluate --base-url URL --model NAME [options]    generate and score on the dataset
optbench quality-under-load --base-url URL --model NAME     the dataset's answers at concurrency 1 against N
optbench compare RUN_OR_CONFIG_DIR...                       differences between runs, with bootstrap intervals
optbench serve [--print-command] CONFIG                    start a configuration's server (or print its command)
optbench run CONFIG [CONFIG ...] [--profile quick]         the whole comparison: results.csv + RESULTS.md
optbench run CONFIG [CONFIG ...] --ray [ADDRESS]           ... one Ray task per configuration on a Ray cluster
optbench report [RUN_DIR]                                  rebuild results.csv + RESULTS.md from Parquet
optbench calibrate [--concurrency N]                       this machine's client error against the mock server
optbench info                                              versions, build, where things are
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

from optbench import _core
from optbench.config import ServerConfig, load_config
from optbench.datasets import DEFAULT_OUTPUT
from optbench.exceptions import ConfigError, OptbenchError
from optbench.loadtest import LoadTestResult, load_test
from optbench.options import EvaluationOptions, LoadTestOptions
from optbench.options_cli import add_cli_options, options_from_cli
from optbench.results import JOURNAL, ensure_results_dir, journal_lock, new_run_id, recover_journals, save_load_test
from optbench.run import MAX_TRIALS, PROFILES, RENAMED_PROFILES
from optbench.bootstrap import check_settings as bootstrap_settings
from optbench.servers.llama_cpp import LlamaServer, embedded_model_path, find_llama_server, llama_server_version


def _count(low: int, high: int) -> Any:
    """An argparse type: an integer from ``low`` to ``high`` (the error names the flag)."""

    def count(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value

    count.__name__ = "int"  # argparse's "invalid int value: 'x'"
    return count


#: Where ``optbench quality-under-load`` keeps its answers while it runs (one folder per label).
UNDER_LOAD_JOURNALS = "journals/quality-under-load"
#: Where ``optbench search --config`` keeps the log of the server it starts (under the results folder).
SEARCHES_LOGS = "searches/logs"
#: llama-server slots: at least one, at most what a machine can serve at once.
SLOTS = _count(1, 4096)
PORT = _count(1, 65535)


def _add_target_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target")
    g.add_argument(
        "--base-url",
        action="append",
        help="server root, e.g. http://127.0.0.1:8000 (not with --embedded); load-test takes it repeatedly:"
        " the replicas of one deployment, spread over by --routing",
    )
    g.add_argument("--model", help="model name sent with each request")
    g.add_argument(
        "--embedded", action="store_true", help="start the embedded llama-server (SmolLM2-135M, CPU) for this run"
    )
    g.add_argument(
        "--parallel",
        type=SLOTS,
        default=None,
        help="with --embedded: llama-server slots, 1 to 4096 (default --concurrency)",
    )


def _add_output_options(p: argparse.ArgumentParser) -> Any:
    g = p.add_argument_group("output")
    g.add_argument("--label", help="name of the run in results tables")
    g.add_argument("--results-dir", default="results", help="where the CSV rows and Parquet go (default results/)")
    g.add_argument("--no-save", action="store_true", help="print only; write nothing")
    g.add_argument("--no-progress", action="store_true", help="no live progress display")
    return g


def _add_load_test_options(p: argparse.ArgumentParser) -> None:
    _add_target_options(p)
    add_cli_options(p, LoadTestOptions)
    _add_output_options(p).add_argument(
        "--json", action="store_true", help="print the summary as JSON instead of a table"
    )


@contextmanager
def _target(args: argparse.Namespace, slots: int, *, replicas: bool = False) -> Iterator[tuple[Any, str]]:
    """The base URL and model of the run: the embedded server (started and stopped here) or
    the ones given (with ``replicas``, a list when ``--base-url`` was given several times)."""
    if args.embedded:
        if args.base_url:
            raise OptbenchError("give either --embedded or --base-url, not both")
        if args.parallel is not None:
            slots = args.parallel
        print(f"starting the embedded llama-server ({slots} slots)...", file=sys.stderr)
        with LlamaServer(parallel=slots) as server:
            print(f"llama-server {server.version} ready at {server.base_url} (log {server.log_path})", file=sys.stderr)
            yield server.base_url, args.model or server.model
        return
    if not (args.base_url and args.model):
        raise OptbenchError("give --base-url and --model (or --embedded)")
    if len(args.base_url) > 1 and not replicas:
        raise OptbenchError(f"give --base-url once here ({len(args.base_url)} given; load-test takes several)")
    yield (args.base_url if len(args.base_url) > 1 else args.base_url[0]), args.model


def _run_load_test(args: argparse.Namespace) -> int:
    options = options_from_cli(LoadTestOptions, args)
    if args.request_rate is not None and args.concurrency is None:
        options["concurrency"] = None  # an open loop from the command line has no cap unless given
    opts = LoadTestOptions.make(**options)
    run_id = journal = None
    if not args.no_save:
        ensure_results_dir(args.results_dir)
        recover_journals(args.results_dir)  # runs killed earlier: their finished requests
        run_id = new_run_id(args.label or "load-test")
        journal = Path(args.results_dir) / "runs" / run_id / JOURNAL
        journal.parent.mkdir(parents=True, exist_ok=True)  # fails now, before any request
    # Held until the results are saved: no other process takes the journal for a dead run's.
    with journal_lock(journal) if journal else contextlib.nullcontext():
        with _target(args, opts.concurrency or 8, replicas=True) as (base_url, model):
            result = load_test(base_url, model, opts, label=args.label, progress=not args.no_progress, journal=journal)
        return _report(result, args, run_id)


def _report(result: LoadTestResult, args: argparse.Namespace, run_id: str | None = None) -> int:
    if args.json:
        print(json.dumps({"label": result.label, "stop_reason": result.stop_reason, **result.summary}, indent=2))
    else:
        print(result.summary_table())
    if not args.no_save:
        paths = save_load_test(result, args.results_dir, run_id=run_id)
        print(f"appended a row to {paths['csv']}; per-request data in {paths['parquet']}", file=sys.stderr)
    if result.stop_reason == "cancelled":
        return 130
    return 0 if result.summary["num_succeeded"] > 0 else 1


def _cmd_search(args: argparse.Namespace) -> int:
    from optbench.search import SearchOptions, search

    cfg = load_config(args.config) if args.config else None
    lt: dict[str, Any] = {}
    so_values: dict[str, Any] = {}
    if cfg is not None:  # the file's [load_test] and [search], each flag given overriding them
        lt = {**cfg.load_test, **({"slo": cfg.search["slo"]} if "slo" in cfg.search else {})}
        so_values = {k: v for k, v in cfg.search.items() if k != "slo"}
    lt.update(options_from_cli(LoadTestOptions, args))
    try:
        so = SearchOptions.make(so_values, **options_from_cli(SearchOptions, args))
    except ConfigError as e:
        raise ConfigError(f"{args.config}: [search] with the flags given: {e}" if cfg else str(e)) from None
    if not lt.get("slo"):
        raise ConfigError(
            "optbench search needs an SLO: --slo, e.g. --slo ttft_ms=500,itl_ms=50 (or `slo` in the --config "
            "file's [search] table)"
        )
    if not args.no_save:
        ensure_results_dir(args.results_dir)
    slots = int(min(so.max_level, 8)) if so.over == "concurrency" else 8
    with _search_target(args, cfg, slots) as (base_url, model):
        result = search(
            base_url,
            model,
            lt,
            search_options=so,
            quality_options=cfg.evaluation if cfg is not None else None,
            label=args.label or (cfg.name if cfg is not None else None),
            results_dir=None if args.no_save else args.results_dir,
            progress=not args.no_progress,
        )
    print(json.dumps(result.to_dict(), indent=1) if args.json else result.summary_text())
    if result.files:
        print(f"wrote {', '.join(str(p) for p in result.files.values())}", file=sys.stderr)
    if so.quality_dataset is not None:
        return 0 if result.quality_level is not None else 1
    return 0 if result.highest_passing is not None else 1


def _demo_dataset_source(given: str | None) -> str | None:
    """Where the demo builds its evaluation data from: ``--dataset-source``, else
    ``$OPTBENCH_DATASET_SOURCE`` (scripts/demo.sh sets it to a local copy when there is one),
    else the Hugging Face hub when ``datasets`` is installed, else nowhere (quality is skipped)."""
    source = given or os.environ.get("OPTBENCH_DATASET_SOURCE")
    if source:
        return source
    return "hub" if importlib.util.find_spec("datasets") is not None else None


def _demo_has_embedding_model() -> bool:
    """Whether the chat scorer can find its model: ``$OPTBENCH_EMBEDDING_MODEL`` or the hub."""
    return bool(os.environ.get("OPTBENCH_EMBEDDING_MODEL")) or importlib.util.find_spec("huggingface_hub") is not None


def _cmd_demo(args: argparse.Namespace) -> int:
    from optbench.config import EMBEDDED_CONFIG, parse_config
    from optbench.run import run

    print(
        "optbench demo: `optbench run` on the embedded configuration (llama.cpp's llama-server with "
        "SmolLM2-135M-Instruct Q4_1 on CPU) with the quick profile: a short load test, then a small "
        "slice of the quality dataset, then results.csv and RESULTS.md",
        file=sys.stderr,
    )
    dataset: str | None = args.dataset
    source = _demo_dataset_source(args.dataset_source)
    if not Path(args.dataset).is_file() and source is None:
        print(
            "optbench demo: no evaluation data (no --dataset-source, no $OPTBENCH_DATASET_SOURCE and no `datasets` "
            'library for the hub: pip install "optbench[hub]"); running the load test only',
            file=sys.stderr,
        )
        dataset = None
    config = dict(EMBEDDED_CONFIG)
    if not _demo_has_embedding_model():
        print(
            "optbench demo: no embedding model for the chat scorer (no $OPTBENCH_EMBEDDING_MODEL and no "
            'huggingface_hub: pip install "optbench[hub]"); skipping the chat category',
            file=sys.stderr,
        )
        config["evaluation"] = {"categories": ["qa", "reasoning", "code"]}
    report = run(
        [parse_config(config, "embedded")],
        profile="quick",
        dataset=dataset,
        dataset_source=source,
        results_dir=args.results_dir,
        report_path=args.report,
        progress=not args.no_progress,
    )
    print(report["markdown"])
    print(f"wrote {report['csv']} and {report['report']}", file=sys.stderr)
    return 0 if (report["table"]["status"] == "ok").all() else 1


def _parse_counts(text: str | None) -> dict[str, int] | None:
    """``"qa=10,chat=5"`` -> ``{"qa": 10, "chat": 5}``."""
    if not text:
        return None
    counts: dict[str, int] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit():
            raise ConfigError(f"--counts: expected CATEGORY=N[,CATEGORY=N...], got {part!r}")
        counts[name.strip()] = int(value)
    return counts


def _cmd_dataset_build(args: argparse.Namespace) -> int:
    """``optbench dataset build``: builds the file and prints a one-line summary."""
    from optbench.datasets import build_test_dataset

    summary = build_test_dataset(args.source, args.output, seed=args.seed, counts=_parse_counts(args.counts))
    for note in summary["notes"]:
        print(f"optbench: note: {note}", file=sys.stderr)
    c = summary["counts"]
    print(
        f"wrote {summary['total']} items to {summary['output']}: qa {c['qa']} ({summary['qa_unanswerable']} unanswerable), "
        f"reasoning {c['reasoning']}, chat {c['chat']} ({summary['chat_skipped']} HH-RLHF rows skipped), "
        f"code {c['code']} (seed {summary['seed']}, source {summary['source']})"
    )
    return 0


def _add_dataset_commands(sub: Any) -> None:
    parser = sub.add_parser("dataset", help="build the quality-evaluation dataset")
    commands = parser.add_subparsers(dest="dataset_command", required=True)
    build = commands.add_parser(
        "build", help="select the 520 evaluation prompts from SQuAD v2, GSM8K, HH-RLHF and HumanEval"
    )
    build.add_argument(
        "--source",
        default="hub",
        help="'hub' (Hugging Face, needs optbench[hub]) or a local folder of the source files (default hub)",
    )
    build.add_argument("--output", default=DEFAULT_OUTPUT, help=f"the JSON file to write (default {DEFAULT_OUTPUT})")
    build.add_argument("--seed", type=int, default=0, help="selection seed (default 0)")
    build.add_argument(
        "--counts", default=None, help="override items per category, e.g. qa=10,reasoning=5,chat=5,code=4"
    )
    build.set_defaults(func=_cmd_dataset_build)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from optbench.evaluate import evaluate, save_evaluation

    opts = EvaluationOptions.make(**options_from_cli(EvaluationOptions, args))
    if not Path(args.dataset).is_file():
        raise ConfigError(f"--dataset {args.dataset}: not found (build it with `optbench dataset build`)")
    if not args.no_save:
        ensure_results_dir(args.results_dir)
    with _target(args, opts.concurrency) as (base_url, model):
        result = evaluate(base_url, model, opts, dataset=args.dataset, label=args.label, progress=not args.no_progress)
    print(result)
    if not args.no_save:
        paths = save_evaluation(result, args.results_dir)
        print(f"appended rows to {paths['csv']}; per-sample data in {paths['parquet']}", file=sys.stderr)
    return 0


@contextmanager
def _search_target(args: argparse.Namespace, cfg: ServerConfig | None, slots: int) -> Iterator[tuple[Any, str]]:
    """The search's server: the one ``--base-url`` / ``--embedded`` names, else the ``--config``
    file's, started here (as ``optbench run`` starts it) and stopped at the end."""
    if cfg is None or args.base_url or args.embedded:
        if cfg is not None and args.model is None and args.base_url:
            args.model = cfg.model  # the configuration's model, served at the URL given
        with _target(args, slots) as target:
            yield target
        return
    from optbench.servers.engines import serve

    log_dir = None if args.no_save else Path(args.results_dir) / SEARCHES_LOGS / cfg.name
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
    print(f"starting {cfg.name} ({cfg.engine}, {cfg.model})...", file=sys.stderr)
    with serve(cfg, log_dir=log_dir) as server:
        print(f"{cfg.name} ready at {server.base_url}", file=sys.stderr)
        yield server.base_url, args.model or server.model


def _ray_target(args: argparse.Namespace) -> tuple[list[str], bool | str | None]:
    """The configurations and ``--ray``'s value. ``--ray`` takes an optional address, so in
    ``optbench run --ray a.toml b.toml`` argparse reads ``a.toml`` as the address: a value that
    is a configuration file goes back to the configurations."""
    configs, ray = list(args.configs), args.ray
    if isinstance(ray, str) and (ray.endswith(".toml") or Path(ray).is_file()):
        configs, ray = [ray, *configs], True
    if not configs:
        raise ConfigError("give at least one configuration file")
    return configs, ray


def _cmd_quality_under_load(args: argparse.Namespace) -> int:
    from optbench.under_load import quality_under_load, save_quality_under_load

    opts = EvaluationOptions.make(**options_from_cli(EvaluationOptions, args))
    if not Path(args.dataset).is_file():
        raise ConfigError(f"--dataset {args.dataset}: not found (build it with `optbench dataset build`)")
    bootstrap_settings(args.level, args.resamples, args.seed)
    if not args.no_save:
        ensure_results_dir(args.results_dir)
    n = opts.under_load_concurrency or opts.concurrency
    with _target(args, n) as (base_url, model):
        journal = None
        if not args.no_save:  # one journal per label: running the same command again resumes it
            name = re.sub(r"[^A-Za-z0-9._-]", "_", args.label or model).lstrip(".") or "server"
            journal = Path(args.results_dir) / UNDER_LOAD_JOURNALS / name
        result = quality_under_load(
            base_url,
            model,
            opts,
            dataset=args.dataset,
            label=args.label,
            progress=not args.no_progress,
            level=args.level,
            resamples=args.resamples,
            seed=args.seed,
            journal=journal,
        )
    print(result)
    if not args.no_save:
        paths = save_quality_under_load(result, args.results_dir)
        print(f"appended rows to {paths['csv']}; both answers per item in {paths['parquet']}", file=sys.stderr)
    if "cancelled" in (result.alone.summary.get("stop_reason"), result.loaded.summary.get("stop_reason")):
        return 130
    return 1 if result.answers_changed else 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from optbench.compare import compare

    result = compare(*args.targets, level=args.level, resamples=args.resamples, seed=args.seed)
    if args.json:
        out = {
            "names": result.names,
            "level": result.level,
            "resamples": result.resamples,
            "seed": result.seed,
            "differences": json.loads(result.table.to_json(orient="records")),
            "notes": result.notes,
        }
        print(json.dumps(out, indent=1))
    else:
        print(result)
    if args.csv:
        result.table.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0


def _add_dataset_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        default="data/test_dataset.json",
        help="file written by `optbench dataset build` (default data/test_dataset.json)",
    )


def _add_bootstrap_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("intervals (percentile bootstrap)")
    g.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    g.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples, 100 to 1000000 (default 2000)")
    g.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default 0)")


def _cmd_run(args: argparse.Namespace) -> int:
    from optbench.run import run

    configs, ray = _ray_target(args)
    report = run(
        configs,
        profile=args.profile,
        dataset=args.dataset,
        dataset_source=args.dataset_source,
        results_dir=args.results_dir,
        report_path=args.report,
        run_id=args.run_id,
        resume=args.resume,
        progress=not args.no_progress,
        ray=ray,
        ray_storage=args.ray_storage,
        calibrate=not args.no_calibrate,
        trials=args.trials,
    )
    print(report["markdown"])
    print(f"wrote {report['csv']} and {report['report']}", file=sys.stderr)
    return 0 if (report["table"]["status"] == "ok").any() else 1


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from optbench.calibration import calibrate

    c = calibrate(
        args.concurrency,
        output_tokens=args.output_tokens,
        gap_ms=args.gap_ms,
        ttft_ms=args.ttft_ms,
        num_requests=args.num_requests,
        endpoint=args.endpoint,
    )
    print(json.dumps(c.to_dict(), indent=2) if args.json else c.line())
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from optbench.report import build_report, latest_run

    recover_journals(args.results_dir)  # load tests killed before they wrote their Parquet
    run_dir = args.run_dir or latest_run(args.results_dir)
    report = build_report(run_dir, results_dir=args.results_dir, report_path=args.report)
    print(report["markdown"])
    print(f"rebuilt {report['csv']} and {report['report']} from {run_dir}", file=sys.stderr)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from optbench.servers.engines import print_command, serve

    if args.print_command:
        print(print_command(args.config))
        return 0
    with serve(args.config) as server:
        print(
            f"{server.config.name}: {server.model} at {server.base_url} (log {server.log_path}); Ctrl-C stops it",
            flush=True,
        )
        try:
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


def _cmd_embedded_server(args: argparse.Namespace) -> int:
    with LlamaServer(port=args.port, parallel=args.parallel, host=args.host) as server:
        print(f"serving {server.model} at {server.base_url} (log {server.log_path}); Ctrl-C stops it", flush=True)
        try:
            while server.process and server.process.running():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    info: dict[str, Any] = {"optbench": _core.__version__, "build_profile": _core.build_profile}
    try:
        binary = find_llama_server()
        info["llama_server"] = str(binary)
        info["llama_server_version"] = llama_server_version(binary)
    except OptbenchError as e:
        info["llama_server"] = f"missing: {e}"
    try:
        info["embedded_model"] = str(embedded_model_path())
    except OptbenchError as e:
        info["embedded_model"] = f"missing: {e}"
    for k, v in info.items():
        print(f"{k:>22}: {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optbench", description="Decide how to serve an LLM: load tests you can trust."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("load-test", help="load-test an OpenAI-compatible server")
    _add_load_test_options(p)
    p.set_defaults(func=_run_load_test)
    p = sub.add_parser(
        "search",
        help="the highest concurrency (or request rate) whose SLO attainment meets a target",
        description="Bracket then bisect the load, k trials per level, each level judged PASS, FAIL or "
        "INCONCLUSIVE on an interval of its SLO attainment (optbench.search). The load-test options describe "
        "each trial (--num-requests per trial; --concurrency/--request-rate are set by the search). With "
        "--embedded the server gets --parallel slots (default min(--max-level, 8)). With --quality-dataset the "
        "level found must also keep the answers' quality against concurrency 1 (optbench.search_quality). Exit "
        "status 1 when no level passes (with --quality-dataset: when no level meets both).",
    )
    from optbench.search import SearchOptions

    _add_target_options(p)
    p.add_argument(
        "--config",
        metavar="FILE",
        help="a configuration file: its [search] table (and [load_test], [evaluation] for the quality slice) "
        "gives the options, the flags override them; without --base-url/--embedded its server is started "
        "and stopped (its log under <results-dir>/searches/logs/<name>/)",
    )
    add_cli_options(p, LoadTestOptions)
    add_cli_options(p, SearchOptions)
    _add_output_options(p).add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(func=_cmd_search)
    p = sub.add_parser("demo", help="optbench run on the embedded server with the quick profile")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--dataset", default="data/test_dataset.json", help="built from --dataset-source if missing")
    p.add_argument(
        "--dataset-source",
        default=None,
        help="a folder of the source files or 'hub' (default $OPTBENCH_DATASET_SOURCE, else the hub)",
    )
    p.add_argument("--report", default="RESULTS.md")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("run", help="serve, load-test and evaluate each configuration; write results.csv and RESULTS.md")
    p.add_argument("configs", nargs="*", help="configuration files, e.g. configs/*.toml")
    p.add_argument(
        "--profile",
        choices=[*PROFILES, *RENAMED_PROFILES],
        default="reference",
        metavar="{" + ",".join(PROFILES) + "}",
        help="; ".join(f"{name}: {prof.doc}" for name, prof in PROFILES.items()) + " (default reference)",
    )
    p.add_argument("--dataset", default="data/test_dataset.json")
    p.add_argument(
        "--dataset-source", default=None, help="build the dataset from this folder (or 'hub') when it is missing"
    )
    p.add_argument("--results-dir", default="results")
    p.add_argument("--report", default="RESULTS.md", help="where RESULTS.md goes")
    p.add_argument(
        "--run-id",
        default=None,
        help="name of the run's folder under RESULTS_DIR/runs (default: the time); "
        "if it exists, configurations already complete there are skipped (locally and with --ray)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the newest run: skip the configurations it completed, run the others again",
    )
    p.add_argument(
        "--trials",
        type=_count(1, MAX_TRIALS),
        default=1,
        help=f"run each load test this many times, 1 to {MAX_TRIALS} (default 1); results.csv shows the median, "
        "`optbench compare` resamples whole trials from 3 on",
    )
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("Ray (pip install 'optbench[ray]')")
    g.add_argument(
        "--ray",
        nargs="?",
        const=True,
        default=None,
        metavar="ADDRESS",
        help="one Ray task per configuration, with the resources of its [resources] table; ADDRESS: "
        "auto, HOST:PORT or ray://HOST:10001 (default: $RAY_ADDRESS, a cluster `ray start` runs here, "
        "else a new local one)",
    )
    g.add_argument(
        "--ray-storage",
        default=None,
        metavar="URI",
        help="a folder (shared by the nodes and this machine) or URI (s3://, gs://, hdfs://) the tasks "
        "write their files to, for the driver to copy; default: the tasks return them to the driver",
    )
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="skip the client's self-calibration against the mock server before each load test (a few seconds)",
    )
    p.set_defaults(func=_cmd_run)
    _add_calibrate_command(sub)
    p = sub.add_parser("report", help="rebuild results.csv and RESULTS.md from a run's Parquet files")
    p.add_argument("run_dir", nargs="?", default=None, help="results/runs/<run id> (default: the newest)")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--report", default="RESULTS.md")
    p.set_defaults(func=_cmd_report)
    p = sub.add_parser("serve", help="start a configuration's server until Ctrl-C, or print its command")
    p.add_argument("config", help="a configuration file, e.g. configs/vllm.toml")
    p.add_argument("--print-command", action="store_true", help="print the equivalent shell command and exit")
    p.set_defaults(func=_cmd_serve)
    p = sub.add_parser("embedded-server", help="serve the embedded model until Ctrl-C")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=PORT, default=None, help="1 to 65535 (default: a free port)")
    p.add_argument("--parallel", type=SLOTS, default=8, help="slots, 1 to 4096 (default 8)")
    p.set_defaults(func=_cmd_embedded_server)
    _add_dataset_commands(sub)
    p = sub.add_parser("evaluate", help="generate and score answers on the evaluation dataset")
    _add_target_options(p)
    _add_dataset_option(p)
    add_cli_options(p, EvaluationOptions)
    _add_output_options(p)
    p.set_defaults(func=_cmd_evaluate)
    p = sub.add_parser(
        "quality-under-load",
        help="generate the dataset's answers at concurrency 1 and at N and compare them (exit 1 when answers change)",
        description="Generates the dataset's answers at concurrency 1 and at concurrency N (--under-load-concurrency, "
        "else --concurrency, default 8) at temperature 0 and compares them: identical share, first differing token, "
        "per-category score change with a paired bootstrap interval. Exit status 1 when some answer at N differs from the one at 1. "
        "Each answer is journaled as it finishes (<results-dir>/journals/quality-under-load/<label>/): after an "
        "interruption the same command generates only the answers missing.",
    )
    _add_target_options(p)
    _add_dataset_option(p)
    add_cli_options(p, EvaluationOptions)
    _add_bootstrap_options(p)
    _add_output_options(p)
    p.set_defaults(func=_cmd_quality_under_load)
    p = sub.add_parser(
        "compare",
        help="each metric's difference between runs or configurations, with a bootstrap interval: real or noise",
        description="Compares each run or configuration with the first (a run folder counts as its configurations, "
        "the baseline first): P50/P99 TTFT, P50 tokens/s, output-token throughput, goodput when recorded, and "
        "quality, each difference with a percentile bootstrap interval; a difference is real when its interval "
        "excludes 0. With 3 or more trials (optbench run --trials) whole trials are resampled.",
    )
    p.add_argument(
        "targets",
        nargs="+",
        metavar="RUN_OR_CONFIG_DIR",
        help="results/runs/<id> (all its configurations), results/runs/<id>/<config>, a load test's folder "
        "or a requests.parquet",
    )
    _add_bootstrap_options(p)
    p.add_argument("--json", action="store_true", help="print the differences as JSON")
    p.add_argument("--csv", default=None, help="also write the differences to this CSV file")
    p.set_defaults(func=_cmd_compare)
    p = sub.add_parser("info", help="versions, build profile and where the embedded server is")
    p.set_defaults(func=_cmd_info)
    return parser


def _add_calibrate_command(sub: Any) -> None:
    from optbench import calibration as c

    p = sub.add_parser("calibrate", help="measure this machine's client error (TTFT, ITL, CPU) against the mock server")
    p.add_argument("--concurrency", type=_count(1, 4096), default=8, help="requests in flight, 1 to 4096 (default 8)")
    p.add_argument(
        "--output-tokens",
        type=_count(2, 100_000),
        default=c.DEFAULT_OUTPUT_TOKENS,
        help=f"tokens per stream, 2 to 100000 (default {c.DEFAULT_OUTPUT_TOKENS})",
    )
    p.add_argument(
        "--gap-ms",
        type=float,
        default=c.DEFAULT_GAP_MS,
        help=f"the mock's gap between tokens (default {c.DEFAULT_GAP_MS:g})",
    )
    p.add_argument(
        "--ttft-ms",
        type=float,
        default=c.DEFAULT_TTFT_MS,
        help=f"the mock's time to first token (default {c.DEFAULT_TTFT_MS:g})",
    )
    p.add_argument(
        "--num-requests",
        type=_count(1, 1_000_000),
        default=None,
        help=f"requests (default: about {c.TARGET_SECONDS:g} s of streams, at least two per slot)",
    )
    p.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    p.add_argument("--json", action="store_true", help="print every figure as JSON")
    p.set_defaults(func=_cmd_calibrate)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be so that it stops a run the same way: finished
    requests kept and saved, servers stopped."""


_TERMINATED: list[bool] = []


def _on_sigterm(signum: int, frame: Any) -> None:
    _TERMINATED.append(True)
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # `timeout`, `docker stop`, a CI cancel: handled like Ctrl-C (only the main thread can).
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = int(args.func(args))
    except OptbenchError as e:
        print(f"optbench: error: {e}", file=sys.stderr)
        return 2
    except _Terminated:
        print("optbench: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except OSError as e:
        # A file or folder that cannot be used, a network failure outside a request...: the
        # user's to fix, so one line, not a traceback (a bug still shows its traceback).
        print(f"optbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("optbench: interrupted", file=sys.stderr)
        return 130
    # A run stopped by SIGTERM that saved what finished still exits as terminated.
    return 143 if _TERMINATED and code == 130 else code


if __name__ == "__main__":
    sys.exit(main())
