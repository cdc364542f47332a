#!/usr/bin/env python3
"""Why does llama-server's decode step grow from 12 ms at concurrency 8 to 55 ms at 32 on an H200?

The 03:17 H200 sweep (results/2026-11-29-full/) showed a decode step of 5.5 ms alone, 12 ms for 8
sequences and 55-58 ms for 32-64, with llama-server's CPU at 1.7-3 cores: the GPU work of one
step grows far less than that. The suspect is sampling, which llama-server runs per slot, one
after another, on its main thread, over the full 128,256-entry vocabulary (the default chain:
penalties, DRY, top-k 40, typical, top-p, min-p, XTC, temperature). This probe serves the same
model three ways and times short runs at concurrency 8 and 32:

- ``default``: the sweep's server, as is;
- ``backend-sampling``: ``--backend-sampling`` (experimental in this llama.cpp: the sampler
  chain runs in the compute graph, on the GPU);
- ``top-k 1``: ``--top-k 1``, which leaves one candidate for the rest of the CPU chain.

If sampling is the cost, the step time at concurrency 32 falls with the last two. It writes
``PROBE_SAMPLING.md``, ``probe_sampling.csv`` and ``probe_sampling_logs.tar.gz`` (the servers'
logs) into ``--out``.

    python3 benches/gpu/probe_sampling.py --model M.gguf --binary llama-server --out "$OUT"
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep  # noqa: E402  (the sweep's server arguments, CPU meter and logging)

VARIANTS = [
    ("default", []),
    ("backend-sampling", ["--backend-sampling"]),
    ("top-k 1", ["--top-k", "1"]),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--binary", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--input-tokens", type=int, default=512)
    p.add_argument("--output-tokens", type=int, default=128)
    p.add_argument("--concurrency", default="8,32", help="comma-separated (default 8,32; one request per slot)")
    p.add_argument("--parallel", type=int, default=64, help="llama-server slots (default 64, as the sweep)")
    args = p.parse_args(argv)

    import pandas as pd

    import optbench
    from optbench.config import parse_config

    args.out.mkdir(parents=True, exist_ok=True)
    scratch = args.out / ".probe-scratch"
    scratch.mkdir(exist_ok=True)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    ctx = args.parallel * (args.input_tokens + args.output_tokens + 128)
    rows = []
    seed = 5000  # a prompt seed of its own per run: no run may hit another's cached prompt
    for name, extra in VARIANTS:
        cfg = parse_config(
            {
                "name": f"probe_{name.replace(' ', '_').replace('-', '_')}",
                "engine": "llama_cpp",
                "model": sweep.MODEL_NAME,
                "ready_timeout_s": 300,
                "server": {
                    "model_path": str(args.model.resolve()),
                    "binary": args.binary,
                    "gpu_layers": 999,
                    "parallel": args.parallel,
                    "ctx_size": ctx,
                    "extra_args": sweep.BASELINE_ARGS + extra,
                },
            },
            "<probe>",
        )
        try:
            with optbench.serve(cfg, log_dir=scratch) as server:
                for c in concurrencies:
                    seed += 1
                    meter = sweep.CpuMeter(server.pid)
                    res = optbench.load_test(
                        server.base_url,
                        server.model,
                        num_requests=c,
                        concurrency=c,
                        input_tokens=args.input_tokens,
                        output_tokens=args.output_tokens,
                        ignore_eos=True,
                        temperature=0.0,
                        seed=seed,
                        time_limit_s=60,
                        label=f"{name} c={c}",
                        progress=meter,
                        progress_interval_s=0.5,
                    )
                    row = {
                        "variant": name,
                        "server_args": " ".join(extra),
                        "concurrency": c,
                        "succeeded": res.summary["num_succeeded"],
                        "tpot_ms_p50": res.metric("tpot_ms"),
                        "itl_ms_p50": res.metric("itl_ms"),
                        "ttft_ms_p50": res.metric("ttft_ms"),
                        "output_tok_s": res.summary["output_token_throughput"],
                        **meter.shares(),
                    }
                    rows.append(row)
                    sweep.log(
                        f"{name} c={c}: TPOT P50 {row['tpot_ms_p50']:.2f} ms, {row['output_tok_s']:.0f} tok/s, "
                        f"server CPU {sweep.fmt(row['server_cpu_share'], 2)} cores"
                    )
        except Exception as e:  # a variant the server rejects is a result, not the end of the probe
            sweep.log(f"{name}: FAILED: {type(e).__name__}: {e}")
            rows.append({"variant": name, "server_args": " ".join(extra), "error": f"{type(e).__name__}: {e}"[:300]})

    # The servers' logs show whether each variant took effect; one archive, because the device
    # machine returns at most 8 files from $OUT and step 1 leaves 5 there.
    with tarfile.open(args.out / "probe_sampling_logs.tar.gz", "w:gz") as tar:
        for f in sorted(scratch.glob("*.log")):
            tar.add(f, arcname=f.name)
    shutil.rmtree(scratch, ignore_errors=True)

    df = pd.DataFrame(rows)
    df.to_csv(args.out / "probe_sampling.csv", index=False)
    lines = [
        "## Probe: what limits llama-server's decode step at concurrency 32 (sampling on the CPU?)",
        "",
        f"Same model and server as the sweep ({args.parallel} slots, flash attention, `--cache-ram 0`), "
        f"{args.input_tokens}-token prompts, {args.output_tokens} output tokens with `ignore_eos`, temperature 0, "
        "one request per slot. TPOT = the decode step each request sees.",
        "",
        "| variant | server args | concurrency | ok | TPOT P50 (ms) | ITL P50 (ms) | TTFT P50 (ms) | output tok/s "
        "| server CPU (cores) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if "error" in r and isinstance(r.get("error"), str):
            lines.append(f"| {r['variant']} | `{r['server_args']}` | | | failed: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {r['variant']} | `{r['server_args'] or '-'}` | {r['concurrency']} | {r['succeeded']} | "
            f"{r['tpot_ms_p50']:.2f} | {r['itl_ms_p50']:.2f} | {r['ttft_ms_p50']:.0f} | "
            f"{r['output_tok_s']:.0f} | {sweep.fmt(r['server_cpu_share'], 2)} |"
        )
    (args.out / "PROBE_SAMPLING.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
