"""GPU telemetry: the machine without a GPU for real, the arithmetic on a known sample series."""

from __future__ import annotations

import pytest

from optbench.telemetry import GpuSample, GpuTelemetry, cost_per_million_tokens, summarize_samples, summary_line


def _has_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


@pytest.mark.skipif(_has_gpu(), reason="this machine has an NVIDIA GPU: the no-GPU path needs one without")
def test_without_a_gpu_it_says_so_in_one_line_and_never_fails():
    with GpuTelemetry(interval_s=0.01) as t:
        pass
    assert not t.available and t.samples == []
    s = t.summary(output_tokens=100, requests=2)
    assert s["available"] is False and s["reason"].startswith("NVML: ")
    line = summary_line(s)
    assert line.startswith("GPU telemetry: none (NVML: ") and "\n" not in line


def test_without_nvidia_ml_py_it_says_so(monkeypatch):
    import optbench.telemetry as telemetry

    def missing():
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(telemetry, "_nvml", missing)
    with GpuTelemetry() as t:
        pass
    assert summary_line(t.summary()) == "GPU telemetry: none (NVML: nvidia-ml-py is not installed)"


def _series(gpu: int, energy: bool = True) -> list[GpuSample]:
    """Four samples one second apart: 100 W, 200 W, 300 W, 200 W; the energy counter rising
    by the trapezoid areas (150 + 250 + 250 J) from 1,000 J."""
    power = [100.0, 200.0, 300.0, 200.0]
    counter = [1000.0, 1150.0, 1400.0, 1650.0]
    return [
        GpuSample(
            time=10.0 + i,
            gpu=gpu,
            power_w=p,
            energy_j=counter[i] if energy else None,
            memory_used_mib=1000.0 + 100 * i + gpu,
            utilization_pct=50.0 + 10 * i,
            sm_clock_mhz=1500.0,
        )
        for i, p in enumerate(power)
    ]


def test_energy_per_token_and_request_from_the_counter():
    s = summarize_samples(_series(0), output_tokens=1300, requests=13)
    assert s["energy_j"] == pytest.approx(650.0) and s["energy_source"] == ["energy counter"]
    assert s["window_s"] == pytest.approx(3.0)
    assert s["energy_per_output_token_j"] == pytest.approx(0.5)
    assert s["energy_per_request_j"] == pytest.approx(50.0)
    assert s["power_mean_w"] == pytest.approx(650.0 / 3.0) and s["power_peak_w"] == 300.0
    assert s["memory_peak_mib"] == 1300.0 and s["utilization_mean_pct"] == pytest.approx(65.0)
    assert s["sm_clock_mean_mhz"] == 1500.0


def test_two_gpus_add_up_and_power_is_integrated_without_a_counter():
    s = summarize_samples(_series(0) + _series(1, energy=False), output_tokens=650, requests=None)
    # GPU 0 by its counter (650 J), GPU 1 by the trapezoid rule over its power (the same 650 J).
    assert s["energy_j"] == pytest.approx(1300.0) and s["energy_source"] == ["energy counter", "power integrated"]
    assert s["energy_per_output_token_j"] == pytest.approx(2.0) and s["energy_per_request_j"] is None
    assert s["power_peak_w"] == 600.0 and s["memory_peak_mib_per_gpu"] == {"0": 1300.0, "1": 1301.0}
    assert s["num_gpus"] == 2 and s["memory_peak_mib"] == 1301.0


def test_energy_over_the_measured_window_is_interpolated_at_its_edges():
    # The window 10.5 s .. 12.5 s of the series 10 s .. 13 s.
    s = summarize_samples(_series(0) + _series(1, energy=False), output_tokens=95, requests=5, window=(10.5, 12.5))
    assert s["window"] == "measured" and s["window_s"] == pytest.approx(2.0)
    # GPU 0's counter, linear between samples: 1,075 J at 10.5 s, 1,525 J at 12.5 s.
    # GPU 1's power, linear between samples (150 W at 10.5 s, 250 W at 12.5 s), integrated:
    # 87.5 J to 11 s, 250 J to 12 s, 137.5 J to 12.5 s.
    assert s["energy_j"] == pytest.approx(450.0 + 475.0)
    assert s["energy_per_output_token_j"] == pytest.approx(925.0 / 95) and s["energy_per_request_j"] == 185.0
    assert s["power_mean_w"] == pytest.approx(925.0 / 2.0)
    # Power, memory and utilisation from the samples inside the window (11 s and 12 s).
    assert s["num_samples"] == 4 and s["power_peak_w"] == 600.0 and s["memory_peak_mib"] == 1201.0
    assert s["sampled_before_s"] == pytest.approx(0.5) and s["sampled_after_s"] == pytest.approx(0.5)
    # A window on the samples' own span gives what the whole sampling gives.
    whole = summarize_samples(_series(0), window=(10.0, 13.0))
    assert whole["energy_j"] == pytest.approx(650.0) and summarize_samples(_series(0))["window"] == "sampled"


def test_cost_per_million_output_tokens():
    # $3.60 an hour at 1,000 output tokens/s: 3.6 M tokens an hour, $1 per million.
    assert cost_per_million_tokens(3.6, 1000.0) == pytest.approx(1.0)
    assert cost_per_million_tokens(2.0, 250.0) == pytest.approx(2.0 / (250 * 3600) * 1e6)
    assert cost_per_million_tokens(None, 1000.0) is None
    assert cost_per_million_tokens(3.6, 0.0) is None and cost_per_million_tokens(3.6, float("nan")) is None


def test_the_observer_reports_energy_over_the_measured_requests_window():
    from types import SimpleNamespace

    import pandas as pd

    from optbench.evidence import Observer

    observer = Observer("http://127.0.0.1:9", gpus=True)
    assert observer.gpus is not None
    observer.gpus.available, observer.gpus.samples = True, _series(0)
    rows = pd.DataFrame({"success": [True, True, True], "warmup": [True, False, False], "output_tokens": [50, 9, 9]})
    result = SimpleNamespace(
        requests=rows,
        summary={"total_output_tokens": 18, "num_requests": 2},
        measured_window_monotonic=(10.5, 12.5),
    )
    gpu = observer.record(result)["gpu_telemetry"]
    assert gpu["window"] == "measured" and gpu["energy_j"] == pytest.approx(450.0)
    assert gpu["output_tokens"] == 18 and gpu["requests"] == 2 and gpu["energy_per_request_j"] == pytest.approx(225.0)
    # Without a window (a run recovered from its journal): every request, over the whole sampling.
    result.measured_window_monotonic = None
    gpu = observer.record(result)["gpu_telemetry"]
    assert gpu["window"] == "sampled" and gpu["energy_j"] == pytest.approx(650.0)
    assert gpu["output_tokens"] == 68 and gpu["requests"] == 3
