"""The floor and the cold start: optbench's client against the least work a client can do.

``optbench-floor-client`` (``rust/optbench-mock-server/src/floor_client.rs``) reads the truth
server's streams over raw sockets (one thread, ``epoll``, one ``read`` per ready socket, no HTTP
or JSON parsing beyond finding the body and counting SSE events), so its CPU per thousand
tokens is this machine's floor: what the kernel's loopback and receive path cost for these
streams. optbench's client (``benches/clients/optbench_client.py``) runs the same closed loop
against the same truth server (same prompt length, token count and gap), and each run is a
fresh process: a cold start, with no connection open when it begins. Measured as in
``loadgen.py`` (CPU of the client's process tree sampled from /proc and interpolated to the
server's window; TTFT error = the client's percentile minus the server's truth), for:

- the floor client (it opens its connections before its clock starts);
- optbench with ``preconnect`` on (the default) and off, over its own HTTP/1.1 transport;
- optbench over reqwest (``OPTBENCH_HTTP_TRANSPORT=reqwest``), preconnect on: the general
  HTTP client the own transport replaced for ``http://`` targets.

Each setting is run ``--repeats`` times, the clients interleaved, and the median is reported.

    .venv/bin/python benches/floor.py [--small] --out benches/out/floor.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Section, TruthServer, floor_binary, markdown_table, write_word_tokenizer  # noqa: E402
from loadgen import TTFT_MS, Run, Setting, _client_cmd, cpu_cell, fmt, measure  # noqa: E402

FLOOR = "floor (raw sockets)"
ON = "optbench, preconnect on"
OFF = "optbench, preconnect off"
REQWEST = "optbench over reqwest, preconnect on"


def floor_run(s: Setting, url: str, model: str, tok: Path, work: Path) -> Run:
    out = work / "result.json"
    cmd = [
        str(floor_binary()), "--url", url, "--model", model, "--concurrency", str(s.concurrency),
        "--num-requests", str(s.num_requests), "--input-tokens", str(s.input_tokens),
        "--output-tokens", str(s.tokens), "--out", str(out),
    ]  # fmt: skip
    return Run(cmd, {}, lambda: json.loads(out.read_text())["requests"])


def optbench_run(preconnect: bool, transport: str = "auto") -> Any:
    def make(s: Setting, url: str, model: str, tok: Path, work: Path) -> Run:
        out = work / "result.json"
        cmd = _client_cmd(sys.executable, "optbench_client.py", s, url, model, out)
        cmd += ["--tokenizer", str(tok / "tokenizer.json")] + ([] if preconnect else ["--no-preconnect"])
        return Run(cmd, {"OPTBENCH_HTTP_TRANSPORT": transport}, lambda: json.loads(out.read_text())["requests"])

    return make


#: optbench's own HTTP/1.1 transport (the default for http://), with and without preconnect,
#: and the same load test over reqwest (the general client it replaced there).
CLIENTS = {FLOOR: floor_run, ON: optbench_run(True), OFF: optbench_run(False), REQWEST: optbench_run(True, "reqwest")}

#: The row fields reported as medians over the repeats.
MEDIAN_FIELDS = (
    "output_tok_s",
    "cpu_s_per_1k_tokens",
    "cpu_s_per_1k_tokens_lower",
    "cpu_s_per_1k_tokens_upper",
    "ttft_err_p50_ms",
    "ttft_err_p99_ms",
    "itl_err_p50_ms",
    "headers_p50_ms",
    "headers_p99_ms",
    "self_cpu_s_per_1k_tokens",
    "preconnect_s",
)


def extra(name: str, work: Path) -> dict[str, Any]:
    """What the client said about itself: the floor's own getrusage CPU, optbench's preconnect."""
    try:
        result = json.loads((work / "result.json").read_text())
    except (OSError, ValueError):
        return {}
    if name == FLOOR:
        return {"self_cpu_s_per_1k_tokens": result.get("cpu_s_per_1k_tokens")}
    p = result.get("preconnect") or {}
    return {
        "preconnect_s": p.get("seconds") if p.get("enabled") else None,
        "connections_before_clock": p.get("connections_opened"),
        "connections_during_run": p.get("connections_opened_during_run"),
        "preconnect_error": p.get("error"),
    }


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if "error" not in r]
    out: dict[str, Any] = {k: rows[0][k] for k in ("client", "gap_ms", "concurrency", "requests")}
    out["runs"] = f"{len(ok)}/{len(rows)}"
    if not ok:
        out["error"] = rows[0]["error"]
        return out
    for k in MEDIAN_FIELDS:
        values = [r[k] for r in ok if r.get(k) is not None]
        out[k] = statistics.median(values) if values else None
    for k in ("connections_before_clock", "connections_during_run", "preconnect_error"):
        out[k] = ok[-1].get(k)
    out["ttft_err_p99_runs_ms"] = [r["ttft_err_p99_ms"] for r in ok]
    return out


def render(medians: list[dict[str, Any]], s_gap5: Setting, repeats: int) -> str:
    lines = [
        f"Closed loop, {s_gap5.input_tokens}-token prompts, {s_gap5.tokens}-token streams, TTFT {TTFT_MS:.0f} ms, "
        f"{s_gap5.num_requests} requests per run, each client a fresh process (a cold start); median of "
        f"{repeats} runs per row, the clients interleaved. CPU as in the load-generation section (the estimate, "
        "then what the samples prove); the floor's own `getrusage` figure (first write to last answer) is "
        "shown beside it. Errors: client percentile minus the server's truth.",
        "",
    ]
    table = []
    for r in medians:
        if "error" in r:
            table.append([r["client"], r["gap_ms"], r["concurrency"], "error: " + r["error"][:150]] + [None] * 7)
            continue
        table.append(
            [
                r["client"],
                r["gap_ms"],
                r["concurrency"],
                r["runs"],
                round(r["output_tok_s"]),
                cpu_cell(r),
                r["self_cpu_s_per_1k_tokens"],
                r["ttft_err_p50_ms"],
                r["ttft_err_p99_ms"],
                r["headers_p99_ms"],
                "–"
                if r.get("connections_before_clock") is None
                else f"{r['connections_before_clock']} / {r['connections_during_run']}"
                + (f" ({r['preconnect_s'] * 1e3:.0f} ms)" if r.get("preconnect_s") else ""),
            ]
        )
    lines.append(
        markdown_table(
            [
                "client",
                "gap ms",
                "concurrency",
                "runs ok",
                "output tok/s",
                "CPU s / 1k tok (bounds)",
                "floor's getrusage s / 1k tok",
                "TTFT err P50 ms",
                "TTFT err P99 ms",
                "headers P99 ms",
                "connections before clock / during run (preconnect time, median)",
            ],
            table,
        )
    )
    lines.append("")
    p99s = [
        f"{r['client']} at gap {r['gap_ms']:g} ms: " + ", ".join(fmt(v) for v in r["ttft_err_p99_runs_ms"])
        for r in medians
        if "error" not in r
    ]
    lines += ["TTFT error P99 of each run (ms): " + "; ".join(p99s) + ".", ""]
    return "\n".join(lines)


def add_ratios(section: Section, medians: list[dict[str, Any]], top: int) -> None:
    def get(client: str, gap: float) -> dict[str, Any] | None:
        return next(
            (r for r in medians if r["client"] == client and r["gap_ms"] == gap and "error" not in r),
            None,
        )

    for gap in sorted({r["gap_ms"] for r in medians}, reverse=True):
        floor, ours = get(FLOOR, gap), get(ON, gap)
        value = (
            ours["cpu_s_per_1k_tokens"] / floor["cpu_s_per_1k_tokens"]
            if floor and ours and floor["cpu_s_per_1k_tokens"]
            else None
        )
        section.ratio(f"optbench / floor client CPU per token, gap {gap:g} ms, c={top}", value, 1.25, "<=")
        general = get(REQWEST, gap)
        section.ratio(
            f"optbench's own HTTP/1.1 transport / reqwest CPU per token, gap {gap:g} ms, c={top}",
            ours["cpu_s_per_1k_tokens"] / general["cpu_s_per_1k_tokens"] if ours and general else None,
            1.0,
            "<=",
        )
    cold, floor = get(ON, 5.0), get(FLOOR, 5.0)
    for q, target in ((50, 1.0), (99, 3.0)):
        key = f"ttft_err_p{q}_ms"
        section.ratio(
            f"optbench TTFT error P{q} from a cold start at c={top} (preconnect on)",
            abs(cold[key]) if cold else None,
            target,
            "<=",
            "ms",
        )
        # The same, less what the least-work client sees against the same truth: the request's
        # way into a one-core server is in every client's error and no client can remove it.
        section.ratio(
            f"optbench TTFT error P{q} from a cold start at c={top}, minus the floor client's",
            cold[key] - floor[key] if cold and floor else None,
            target,
            "<=",
            "ms",
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--small", action="store_true", help="the smallest setting (a smoke test)")
    p.add_argument("--repeats", type=int, default=None, help="runs per client and setting (default 3; 1 with --small)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--from-rows", action="store_true", help="measure nothing: rewrite --out from its .rows.json")
    args = p.parse_args()
    repeats = args.repeats or (1 if args.small else 3)
    tokens = 32 if args.small else 256
    concurrency, num_requests = (8, 16) if args.small else (256, 1024)
    section = Section(
        f"The floor and the cold start: optbench against a raw-socket client at concurrency {concurrency}"
    )
    rows: list[dict[str, Any]] = []
    medians: list[dict[str, Any]] = []
    if args.from_rows:
        rows = json.loads(args.out.with_suffix(".rows.json").read_text())
        section.commands = json.loads(args.out.read_text())["commands"]
        for gap in sorted({r["gap_ms"] for r in rows}, reverse=True):
            for c in CLIENTS:
                if mine := [r for r in rows if r["client"] == c and r["gap_ms"] == gap]:
                    medians.append(median_row(mine))
        repeats = len(rows) // len(medians)
        concurrency = rows[0]["concurrency"]
        section.section = section.section.rsplit(" ", 1)[0] + f" {concurrency}"
    else:
        measure_all(section, rows, medians, repeats, concurrency, num_requests, tokens)
    section.markdown = render(medians, Setting(5.0, concurrency, num_requests, tokens, tokens), repeats)
    add_ratios(section, medians, concurrency)
    section.write(args.out)
    args.out.with_suffix(".rows.json").write_text(json.dumps(rows, indent=1))


def measure_all(
    section: Section,
    rows: list[dict[str, Any]],
    medians: list[dict[str, Any]],
    repeats: int,
    concurrency: int,
    num_requests: int,
    tokens: int,
) -> None:
    """Runs every client ``repeats`` times per gap, interleaved; appends to ``rows`` and ``medians``."""
    with tempfile.TemporaryDirectory(prefix="optbench-floor-") as tmp:
        tok = Path(tmp) / "tokenizer"
        write_word_tokenizer(tok, tokens)
        for gap in (5.0, 0.0):
            s = Setting(gap, concurrency, num_requests, tokens, tokens)
            with TruthServer(TTFT_MS, gap, tokens) as server:
                section.commands.append(" ".join(server.command))
                by_client: dict[str, list[dict[str, Any]]] = {name: [] for name in CLIENTS}
                for i in range(repeats):
                    for name, make in CLIENTS.items():
                        work = Path(tmp) / f"{list(CLIENTS).index(name)}-{gap}-{i}"
                        work.mkdir()
                        run = make(s, server.url, server.model, tok, work)
                        row = measure(name, s, server, tok, work, run)
                        row.update(extra(name, work))
                        rows.append(row)
                        by_client[name].append(row)
                        print(summary_line(row), flush=True)
                        if i == 0 and gap == 5.0:
                            section.commands.append(row["command"])
                medians += [median_row(r) for r in by_client.values()]


def summary_line(r: dict[str, Any]) -> str:
    head = f"{r['client']:<26} gap {r['gap_ms']:>3} ms c={r['concurrency']:<4}"
    if "error" in r:
        return f"{head} ERROR {r['error'][:300]}"
    return (
        f"{head} {r['output_tok_s']:>9,.0f} tok/s  cpu {cpu_cell(r)} s/1k tok  "
        f"TTFT err P50 {fmt(r['ttft_err_p50_ms'])} P99 {fmt(r['ttft_err_p99_ms'])} ms"
        + (f"  own getrusage {r['self_cpu_s_per_1k_tokens']:.4f}" if r.get("self_cpu_s_per_1k_tokens") else "")
        + (
            f"  connections before/during {r['connections_before_clock']}/{r['connections_during_run']}"
            if r.get("connections_before_clock") is not None
            else ""
        )
    )


if __name__ == "__main__":
    main()
