"""Self-calibration: this machine's client error, measured in a few seconds.

``optbench.calibrate(concurrency=8)`` (``optbench calibrate`` on the command line) runs a short
closed-loop load test against optbench's mock server (:class:`optbench.testing.MockServer`),
whose timings are known: it answers each request's first token ``ttft_ms`` after reading it,
then the others ``gap_ms`` apart on absolute deadlines, and logs when it read each request and
wrote its first and last token. The client's numbers are compared with that log:

- **TTFT error** at P50 / P99: the client's TTFT percentile minus the same percentile of the
  mock's own (first token written - request read);
- **ITL error** at P50 / P99: the client's ITL percentile (gaps between token-carrying chunks,
  as every report shows them) minus the same percentile of the mock's per-request mean gap
  ((last token written - first) / (tokens - 1)). The mock writes on absolute deadlines, so any
  lateness of its own counts against the client: the error is an upper bound;
- **client CPU per 1,000 tokens**: CPU seconds of this process while the requests ran (from
  start to the last record, converting the records to pandas left out), per 1,000 tokens.

Positive errors mean the client overstates. The mock runs in a child process, not on a thread of
this one: the CPU time of this process (``time.process_time``, every thread of it) is then the
client's alone, whereas per-thread accounting would have to pick out the core's runtime threads
from the mock's by name. The load runs at the concurrency given and, by default, a 10 ms gap
(100 tokens/s per stream, a GPU server's decode rate at moderate batch sizes) for about two
seconds of streams.

``optbench run`` calibrates every configuration this way before its load test (at its
concurrency and output length; ``calibrate=False`` / ``--no-calibrate`` turns it off); the
results go to the configuration's ``meta.json``, the load test's summary, ``results.csv``
(``calibration_*`` and ``client_cpu_ms_per_1k_tokens``) and RESULTS.md, which says so when the
error is large against what was measured (:func:`large_error_warnings`).
"""

from __future__ import annotations

import json
import math
import os
import select
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optbench.driver import drive, records_table, start_run
from optbench.exceptions import ConfigError, OptbenchError

#: The mock's time to first token and gap between tokens, by default (milliseconds).
DEFAULT_TTFT_MS = 50.0
DEFAULT_GAP_MS = 10.0
#: Tokens per stream by default (a run's own ``output_tokens`` when smaller).
DEFAULT_OUTPUT_TOKENS = 64
#: About how long the streams of a calibration last, by default (seconds).
TARGET_SECONDS = 2.0
#: The calibrated error is large when its P99 is above this share of the measured P50.
LARGE_ERROR_SHARE = 0.10
#: How long the mock's process may take to start (importing optbench), in seconds.
MOCK_START_TIMEOUT_S = 60.0
#: The model name the calibration's requests carry.
MODEL = "optbench-calibration"


@dataclass(frozen=True)
class Calibration:
    """What a calibration measured (milliseconds unless named otherwise; errors are the client's
    percentile minus the mock's at the same percentile, None when nothing measured them)."""

    concurrency: int
    num_requests: int
    output_tokens: int
    ttft_ms: float
    gap_ms: float
    endpoint: str
    succeeded: int
    failed: int
    #: Tokens the mock wrote.
    tokens: int
    #: Seconds from the first request the mock read to the last token it wrote.
    window_s: float
    #: CPU seconds of this process while the requests ran.
    cpu_s: float
    ttft_err_p50_ms: float | None
    ttft_err_p99_ms: float | None
    itl_err_p50_ms: float | None
    itl_err_p99_ms: float | None
    #: The mock's own TTFT and per-request mean gap at P50 (what the errors are against).
    truth_ttft_p50_ms: float | None
    truth_itl_p50_ms: float | None

    @property
    def cpu_ms_per_1k_tokens(self) -> float | None:
        """Client CPU milliseconds per 1,000 tokens received."""
        return 1e6 * self.cpu_s / self.tokens if self.tokens else None

    @property
    def offered_tokens_per_s(self) -> float:
        """The token rate the mock offered: ``concurrency`` streams of one token per ``gap_ms``."""
        return self.concurrency * 1e3 / self.gap_ms if self.gap_ms > 0 else math.inf

    @property
    def tokens_per_s(self) -> float | None:
        """The token rate the client took in over the window."""
        return self.tokens / self.window_s if self.window_s > 0 else None

    def to_dict(self) -> dict[str, Any]:
        """Every field and the derived rates, as JSON values (what meta.json records)."""
        d = asdict(self)
        d.update(
            cpu_ms_per_1k_tokens=self.cpu_ms_per_1k_tokens,
            offered_tokens_per_s=self.offered_tokens_per_s,
            tokens_per_s=self.tokens_per_s,
        )
        return d

    def line(self) -> str:
        """One line for logs and terminals."""
        return summary_line(self.to_dict())

    def __str__(self) -> str:
        return self.line()


def _ms(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.2f}"


def summary_line(c: dict[str, Any]) -> str:
    """A calibration (``Calibration.to_dict()``, as meta.json holds it) in one line."""
    if c.get("error"):
        return f"client calibration: failed ({c['error']})"
    cpu = c.get("cpu_ms_per_1k_tokens")
    return (
        f"client calibration (concurrency {c['concurrency']}, {c['gap_ms']:g} ms gap, {c['succeeded']} requests): "
        f"TTFT error {_ms(c['ttft_err_p50_ms'])} / {_ms(c['ttft_err_p99_ms'])} ms at P50 / P99, "
        f"ITL error {_ms(c['itl_err_p50_ms'])} / {_ms(c['itl_err_p99_ms'])} ms, "
        f"client CPU {'–' if cpu is None else f'{cpu:.1f}'} ms per 1,000 tokens"
    )


def default_num_requests(concurrency: int, output_tokens: int, ttft_ms: float, gap_ms: float) -> int:
    """Enough requests for about :data:`TARGET_SECONDS` of streams, at least two per slot."""
    stream_s = (ttft_ms + gap_ms * max(output_tokens - 1, 0)) / 1e3
    waves = max(2, math.ceil(TARGET_SECONDS / stream_s)) if stream_s > 0 else 2
    return concurrency * waves


def _check(name: str, value: Any, low: float, high: float, integer: bool) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not (low <= value <= high) or value != value:
        what = "an integer" if integer else "a number"
        raise ConfigError(f"calibrate: {name} must be {what} from {low:g} to {high:g}, got {value!r}")


def calibrate(
    concurrency: int = 8,
    *,
    output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    gap_ms: float = DEFAULT_GAP_MS,
    ttft_ms: float = DEFAULT_TTFT_MS,
    num_requests: int | None = None,
    endpoint: str = "completions",
    timeout_s: float = 120.0,
) -> Calibration:
    """Measures this machine's client error against the mock server (see the module docs).

    Args:
        concurrency: requests in flight (a run's own concurrency).
        output_tokens: tokens per stream.
        gap_ms: the mock's gap between tokens; ``concurrency * 1000 / gap_ms`` tokens/s offered.
        ttft_ms: the mock's time to first token.
        num_requests: requests (default: about two seconds of streams, at least two per slot).
        endpoint: ``completions`` or ``chat``, as the run uses.
        timeout_s: per-request deadline.

    Raises ``ConfigError`` for a bad value (before anything starts) and ``OptbenchError`` when
    the mock cannot be started or no request succeeded.
    """
    _check("concurrency", concurrency, 1, 4096, True)
    _check("output_tokens", output_tokens, 2, 100_000, True)
    _check("gap_ms", gap_ms, 0.1, 10_000, False)
    _check("ttft_ms", ttft_ms, 0, 60_000, False)
    if num_requests is None:
        num_requests = default_num_requests(concurrency, output_tokens, ttft_ms, gap_ms)
    _check("num_requests", num_requests, 1, 1_000_000, True)
    if endpoint not in ("completions", "chat"):
        raise ConfigError(f"calibrate: endpoint must be 'completions' or 'chat', got {endpoint!r}")
    with _MockProcess(ttft_ms, gap_ms, output_tokens) as mock:
        cpu_before = time.process_time()
        run = start_run(
            mock.base_url,
            MODEL,
            api_key=None,
            prompts=["optbench calibration: the mock server answers every prompt the same way"],
            endpoint=endpoint,
            num_requests=num_requests,
            concurrency=concurrency,
            output_tokens=output_tokens,
            ignore_eos=True,
            timeout_s=timeout_s,
        )
        drive(run, False, "calibration", 0.25, what="calibration")
        cpu_s = time.process_time() - cpu_before
        truth = mock.log()
    if run.stop_reason() == "cancelled":
        raise KeyboardInterrupt
    rows = records_table(run).to_pandas()
    return _compare(rows, truth, cpu_s, concurrency, num_requests, output_tokens, ttft_ms, gap_ms, endpoint)


def _percentile(values: Any, q: float) -> float | None:
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    return float(np.percentile(arr, q)) if arr.size else None


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _compare(
    rows: Any,
    truth: list[dict[str, Any]],
    cpu_s: float,
    concurrency: int,
    num_requests: int,
    output_tokens: int,
    ttft_ms: float,
    gap_ms: float,
    endpoint: str,
) -> Calibration:
    """The calibration from the client's rows (a DataFrame of the core's records) and the
    mock's log."""
    ok = rows[rows["success"]]
    answered = [t for t in truth if t["first_token_sent_s"] is not None and t["last_token_sent_s"] is not None]
    if ok.empty or not answered:
        kinds = rows.loc[~rows["success"], "error_kind"].value_counts().to_dict()
        raise OptbenchError(f"calibration: no request succeeded against the mock server (failures: {kinds})")
    truth_ttft = [(t["first_token_sent_s"] - t["received_s"]) * 1e3 for t in answered]
    truth_itl = [
        (t["last_token_sent_s"] - t["first_token_sent_s"]) * 1e3 / (t["tokens_sent"] - 1)
        for t in answered
        if t["tokens_sent"] > 1
    ]
    itl = [g for gaps in ok["itl_ms"] if gaps is not None for g in gaps]
    start = min(t["received_s"] for t in answered)
    end = max(t["last_token_sent_s"] for t in answered)
    return Calibration(
        concurrency=concurrency,
        num_requests=num_requests,
        output_tokens=output_tokens,
        ttft_ms=ttft_ms,
        gap_ms=gap_ms,
        endpoint=endpoint,
        succeeded=int(len(ok)),
        failed=int(len(rows) - len(ok)),
        tokens=int(sum(t["tokens_sent"] for t in answered)),
        window_s=float(end - start),
        cpu_s=float(cpu_s),
        ttft_err_p50_ms=_minus(_percentile(ok["ttft_ms"], 50), _percentile(truth_ttft, 50)),
        ttft_err_p99_ms=_minus(_percentile(ok["ttft_ms"], 99), _percentile(truth_ttft, 99)),
        itl_err_p50_ms=_minus(_percentile(itl, 50), _percentile(truth_itl, 50)),
        itl_err_p99_ms=_minus(_percentile(itl, 99), _percentile(truth_itl, 99)),
        truth_ttft_p50_ms=_percentile(truth_ttft, 50),
        truth_itl_p50_ms=_percentile(truth_itl, 50),
    )


def large_error_warnings(
    calibration: dict[str, Any] | None, ttft_p50_ms: float | None, itl_p50_ms: float | None
) -> list[str]:
    """Why a run's numbers cannot be trusted to the precision shown: the calibrated TTFT or ITL
    error at P99 above :data:`LARGE_ERROR_SHARE` of the run's measured P50 of the same metric
    (a saturated client machine, say). Empty when the error is small or nothing was measured."""
    if not calibration or calibration.get("error"):
        return []
    out = []
    for metric, err_key, measured in (
        ("TTFT", "ttft_err_p99_ms", ttft_p50_ms),
        ("ITL", "itl_err_p99_ms", itl_p50_ms),
    ):
        err = calibration.get(err_key)
        if err is None or measured is None or not math.isfinite(measured) or measured <= 0:
            continue
        if abs(err) > LARGE_ERROR_SHARE * measured:
            out.append(
                f"the client's calibrated {metric} error at P99 ({err:+.2f} ms) is "
                f"{100 * abs(err) / measured:.0f}% of the measured P50 {metric} ({measured:.2f} ms), above "
                f"{100 * LARGE_ERROR_SHARE:.0f}%: the client machine adds noise of that size (is it saturated?)"
            )
    return out


# --------------------------------------------------------------------------- the mock's process


class _MockProcess:
    """The mock server in a child process: it prints its URL, then answers ``log`` on stdin
    with its log as one JSON line; end of stdin (this process closing the pipe, or dying)
    stops it."""

    def __init__(self, ttft_ms: float, gap_ms: float, tokens: int) -> None:
        package_root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
        code = "import sys; from optbench.calibration import serve_mock; serve_mock(sys.argv[1:])"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(ttft_ms), str(gap_ms), str(tokens)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.base_url = ""

    def _line(self, timeout_s: float, what: str) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            err = self.proc.stderr.read()[-2000:] if self.proc.stderr else ""
            raise OptbenchError(f"calibration: the mock server's process did not {what}: {err.strip() or 'no output'}")
        return line

    def __enter__(self) -> "_MockProcess":
        try:
            self.base_url = self._line(MOCK_START_TIMEOUT_S, "start").strip()
        except BaseException:
            self.close()
            raise
        return self

    def log(self) -> list[dict[str, Any]]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("log\n")
        self.proc.stdin.flush()
        log = json.loads(self._line(30, "send its log"))
        assert isinstance(log, list)
        return log

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_mock(argv: list[str]) -> None:
    """The child process's side of :class:`_MockProcess` (``argv``: ttft_ms, gap_ms, tokens)."""
    from optbench.testing import MockServer

    ttft_ms, gap_ms, tokens = float(argv[0]), float(argv[1]), int(argv[2])
    with MockServer(ttft_ms=ttft_ms, gap_ms=gap_ms, tokens=tokens) as server:
        print(server.base_url, flush=True)
        for line in sys.stdin:
            if line.strip() == "log":
                print(json.dumps(server.log()), flush=True)


__all__ = ["Calibration", "calibrate", "large_error_warnings", "summary_line", "LARGE_ERROR_SHARE"]
