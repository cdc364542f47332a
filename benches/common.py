"""Shared parts of the benchmarks: the truth server, CPU accounting, machine facts, output.

Every benchmark module writes one JSON section (``{"section", "markdown", "commands",
"versions", "ratios"}``) that ``run.py`` gathers into ``benches/RESULTS.md``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCHES = Path(__file__).resolve().parent
ROOT = BENCHES.parent
VENVS = BENCHES / ".venvs"
# The shared datasets and models (read, never copied into the project).
SHARED = Path(os.environ.get("OPTBENCH_SHARED", ROOT.parent / "shared"))


def mock_binary() -> Path:
    """``$OPTBENCH_MOCK_SERVER``, else the release build, else the quick-release build (the
    smoke test's; timing claims come from release)."""
    env = os.environ.get("OPTBENCH_MOCK_SERVER")
    if env:
        return Path(env)
    for profile in ("release", "quick-release"):
        path = ROOT / "target" / profile / "optbench-mock-server"
        if path.is_file():
            return path
    raise SystemExit("optbench-mock-server is not built: cargo build --release -p optbench-mock-server")


def floor_binary() -> Path:
    """``optbench-floor-client``, built with the truth server (same crate, same folder)."""
    path = mock_binary().parent / "optbench-floor-client"
    if not path.is_file():
        raise SystemExit(f"{path} is not built: cargo build --release -p optbench-mock-server")
    return path


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- cores -------------------------------------------------------------------------------------


def cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def server_and_client_cores() -> tuple[str, str]:
    """The truth server gets the first core, the client under test the rest (one core on a
    2-core machine), so neither steals the other's time."""
    c = cores()
    if len(c) < 2:
        return str(c[0]), str(c[0])
    return str(c[0]), ",".join(str(x) for x in c[1:])


def pinned(cmd: list[str], cpus: str) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if shutil.which("taskset") else cmd


# --- the truth server ----------------------------------------------------------------------------


class TruthServer:
    """``optbench-mock-server`` on its own core; the log is the truth clients are judged by."""

    def __init__(self, ttft_ms: float, gap_ms: float, tokens: int, model: str = "optbench-mock"):
        server_cpus, _ = server_and_client_cores()
        self.model = model
        cmd = [
            str(mock_binary()),
            "--port",
            "0",
            "--ttft-ms",
            str(ttft_ms),
            "--gap-ms",
            str(gap_ms),
            "--tokens",
            str(tokens),
            "--model",
            model,
            "--timer",
            "coarse",
        ]
        self.command = cmd
        self.proc = subprocess.Popen(pinned(cmd, server_cpus), stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        m = re.search(r"http://\S+", line)
        if not m:
            self.stop()
            raise SystemExit(f"optbench-mock-server did not start: {line!r}")
        self.url = m.group(0)

    def _get(self, path: str, method: str = "GET") -> Any:
        req = urllib.request.Request(self.url + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def reset(self) -> None:
        self._get("/mock/reset", "POST")

    def log(self) -> list[dict]:
        return self._get("/mock/log")

    def clock_offset(self) -> float:
        """time.monotonic() minus the server's clock (seconds since it started), to ±1 ms."""
        for _ in range(3):
            before = time.monotonic()
            log_probe = self._get("/mock/clock")
            after = time.monotonic()
            if after - before < 0.005:
                break
        return (before + after) / 2 - log_probe["now_s"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "TruthServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- CPU accounting ------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its reaped children)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # fields[1] = ppid; [11..14] = utime, stime, cutime, cstime (clock ticks)
    ticks = sum(int(x) for x in fields[11:15])
    return int(fields[1]), ticks / CLOCK_TICKS


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of ``root`` and every live descendant (reaped ones count in their parent)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            s = _stat(int(entry.name))
            if s:
                stats[int(entry.name)] = s
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
            todo.extend(children.get(pid, []))
    return total


class CpuSampler:
    """Samples a process tree's CPU seconds every ``interval_s`` (time.monotonic stamps), so
    the CPU spent inside any window can be read afterwards by interpolation."""

    def __init__(self, pid: int, interval_s: float = 0.05):
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), tree_cpu_seconds(self.pid)))
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, t: float) -> float:
        s = self.samples
        if not s:
            return 0.0
        if t <= s[0][0]:
            return s[0][1]
        for (t0, c0), (t1, c1) in zip(s, s[1:]):
            if t0 <= t <= t1:
                # CPU counters only grow; a process that exited between samples reads as 0
                # in the later sample, so keep the maximum seen so far.
                c1 = max(c0, c1)
                return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1
        return max(c for _, c in s)

    def between(self, start: float, end: float) -> float:
        return max(0.0, self.at(end) - self.at(start))

    def bounds(self, start: float, end: float) -> tuple[float, float]:
        """What the samples can prove about the CPU spent in [start, end]: at least the growth
        between the first sample inside and the last sample inside, at most the growth between
        the last sample before and the first sample after, each widened by one clock tick
        (the kernel's counters are whole ticks, so a difference of two is off by under one)."""
        s, tick = self.samples, 1.0 / CLOCK_TICKS
        if not s:
            return 0.0, float("inf")
        counter = [c for _, c in s]
        for i in range(1, len(counter)):  # a process that exited reads as 0 later: keep the maximum
            counter[i] = max(counter[i], counter[i - 1])
        times = [t for t, _ in s]
        before = max((i for i, t in enumerate(times) if t <= start), default=0)
        after = min((i for i, t in enumerate(times) if t >= end), default=len(times) - 1)
        inside = [i for i, t in enumerate(times) if start <= t <= end]
        upper = counter[after] - counter[before] + tick
        lower = max(0.0, counter[inside[-1]] - counter[inside[0]] - tick) if inside else 0.0
        return lower, upper


# --- facts and output ----------------------------------------------------------------------------


def machine_facts() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cores available": str(len(cores())),
        "memory": mem,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
    }


def venv_python(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def install_error(name: str) -> str | None:
    """The recorded pip output when a peer did not install, else None."""
    if os.environ.get("OPTBENCH_BENCH_PEERS") == "none":
        return "skipped: the run was asked not to use peers (benches/run.sh --no-peers)"
    err = VENVS / f"{name}.error"
    if err.is_file():
        return err.read_text()[-3000:].strip() or "install failed with no output"
    if not venv_python(name).is_file():
        return f"benches/.venvs/{name} is missing: run benches/setup_peers.sh"
    return None


def package_version(python: Path, dist: str) -> str:
    out = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() or "unknown"


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolation percentile (numpy's default), None for no values."""
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    k = (len(v) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(x: Any) -> str:
        if x is None:
            return "–"
        if isinstance(x, float):
            return f"{x:,.4g}" if abs(x) < 1e5 else f"{x:,.0f}"
        return str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


@dataclass
class Section:
    section: str
    markdown: str = ""
    commands: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    ratios: list[dict[str, Any]] = field(default_factory=list)

    def ratio(self, name: str, value: float | None, target: float, direction: str = ">=", unit: str = "x") -> None:
        self.ratios.append({"name": name, "value": value, "target": target, "direction": direction, "unit": unit})

    def write(self, path: Path) -> None:
        write_section(path, self.__dict__)


def ratio_met(r: dict[str, Any]) -> bool | None:
    """Whether a ratio meets its target (None when it was not measured)."""
    if r["value"] is None:
        return None
    return r["value"] >= r["target"] if r["direction"] == ">=" else r["value"] <= r["target"]


def write_section(path: Path, section: dict[str, Any]) -> None:
    """Writes a section's JSON for run.py and prints its ratios against their targets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(section, indent=1, default=float) + "\n")
    for r in section["ratios"]:
        ok = ratio_met(r)
        status = "n/a" if ok is None else ("met" if ok else "MISSED")
        value = "n/a" if r["value"] is None else f"{r['value']:.4g}"
        print(f"ratio: {r['name']}: {value}{r['unit']} (target {r['direction']} {r['target']}) {status}")


# --- a tokenizer every client can load offline ---------------------------------------------------


def write_word_tokenizer(folder: Path, mock_tokens: int) -> Path:
    """A word-level ``tokenizer.json`` (plus the config files transformers' AutoTokenizer
    reads) in which each of the truth server's tokens (`` tok0``, `` tok1``, ...) is one token:
    guidellm, AIPerf and vLLM's client count output tokens by re-tokenising the text, and load
    a tokenizer from a local folder when the hub is out of reach."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2}
    for i in range(mock_tokens):
        vocab[f"tok{i}"] = len(vocab)
    for i in range(2000):  # plain words for prompts
        vocab[f"w{i}"] = len(vocab)
    special = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for t, i in (("<s>", 1), ("</s>", 2))
    ]  # [UNK] stays an ordinary token: synthetic prompts made of it must decode to text
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": special,
        "normalizer": None,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
    }
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "model_max_length": 1_000_000,
                "clean_up_tokenization_spaces": False,
            }
        )
    )
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return folder / "tokenizer.json"


# --- the reference environment (embeddings.py, scorers.py) -------------------------------------
def setup_reference() -> tuple[str | None, str | None, float]:
    """Runs benches/setup_reference.sh; returns (venv python, error text, seconds)."""
    if os.environ.get("OPTBENCH_BENCH_PEERS") == "none":
        return None, "skipped: the run was asked not to use peers (benches/run.sh --no-peers)", 0.0
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(BENCHES / "setup_reference.sh")], capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0 or not proc.stdout.strip():
        return (
            None,
            f"setup_reference.sh exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-2000:]}",
            took,
        )
    return proc.stdout.strip().splitlines()[-1], None, took


def fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"
