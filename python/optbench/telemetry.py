"""GPU telemetry during a load test, and what it costs: energy per token, cost per million tokens.

:class:`GpuTelemetry` samples NVIDIA's management library (NVML, through ``nvidia-ml-py``'s
``pynvml``) on a background thread every ``interval_s`` while a load test runs, for each GPU the
server can use (``CUDA_VISIBLE_DEVICES`` as indices or UUIDs, else every GPU NVML sees): power
draw, the total energy counter (millijoules since the driver loaded; Volta and newer), memory
used, GPU utilisation and the SM clock. :func:`summarize_samples` turns the samples into

- **energy** over the window: the energy counter's increase (or, where a GPU has no counter,
  power integrated over time with the trapezoid rule), summed over the GPUs, and from it the
  energy **per output token** and **per request** (every request of the load test call, warm-up
  included, since the window holds them: the caller passes those counts);
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

    def summary(self, *, output_tokens: int | None = None, requests: int | None = None) -> dict[str, Any]:
        """:func:`summarize_samples` of the samples taken, or ``{"available": False, "reason"}``."""
        if not self.available:
            return {"available": False, "reason": f"NVML: {self.reason}"}
        out = summarize_samples(self.samples, output_tokens=output_tokens, requests=requests)
        out["gpus"] = self.gpus
        return out


def _energy_j(series: Sequence[GpuSample]) -> tuple[float | None, str]:
    """One GPU's energy over its samples: the counter's increase, else power integrated."""
    counter = [s for s in series if s.energy_j is not None]
    if len(counter) >= 2 and counter[-1].energy_j is not None and counter[0].energy_j is not None:
        return counter[-1].energy_j - counter[0].energy_j, "energy counter"
    power = [s for s in series if s.power_w is not None]
    if len(power) >= 2:
        total = 0.0
        for a, b in zip(power, power[1:]):
            total += 0.5 * ((a.power_w or 0.0) + (b.power_w or 0.0)) * (b.time - a.time)
        return total, "power integrated"
    return None, "no energy or power readings"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize_samples(
    samples: Sequence[GpuSample], *, output_tokens: int | None = None, requests: int | None = None
) -> dict[str, Any]:
    """Energy, power, memory, utilisation and clocks over ``samples`` (see the module docs):
    energy summed over GPUs; per output token and per request when those counts are given."""
    if not samples:
        return {"available": False, "reason": "no samples"}
    by_gpu: dict[int, list[GpuSample]] = {}
    for s in sorted(samples, key=lambda s: s.time):
        by_gpu.setdefault(s.gpu, []).append(s)
    energies = {gpu: _energy_j(series) for gpu, series in by_gpu.items()}
    known = [e for e, _ in energies.values() if e is not None]
    energy = sum(known) if len(known) == len(energies) else None
    window = max(s.time for s in samples) - min(s.time for s in samples)
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
        "window_s": window,
        "energy_j": energy,
        "energy_source": sorted({how for _, how in energies.values()}),
        "power_mean_w": energy / window if energy is not None and window > 0 else _mean(list(moments.values())),
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
