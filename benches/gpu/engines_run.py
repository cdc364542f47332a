#!/usr/bin/env python3
"""On the H200, in the background (``engines.sh`` starts it with setsid so that it outlives the
device command that started it while later commands carry more pieces): for each vLLM / SGLang
configuration in turn,

1. write the derived configuration (``engine_configs.py``: the committed flags + dummy weights),
2. ``optbench run`` it (``optbench.run.run`` with ``dataset=None``: speed only, the
   reference load test: 100 requests, concurrency 8, 2048-token prompts measured by the server's
   /tokenize, 1024 output tokens with ``ignore_eos``, temperature 0), one run id for all, so the
   run's results.csv / RESULTS.md hold every configuration,
3. the concurrency sweep 1 / 8 / 32 / 64 with ``sweep.py --config`` (a server start of its own),
4. pack what it wrote into ``$WORK/export/<name>.tar.gz`` (what later device commands bring back).

Everything has a time limit derived from ``--deadline-epoch`` (the machine is held 30 minutes at
most), so results come back even when the time runs out; a configuration that cannot fit is
skipped and says so. Progress goes to ``$WORK/driver.log`` and ``$WORK/driver-status.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
T0 = time.time()
#: Per configuration: the engine, the minimum seconds worth starting it (server start + the
#: reference load test), and the seconds wanted for the whole (reference + sweep).
PLAN = {
    "vllm": ("vllm", 300, 460),
    "vllm_fp8_quantization": ("vllm", 300, 440),
    "sglang": ("sglang", 260, 420),
    "sglang_torch_compile": ("sglang", 450, 650),
}
#: Seconds the reference load test may take (vLLM 0.26.0 ran it in ~70 s here) and the server start.
LOAD_TEST_LIMIT_S = 150.0
READY_S = {"vllm": 260, "vllm_fp8_quantization": 260, "sglang": 240, "sglang_torch_compile": 600}
SWEEP_REQUESTS = "1=6,8=16,32=64,64=128"
SWEEP_CAPS = "1=45,8=40,32=60,64=80"


def log(msg: str) -> None:
    print(f"[driver {time.strftime('%H:%M:%S')} +{time.time() - T0:.0f}s] {msg}", flush=True)


def status(work: Path, **kw: object) -> None:
    path = work / "driver-status.json"
    cur = json.loads(path.read_text()) if path.exists() else {}
    cur.update(kw, updated=time.strftime("%H:%M:%S"))
    path.write_text(json.dumps(cur, indent=1) + "\n")


def run_capped(cmd: list[str], limit: float, logfile: Path, env: dict[str, str] | None = None) -> int:
    """Runs ``cmd`` in its own process group with a time limit: SIGINT first (optbench stops its
    servers on KeyboardInterrupt), SIGKILL to the group 30 s later."""
    log(f"$ {' '.join(cmd)}  (limit {limit:.0f} s, log {logfile.name})")
    with logfile.open("ab") as f:
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})}
        )
        try:
            return proc.wait(timeout=max(limit, 1))
        except subprocess.TimeoutExpired:
            log(f"time limit reached: interrupting pid {proc.pid}")
            os.killpg(proc.pid, signal.SIGINT)
            try:
                return proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                return proc.wait()


def kill_leftover_servers(work: Path) -> None:
    """Any engine process still serving the model folder (an interrupted run's) is stopped, by
    its process id, so the next configuration has the GPU to itself."""
    model = str(work / "hf-model")
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(model.encode() in a for a in args) and int(cmdline.parent.name) != os.getpid():
            pid = int(cmdline.parent.name)
            log(f"stopping leftover server process {pid}")
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def free_gpu(wait_s: float = 40) -> None:
    """Waits until the GPU holds no process of an earlier server (their memory is freed); stops
    any that remain after ``wait_s``, by the process ids nvidia-smi reports (on this machine only
    this driver's servers use the GPU)."""
    t = time.time()
    while True:
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return
        pids = [int(x.split(",")[0]) for x in out.strip().splitlines() if x.strip()]
        if not pids:
            return
        if time.time() - t > wait_s:
            log(f"GPU still used by {pids} after {wait_s:.0f} s: stopping them")
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(3)
            return
        time.sleep(2)


def pack(work: Path, name: str, paths: dict[str, Path]) -> Path:
    """``$WORK/export/<name>.tar.gz`` holding ``paths`` under their archive names."""
    export = work / "export"
    export.mkdir(exist_ok=True)
    tmp = export / f".{name}.tar.gz"
    with tarfile.open(tmp, "w:gz") as tar:
        for arcname, p in paths.items():
            if p.exists():
                tar.add(p, arcname=arcname)
    out = export / f"{name}.tar.gz"
    tmp.replace(out)
    log(f"packed {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--deadline-epoch", type=float, required=True, help="everything ends before this time")
    p.add_argument("--names", default=",".join(PLAN), help="configurations in order")
    p.add_argument("--run-id", default="h200-engines")
    p.add_argument("--sglang-wait-s", type=float, default=240, help="how long to wait for SGLang's install")
    p.add_argument("--sweep-only", default="", help="configurations whose optbench run is done: only their sweep")
    a = p.parse_args(argv)
    work: Path = a.work
    py = sys.executable
    left = lambda: a.deadline_epoch - time.time()  # noqa: E731
    results = work / "results"
    cfg_dir = work / "configs"
    status(work, state="running", pid=os.getpid(), deadline_epoch=a.deadline_epoch, done=[], skipped=[])
    done: list[str] = []
    skipped: list[str] = []
    for name in a.names.split(","):
        engine, minimum, wanted = PLAN[name]
        site = work / f"site-{engine}"
        if not (site / ".installed").exists():
            log(f"{name}: waiting for {engine}'s install (up to {a.sglang_wait_s:.0f} s)")
            t = time.time()
            while not (site / ".installed").exists() and time.time() - t < a.sglang_wait_s and left() > minimum:
                time.sleep(5)
        if not (site / ".installed").exists():
            skipped.append(f"{name}: {engine} was not installed in time")
            log(f"SKIP {skipped[-1]}")
            status(work, skipped=skipped)
            continue
        if left() < minimum:
            skipped.append(f"{name}: {left():.0f} s left, {minimum} s needed for a start and the reference load test")
            log(f"SKIP {skipped[-1]}")
            status(work, skipped=skipped)
            continue
        status(work, current=name, phase="optbench run")
        t_cfg = time.time()
        out = work / "out" / name
        if name not in a.sweep_only.split(","):
            shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out / "sweep", ignore_errors=True)
        # Time split: the reference load test (server start + test) first; the sweep gets what is left.
        ready_s = min(READY_S[name], left() - LOAD_TEST_LIMIT_S - 40)
        ref_limit = min(left() - 20, ready_s + LOAD_TEST_LIMIT_S + 40)
        sys.path.insert(0, str(HERE))
        import engine_configs

        cfg_path = engine_configs.write(
            name,
            cfg_dir,
            str(work / "hf-model"),
            str(site),
            ready_timeout_s=ready_s,
            load_test_time_limit_s=LOAD_TEST_LIMIT_S,
        )
        shutil.copy(cfg_path, out / f"{name}.toml")
        code = (
            "import sys, json\n"
            "from optbench.run import run\n"
            f"rep = run([{str(cfg_path)!r}], dataset=None, results_dir={str(results)!r}, "
            f"report_path={str(results / 'RESULTS.md')!r}, run_id={a.run_id!r}, progress=False)\n"
            "print(rep['markdown'])\n"
        )
        free_gpu()
        if name in a.sweep_only.split(","):
            log(f"{name}: optbench run already done; the sweep only")
            rc = 0
        else:
            rc = run_capped([py, "-c", code], ref_limit, out / "optbench-run.log")
        kill_leftover_servers(work)
        free_gpu()
        log(f"{name}: optbench run rc={rc} after {time.time() - t_cfg:.0f} s")
        run_dir = results / "runs" / a.run_id
        meta = run_dir / name / "meta.json"
        if meta.exists():
            m = json.loads(meta.read_text())
            log(f"{name}: status {m.get('status')} {m.get('reason') or ''} version {m.get('engine_version')}")
        # The sweep, with what is left of this configuration's share (and of the whole).
        sweep_limit = min(left() - 15, 300.0)
        if sweep_limit >= 150:
            status(work, phase="sweep")
            sweep_out = out / "sweep"
            run_capped(
                [
                    py,
                    str(HERE / "sweep.py"),
                    "--config",
                    str(cfg_path),
                    "--out",
                    str(sweep_out),
                    "--concurrency",
                    "1,8,32,64",
                    "--requests",
                    SWEEP_REQUESTS,
                    "--caps",
                    SWEEP_CAPS,
                    "--deadline-s",
                    str(sweep_limit - 10),
                    "--reserve-s",
                    "25",
                    "--commands",
                    f"python3 benches/gpu/engines_run.py ... (sweep of {name}); see engines.sh",
                ],
                sweep_limit,
                out / "sweep.log",
            )
            kill_leftover_servers(work)
            free_gpu()
        else:
            log(f"{name}: no sweep ({sweep_limit:.0f} s left for it)")
            (out / "NO_SWEEP.txt").write_text(f"no time left for the sweep ({sweep_limit:.0f} s)\n")
        pack(
            work,
            name,
            {
                "out": out,
                "run": run_dir / name,
                "results.csv": results / "results.csv",
                "RESULTS.md": results / "RESULTS.md",
            },
        )
        done.append(name)
        status(work, done=done, current=None, phase=None)
        log(f"{name}: finished in {time.time() - t_cfg:.0f} s; {left():.0f} s left")
    status(work, state="finished", done=done, skipped=skipped)
    log(f"finished: done {done}; skipped {skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
