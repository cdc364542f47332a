"""GPU telemetry during a load test, and what it costs: energy per token, cost per million tokens.

:class:`GpuTelemetry` samples NVIDIA's management library (NVML, through ``nvidia-ml-py``'s
``pynvml``) on a background thread every ``interval_s`` while a load test runs, for each GPU the
server can use (``CUDA_VISIBLE_DEVICES`` as indices or UUIDs, else every GPU NVML sees): power
draw, the total energy counter (millijoules since the driver loaded; Volta and newer), memory
used, GPU utilisation and the SM clock. :func:`summarize_samples` turns the samples into

- **energy** over the window: the energy counter's increase (or, where a GPU has no counter,
  power integrated over time with the trapezoid rule), summed over the GPUs, and from it the
  energy **per output token** and **per request** (the caller passes the counts of the requests
  the window holds). The window is the load test's **measured window** when the caller gives it
  (``window=(start, end)`` on ``time.monotonic()``'s clock: warm-up excluded): the counter, or the
  power, is interpolated linearly between the two samples around each edge, so the residual
  error is the energy's departure from a straight line within one sampling interval at each
  edge. Without it, the window is the whole sampling (the first sample to the last);
- mean and peak power, **peak memory used**, mean utilisation and SM clock.

Without a GPU or without NVML this says so in one line (``GPU telemetry: none (NVML: <reason>)``)
and never fails. The sampling itself runs on a plain thread: NVML calls take microseconds and
release the GIL.

**Cost.** A configuration's ``gpu_cost_per_hour`` (a top-level key of its TOML file: the hourly
price of the GPUs it runs on, in any currency) turns its measured output-token throughput into a
**cost per million output tokens**: ``gpu_cost_per_hour / (output tokens/s x 3600) x 10^6``
(:func:`cost_per_million_tokens`). It needs no NVML: the throughput is the load test's.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

#: Seconds between samples by default.
DEFAULT_INTERVAL_S = 0.5


@dataclass(frozen=True)
class GpuSample:
    """One GPU's readings at one moment (None where the GPU does not report that quantity)."""

    time: float  #: seconds (time.monotonic)
    gpu: int  #: NVML index
    power_w: float | None
    energy_j: float | None  #: the total energy counter
    memory_used_mib: float | None
    utilization_pct: float | None
    sm_clock_mhz: float | None


def _nvml() -> Any:
    """The ``pynvml`` module (raises ImportError without ``nvidia-ml-py``)."""
    import pynvml

    return pynvml


def _visible(pynvml: Any, env: Mapping[str, str]) -> list[Any]:
    """NVML handles of the GPUs ``CUDA_VISIBLE_DEVICES`` in ``env`` names (all without it)."""
    count = pynvml.nvmlDeviceGetCount()
    wanted = env.get("CUDA_VISIBLE_DEVICES")
    if wanted is None or not wanted.strip():
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    handles = []
    for item in (x.strip() for x in wanted.split(",") if x.strip()):
        if item.isdigit():
            if int(item) < count:
                handles.append(pynvml.nvmlDeviceGetHandleByIndex(int(item)))
        else:
            handles.append(pynvml.nvmlDeviceGetHandleByUUID(item))
    return handles


def _read(pynvml: Any, handle: Any, index: int, now: float) -> GpuSample:
    def attempt(fn: Any, *args: Any) -> Any:
        try:
            return fn(handle, *args)
        except pynvml.NVMLError:  # not supported on this GPU, or momentarily unavailable
            return None

    power = attempt(pynvml.nvmlDeviceGetPowerUsage)  # milliwatts
    energy = attempt(pynvml.nvmlDeviceGetTotalEnergyConsumption)  # millijoules
    memory = attempt(pynvml.nvmlDeviceGetMemoryInfo)
    util = attempt(pynvml.nvmlDeviceGetUtilizationRates)
    clock = attempt(pynvml.nvmlDeviceGetClockInfo, pynvml.NVML_CLOCK_SM)
    return GpuSample(
        time=now,
        gpu=index,
        power_w=None if power is None else power / 1e3,
        energy_j=None if energy is None else energy / 1e3,
        memory_used_mib=None if memory is None else memory.used / 2**20,
        utilization_pct=None if util is None else float(util.gpu),
        sm_clock_mhz=None if clock is None else float(clock),
    )


class GpuTelemetry:
    """Samples NVML on a daemon thread between :meth:`start` and :meth:`stop` (or as a context
    manager). ``available`` is False, with ``reason``, where there is nothing to sample; it
    never raises for that. ``env`` is the server's environment (its ``CUDA_VISIBLE_DEVICES``)."""

    def __init__(self, *, interval_s: float = DEFAULT_INTERVAL_S, env: Mapping[str, str] | None = None) -> None:
        self.interval_s = interval_s
        self.env = dict(os.environ if env is None else env)
        self.samples: list[GpuSample] = []
        self.gpus: list[dict[str, Any]] = []
        self.available = False
        self.reason: str | None = None
        self._pynvml: Any = None
        self._handles: list[tuple[int, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "GpuTelemetry":
        try:
            pynvml = _nvml()
        except ImportError:
            self.reason = "nvidia-ml-py is not installed"
            return self
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            self.reason = str(e) or type(e).__name__
            return self
        try:
            handles = _visible(pynvml, self.env)
            for h in handles:
                index = int(pynvml.nvmlDeviceGetIndex(h))
                name = pynvml.nvmlDeviceGetName(h)
                self.gpus.append({"index": index, "name": name.decode() if isinstance(name, bytes) else str(name)})
                self._handles.append((index, h))
        except pynvml.NVMLError as e:
            self.reason = str(e) or type(e).__name__
            pynvml.nvmlShutdown()
            return self
        if not self._handles:
            self.reason = "no GPU found"
            pynvml.nvmlShutdown()
            return self
        self._pynvml = pynvml
        self.available = True
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="optbench-gpu-telemetry", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        now = time.monotonic()
        for index, h in self._handles:
            self.samples.append(_read(self._pynvml, h, index, now))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        if self.available and self._pynvml is not None:
            self._sample()
            try:
                self._pynvml.nvmlShutdown()
            except self._pynvml.NVMLError:
                pass
            self._pynvml = None

    def __enter__(self) -> "GpuTelemetry":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def summary(
        self,
        *,
        output_tokens: int | None = None,
        requests: int | None = None,
        window: tuple[float, float] | None = None,
    ) -> dict[str, Any]:
        """:func:`summarize_samples` of the samples taken (over ``window``, on
        ``time.monotonic()``'s clock, when given), or ``{"available": False, "reason"}``."""
        if not self.available:
            return {"available": False, "reason": f"NVML: {self.reason}"}
        out = summarize_samples(self.samples, output_tokens=output_tokens, requests=requests, window=window)
        out["gpus"] = self.gpus
        return out


def interpolate(points: Sequence[tuple[float, float]], t: float) -> float:
    """The value at time ``t`` of the piecewise-linear curve through ``points`` (time, value),
    sorted by time and not empty; outside them, the first or last value."""
    if t <= points[0][0]:
        return points[0][1]
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        if t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return points[-1][1]


def _clip(points: list[tuple[float, float]], window: tuple[float, float] | None) -> list[tuple[float, float]]:
    """``points`` cut to ``window``: the values interpolated at its edges and the points inside."""
    if window is None:
        return points
    start, end = window
    inside = [p for p in points if start < p[0] < end]
    return [(start, interpolate(points, start)), *inside, (end, interpolate(points, end))]


def _energy_j(series: Sequence[GpuSample], window: tuple[float, float] | None = None) -> tuple[float | None, str]:
    """One GPU's energy over its samples, or over ``window`` (interpolated at its edges): the
    counter's increase, else power integrated with the trapezoid rule."""
    counter = [(s.time, s.energy_j) for s in series if s.energy_j is not None]
    if len(counter) >= 2:
        clipped = _clip(counter, window)
        return clipped[-1][1] - clipped[0][1], "energy counter"
    power = _clip([(s.time, s.power_w) for s in series if s.power_w is not None], window)
    if len(power) >= 2:
        total = 0.0
        for (t0, p0), (t1, p1) in zip(power, power[1:]):
            total += 0.5 * (p0 + p1) * (t1 - t0)
        return total, "power integrated"
    return None, "no energy or power readings"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize_samples(
    samples: Sequence[GpuSample],
    *,
    output_tokens: int | None = None,
    requests: int | None = None,
    window: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Energy, power, memory, utilisation and clocks over ``samples`` (see the module docs):
    energy summed over GPUs; per output token and per request when those counts are given.
    ``window`` (start, end on the samples' clock): energy interpolated at its edges, power,
    memory, utilisation and clocks from the samples inside it (all of them when none is)."""
    if not samples:
        return {"available": False, "reason": "no samples"}
    if window is not None and not window[0] < window[1]:
        window = None  # an empty window (no measured request): the whole sampling
    by_gpu: dict[int, list[GpuSample]] = {}
    for s in sorted(samples, key=lambda s: s.time):
        by_gpu.setdefault(s.gpu, []).append(s)
    energies = {gpu: _energy_j(series, window) for gpu, series in by_gpu.items()}
    known = [e for e, _ in energies.values() if e is not None]
    energy = sum(known) if len(known) == len(energies) else None
    sampled = (min(s.time for s in samples), max(s.time for s in samples))
    if window is not None:
        samples = [s for s in samples if window[0] <= s.time <= window[1]] or samples
    start, end = window or sampled
    window_s = end - start
    # Power of all GPUs together at each sampling moment.
    moments: dict[float, float] = {}
    for s in samples:
        if s.power_w is not None:
            moments[s.time] = moments.get(s.time, 0.0) + s.power_w
    memory = [s.memory_used_mib for s in samples if s.memory_used_mib is not None]
    util = [s.utilization_pct for s in samples if s.utilization_pct is not None]
    clock = [s.sm_clock_mhz for s in samples if s.sm_clock_mhz is not None]
    peak_memory: dict[int, float] = {}
    for s in samples:
        if s.memory_used_mib is not None:
            peak_memory[s.gpu] = max(peak_memory.get(s.gpu, 0.0), s.memory_used_mib)
    out: dict[str, Any] = {
        "available": True,
        "num_gpus": len(by_gpu),
        "num_samples": len(samples),
        "window": "sampled" if window is None else "measured",
        "window_s": window_s,
        # How far the samples reach beyond the window's edges (0 and 0 without a window).
        "sampled_before_s": start - sampled[0],
        "sampled_after_s": sampled[1] - end,
        "energy_j": energy,
        "energy_source": sorted({how for _, how in energies.values()}),
        "power_mean_w": energy / window_s if energy is not None and window_s > 0 else _mean(list(moments.values())),
        "power_peak_w": max(moments.values()) if moments else None,
        "memory_peak_mib": max(memory) if memory else None,
        "memory_peak_mib_per_gpu": {str(k): v for k, v in sorted(peak_memory.items())},
        "utilization_mean_pct": _mean(util),
        "sm_clock_mean_mhz": _mean(clock),
        "output_tokens": output_tokens,
        "requests": requests,
        "energy_per_output_token_j": energy / output_tokens if energy is not None and output_tokens else None,
        "energy_per_request_j": energy / requests if energy is not None and requests else None,
    }
    return out


def cost_per_million_tokens(gpu_cost_per_hour: float | None, output_tokens_per_s: float | None) -> float | None:
    """What a million output tokens cost at ``gpu_cost_per_hour`` and the measured throughput
    (None when either is unknown or the throughput is not positive)."""
    if gpu_cost_per_hour is None or output_tokens_per_s is None:
        return None
    if not math.isfinite(output_tokens_per_s) or output_tokens_per_s <= 0:
        return None
    return gpu_cost_per_hour / (output_tokens_per_s * 3600.0) * 1e6


def summary_line(t: Mapping[str, Any] | None) -> str:
    """GPU telemetry (:meth:`GpuTelemetry.summary`) in one line."""
    if not t:
        return "GPU telemetry: not sampled"
    if not t.get("available"):
        return f"GPU telemetry: none ({t.get('reason')})"

    def num(key: str, fmt: str, unit: str) -> str:
        v = t.get(key)
        return "–" if v is None else f"{v:{fmt}}{unit}"

    return (
        f"GPU telemetry ({t['num_gpus']} GPU(s), {t['window_s']:.1f} s): energy {num('energy_j', ',.0f', ' J')}, "
        f"{num('energy_per_output_token_j', '.3f', ' J')} per output token, "
        f"{num('energy_per_request_j', ',.1f', ' J')} per request, mean power {num('power_mean_w', ',.0f', ' W')}, "
        f"peak memory {num('memory_peak_mib', ',.0f', ' MiB')}, utilisation {num('utilization_mean_pct', '.0f', '%')}, "
        f"SM clock {num('sm_clock_mean_mhz', ',.0f', ' MHz')}"
    )


__all__ = ["GpuSample", "GpuTelemetry", "cost_per_million_tokens", "summarize_samples", "summary_line"]
