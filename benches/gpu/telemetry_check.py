"""Checks optbench's GPU telemetry (python/optbench/telemetry.py) on a real NVIDIA GPU.

Samples NVML through optbench's ``GpuTelemetry`` for ``--seconds`` while a load runs (a float16
matmul loop on every visible GPU when PyTorch with CUDA is importable, else the GPUs idle), then
writes what it found as JSON to OUT and prints it: the summary optbench reports (energy, power,
peak memory, utilisation, SM clock), the energy counter's figure beside power integrated over the
same samples (they should agree within a few percent), and every sample.

Needs only the standard library, ``nvidia-ml-py`` (``import pynvml``) and the telemetry module,
loaded from this clone by its path (not the whole optbench package):

    python benches/gpu/telemetry_check.py benches/gpu/results/<date>-telemetry/telemetry_check.json
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def load_telemetry() -> Any:
    """python/optbench/telemetry.py as a module of its own (it imports only the standard
    library; pynvml when sampling)."""
    path = ROOT / "python" / "optbench" / "telemetry.py"
    spec = importlib.util.spec_from_file_location("optbench_telemetry", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def matmul_load(seconds: float) -> dict[str, Any]:
    """Float16 matmuls on every visible GPU for ``seconds`` (PyTorch), or idle without it."""
    try:
        import torch
    except ImportError:
        time.sleep(seconds)
        return {"load": "idle (PyTorch is not importable)"}
    if not torch.cuda.is_available():
        time.sleep(seconds)
        return {"load": "idle (PyTorch sees no CUDA device)"}
    devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    mats = [torch.randn(8192, 8192, device=d, dtype=torch.float16) for d in devices]
    steps = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for m in mats:
            m @ m
        steps += 1
        if steps % 10 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    flops = 2 * 8192**3 * steps * len(devices)
    return {"load": f"float16 8192x8192 matmuls on {len(devices)} GPU(s)", "steps": steps, "tflop": flops / 1e12}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="the JSON file to write (its folder is created)")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to sample under load (default 10)")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between samples (default 0.5)")
    args = p.parse_args()
    telemetry = load_telemetry()
    result: dict[str, Any] = {"host": platform.node(), "python": platform.python_version()}
    try:
        import pynvml

        pynvml.nvmlInit()
        result["driver"] = str(pynvml.nvmlSystemGetDriverVersion())
        result["nvml_version"] = str(pynvml.nvmlSystemGetNVMLVersion())
        pynvml.nvmlShutdown()
    except Exception as e:  # noqa: BLE001 - the telemetry's own summary says why, below
        result["nvml_error"] = f"{type(e).__name__}: {e}"
    t = telemetry.GpuTelemetry(interval_s=args.interval)
    started = time.monotonic()
    with t:
        result.update(matmul_load(args.seconds))
    result["wall_s"] = time.monotonic() - started
    result["summary"] = t.summary()
    result["summary_line"] = telemetry.summary_line(result["summary"])
    if t.available:
        no_counter = [dataclasses.replace(s, energy_j=None) for s in t.samples]
        integrated = telemetry.summarize_samples(no_counter)["energy_j"]
        counter = result["summary"]["energy_j"]
        result["energy_counter_j"] = counter
        result["power_integrated_j"] = integrated
        if counter and integrated:
            result["counter_over_integrated"] = counter / integrated
    result["samples"] = [dataclasses.asdict(s) for s in t.samples]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    shown = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(shown, indent=1))
    print(f"wrote {args.out} ({len(result['samples'])} samples)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
