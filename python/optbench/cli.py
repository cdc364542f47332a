"""The ``optbench`` command line.

    optbench load-test --base-url URL --model NAME [options]   load-test a running server
    optbench load-test --embedded [options]                    ... or the embedded llama-server
    optbench demo                                              `run` on the embedded server, quick profile
    optbench embedded-server [--port N]                        serve the embedded model until Ctrl-C
    optbench dataset build --source FOLDER|hub                 build data/test_dataset.json (520 prompts)
    optbench evaluate --base-url URL --model NAME [options]    generate and score on the dataset
    optbench serve [--print-command] CONFIG                    start a configuration's server (or print its command)
    optbench run CONFIG [CONFIG ...] [--profile quick]         the whole comparison: results.csv + RESULTS.md
    optbench report [RUN_DIR]                                  rebuild results.csv + RESULTS.md from Parquet
    optbench info                                              versions, build, where things are
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from typing import Any, Sequence

from optbench import _core
from optbench.datasets import add_dataset_cli
from optbench.exceptions import OptbenchError
from optbench.loadtest import DEFAULT_TIMEOUT_S, LoadTestResult, load_test
from optbench.results import save_load_test
from optbench.servers.llama_cpp import LlamaServer, embedded_model_path, find_llama_server, llama_server_version

def _add_load_test_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target")
    g.add_argument("--base-url", help="server root, e.g. http://127.0.0.1:8000 (not with --embedded)")
    g.add_argument("--model", help="model name sent with each request")
    g.add_argument("--embedded", action="store_true", help="start the embedded llama-server (SmolLM2-135M, CPU) for this run")
    g.add_argument("--parallel", type=int, default=None, help="with --embedded: llama-server slots (default: --concurrency)")
    g.add_argument("--api-key-env", help="environment variable holding a bearer API key")
    g = p.add_argument_group("load")
    g.add_argument("--num-requests", type=int, default=100, help="measured requests (default 100)")
    g.add_argument("--concurrency", type=int, default=None, help="requests in flight (default 8); with --request-rate, a cap")
    g.add_argument("--request-rate", type=float, default=None, help="open loop: mean requests per second")
    g.add_argument("--arrival", choices=["constant", "poisson", "gamma"], default="poisson", help="open-loop gaps (default poisson)")
    g.add_argument("--burstiness", type=float, default=1.0, help="gamma shape; <1 burstier, 1 = Poisson (default 1)")
    g.add_argument("--warmup", type=int, default=0, help="warm-up requests excluded from metrics (default 0)")
    g.add_argument("--time-limit-s", type=float, default=None, help="stop the measured phase after this many seconds")
    g.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, help=f"per-request deadline (default {DEFAULT_TIMEOUT_S:.0f})")
    g.add_argument("--seed", type=int, default=0, help="seed for prompts and arrivals (default 0)")
    g = p.add_argument_group("requests")
    g.add_argument("--endpoint", choices=["completions", "chat"], default="completions", help="default completions")
    g.add_argument("--input-tokens", type=int, default=2048, help="synthetic prompt length in server tokens (default 2048)")
    g.add_argument("--output-tokens", type=int, default=1024, help="max_tokens per request (default 1024)")
    g.add_argument("--prompts", help="JSONL file of prompts (strings, {'prompt'} or {'messages'}) instead of synthetic ones")
    g.add_argument("--tokenizer", help="tokenizer.json for servers without /tokenize")
    g.add_argument("--ignore-eos", action="store_true", help="generate exactly --output-tokens tokens")
    g.add_argument("--temperature", type=float, default=0.0, help="default 0")
    g.add_argument("--extra-body", help="JSON object merged into every request body")
    g = p.add_argument_group("output")
    g.add_argument("--label", help="name of the run in results tables")
    g.add_argument("--results-dir", default="results", help="where the CSV row and Parquet go (default results/)")
    g.add_argument("--no-save", action="store_true", help="print only; write nothing")
    g.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    g.add_argument("--no-progress", action="store_true", help="no live progress line")


def _run_load_test(args: argparse.Namespace) -> int:
    params: dict[str, Any] = dict(
        num_requests=args.num_requests,
        concurrency=args.concurrency if args.concurrency is not None else (None if args.request_rate else 8),
        request_rate=args.request_rate,
        arrival=args.arrival,
        burstiness=args.burstiness,
        input_tokens=args.input_tokens,
        output_tokens=args.output_tokens,
        endpoint=args.endpoint,
        prompts=args.prompts,
        seed=args.seed,
        warmup=args.warmup,
        ignore_eos=args.ignore_eos,
        timeout_s=args.timeout_s,
        time_limit_s=args.time_limit_s,
        temperature=args.temperature,
        api_key_env=args.api_key_env,
        tokenizer=args.tokenizer,
        extra_body=json.loads(args.extra_body) if args.extra_body else None,
        label=args.label,
        progress=not args.no_progress,
    )
    with ExitStack() as stack:
        if args.embedded:
            if args.base_url:
                raise OptbenchError("give either --embedded or --base-url, not both")
            slots = args.parallel or params["concurrency"] or 8
            print(f"starting the embedded llama-server ({slots} slots)...", file=sys.stderr)
            server = stack.enter_context(LlamaServer(parallel=slots))
            base_url, model = server.base_url, args.model or server.model
            print(f"llama-server {server.version} ready at {base_url} (log {server.log_path})", file=sys.stderr)
        else:
            if not (args.base_url and args.model):
                raise OptbenchError("give --base-url and --model (or --embedded)")
            base_url, model = args.base_url, args.model
        result = load_test(base_url, model, **params)
    return _report(result, args)


def _report(result: LoadTestResult, args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps({"label": result.label, "stop_reason": result.stop_reason, **result.summary}, indent=2))
    else:
        print(result.summary_table())
    if not args.no_save:
        paths = save_load_test(result, args.results_dir)
        print(f"appended a row to {paths['csv']}; per-request data in {paths['parquet']}", file=sys.stderr)
    if result.stop_reason == "cancelled":
        return 130
    return 0 if result.summary["num_succeeded"] > 0 else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from optbench.config import EMBEDDED_CONFIG, parse_config
    from optbench.run import default_dataset_source, default_embedding_model, run

    print(
        "optbench demo: `optbench run` on the embedded configuration (llama.cpp's llama-server with "
        "SmolLM2-135M-Instruct Q4_1 on CPU) with the quick profile: a short load test, then a small "
        "slice of the quality dataset, then results.csv and RESULTS.md",
        file=sys.stderr,
    )
    dataset: str | None = args.dataset
    source = default_dataset_source()
    if not Path(args.dataset).is_file() and source is None:
        print("optbench demo: no evaluation data (no ../shared/datasets and no `datasets` library for the hub: "
              'pip install "optbench[hub]"); running the load test only', file=sys.stderr)
        dataset = None
    config = dict(EMBEDDED_CONFIG)
    embedding_model = default_embedding_model()
    if embedding_model == "":
        print("optbench demo: no embedding model for the chat scorer (no ../shared/models and no huggingface_hub: "
              'pip install "optbench[hub]"); skipping the chat category', file=sys.stderr)
        config["evaluation"] = {"categories": ["qa", "reasoning", "code"]}
    elif embedding_model:
        config["evaluation"] = {"embedding_model": embedding_model}
    report = run([parse_config(config, "embedded")], profile="quick", dataset=dataset,
                 dataset_source=source, results_dir=args.results_dir, report_path=args.report,
                 progress=not args.no_progress)
    print(report["markdown"])
    print(f"wrote {report['csv']} and {report['report']}", file=sys.stderr)
    return 0 if (report["table"]["status"] == "ok").all() else 1


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from optbench.evaluate import evaluate, save_evaluation

    with ExitStack() as stack:
        if args.embedded:
            if args.base_url:
                raise OptbenchError("give either --embedded or --base-url, not both")
            server = stack.enter_context(LlamaServer(parallel=args.parallel or args.concurrency))
            base_url, model = server.base_url, args.model or server.model
        else:
            if not (args.base_url and args.model):
                raise OptbenchError("give --base-url and --model (or --embedded)")
            base_url, model = args.base_url, args.model
        result = evaluate(
            base_url, model, dataset=args.dataset, label=args.label,
            categories=args.categories.split(",") if args.categories else None, limit=args.limit,
            concurrency=args.concurrency, endpoint_mode=args.endpoint_mode, gsm8k_mode=args.gsm8k_mode,
            no_answer_phrase=args.no_answer_phrase or None, embedding_model=args.embedding_model,
            code_timeout_s=args.code_timeout_s, timeout_s=args.timeout_s, api_key_env=args.api_key_env,
            progress=not args.no_progress,
        )
    print(result)
    if not args.no_save:
        paths = save_evaluation(result, args.results_dir)
        print(f"appended rows to {paths['csv']}; per-sample data in {paths['parquet']}", file=sys.stderr)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from optbench.run import run

    report = run(args.configs, profile=args.profile, dataset=args.dataset, dataset_source=args.dataset_source,
                 results_dir=args.results_dir, report_path=args.report, progress=not args.no_progress)
    print(report["markdown"])
    print(f"wrote {report['csv']} and {report['report']}", file=sys.stderr)
    return 0 if (report["table"]["status"] == "ok").any() else 1


def _cmd_report(args: argparse.Namespace) -> int:
    from optbench.report import build_report, latest_run

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
        print(f"{server.config.name}: {server.model} at {server.base_url} (log {server.log_path}); Ctrl-C stops it", flush=True)
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
    parser = argparse.ArgumentParser(prog="optbench", description="Decide how to serve an LLM: load tests you can trust.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("load-test", help="load-test an OpenAI-compatible server", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_load_test_options(p)
    p.set_defaults(func=_run_load_test)
    p = sub.add_parser("demo", help="optbench run on the embedded server with the quick profile")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--dataset", default="data/test_dataset.json", help="built from ../shared/datasets or the hub if missing")
    p.add_argument("--report", default="RESULTS.md")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("run", help="serve, load-test and evaluate each configuration; write results.csv and RESULTS.md")
    p.add_argument("configs", nargs="+", help="configuration files, e.g. configs/*.toml")
    p.add_argument("--profile", choices=["full", "quick"], default="full", help="quick: a short load test and a small dataset slice (CPU machines)")
    p.add_argument("--dataset", default="data/test_dataset.json")
    p.add_argument("--dataset-source", default=None, help="build the dataset from this folder (or 'hub') when it is missing")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--report", default="RESULTS.md", help="where RESULTS.md goes")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_run)
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
    p.add_argument("--port", type=int, default=None, help="default: a free port")
    p.add_argument("--parallel", type=int, default=8, help="slots (default 8)")
    p.set_defaults(func=_cmd_embedded_server)
    add_dataset_cli(sub)
    p = sub.add_parser("evaluate", help="generate and score answers on the evaluation dataset",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--base-url", help="server root (not with --embedded)")
    p.add_argument("--model", help="model name sent with each request")
    p.add_argument("--embedded", action="store_true", help="start the embedded llama-server for this run")
    p.add_argument("--parallel", type=int, default=None, help="with --embedded: llama-server slots (default: --concurrency)")
    p.add_argument("--dataset", default="data/test_dataset.json", help="file written by `optbench dataset build`")
    p.add_argument("--categories", help="comma-separated subset of qa,reasoning,chat,code")
    p.add_argument("--limit", type=int, default=None, help="at most this many scored items per category")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument("--endpoint-mode", choices=["completions", "chat"], default="completions", help="endpoint for qa/reasoning/code")
    p.add_argument("--gsm8k-mode", choices=["default", "official", "lmeval-strict", "lmeval-flexible"], default="default")
    p.add_argument("--no-answer-phrase", default="unanswerable", help="QA answer meaning 'no answer' ('' for none)")
    p.add_argument("--embedding-model", default=None, help="all-MiniLM-L6-v2 folder or hub id (chat scorer)")
    p.add_argument("--code-timeout-s", type=float, default=10.0, help="per-program sandbox timeout")
    p.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, help="per-request deadline")
    p.add_argument("--api-key-env", help="environment variable holding a bearer API key")
    p.add_argument("--label", help="name of the configuration in results tables")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_evaluate)
    p = sub.add_parser("info", help="versions, build profile and where the embedded server is")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except OptbenchError as e:
        print(f"optbench: error: {e}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as e:
        print(f"optbench: error: --extra-body is not valid JSON: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("optbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
