"""Type stub of optbench's Rust extension (see rust/optbench-py)."""

from collections.abc import Awaitable
from os import PathLike
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict, final, type_check_only

import numpy as np
import numpy.typing as npt

__all__ = [
    "METRIC_NAMES",
    "REASONING_METRIC_NAMES",
    "STATISTIC_NAMES",
    "ConfigError",
    "Embedder",
    "LoadTest",
    "MockServer",
    "OptbenchError",
    "ServerConnectionError",
    "ServerError",
    "ServerTimeoutError",
    "TokenizerError",
    "__version__",
    "build_profile",
    "check_base_url",
    "count_tokens",
    "gsm8k_correct",
    "gsm8k_extract",
    "humaneval_program",
    "make_prefix_prompts",
    "make_prompts",
    "make_trace_prompts",
    "pass_at_k",
    "read_journal",
    "run_programs",
    "run_tests",
    "squad_normalize",
    "squad_v2_scores",
]
__version__: str
#: "release" for optimised builds, "debug" otherwise.
build_profile: Literal["release", "debug"]

class OptbenchError(Exception): ...
class ConfigError(OptbenchError): ...
class TokenizerError(OptbenchError): ...
class ServerError(OptbenchError): ...
class ServerConnectionError(ServerError, ConnectionError): ...
class ServerTimeoutError(ServerError, TimeoutError): ...

_MetricName = Literal[
    "ttft_ms",
    "e2e_ms",
    "tokens_per_s",
    "tpot_ms",
    "itl_ms",
    "chunk_gap_ms",
    "tokens_per_chunk",
    "queue_delay_ms",
    "output_tokens",
    "prompt_tokens",
]
_ReasoningMetricName = Literal[
    "ttft_reasoning_ms",
    "ttft_answer_ms",
    "reasoning_tokens",
    "answer_tokens",
    "reasoning_tokens_per_s",
    "answer_tokens_per_s",
]
_StatisticName = Literal["count", "mean", "p50", "p90", "p95", "p99", "min", "max"]
#: The keys of ``LoadTest.summary()["metrics"]``, in the order they are computed.
METRIC_NAMES: tuple[_MetricName, ...]
#: The metrics a run with reasoning adds to ``LoadTest.summary()["metrics"]``.
REASONING_METRIC_NAMES: tuple[_ReasoningMetricName, ...]
#: The keys of each metric's statistics, in order.
STATISTIC_NAMES: tuple[_StatisticName, ...]

@type_check_only
class Progress(TypedDict):
    """``LoadTest.progress()``: live counters."""

    sent: int
    succeeded: int
    failed: int
    #: Token-carrying chunks received so far.
    chunks: int
    total: int
    elapsed_s: float

@type_check_only
class MetricStats(TypedDict):
    """The statistics of one metric over the measured requests."""

    count: int
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    min: float
    max: float

@type_check_only
class Summary(TypedDict):
    """``LoadTest.summary()``: the aggregates over measured requests."""

    num_requests: int
    num_succeeded: int
    num_failed: int
    num_warmup: int
    failures_by_kind: dict[str, int]
    duration_s: float
    #: The measured window on the run's clock (ns after ``LoadTest.clock_origin_monotonic()``):
    #: the first measured request's scheduled start to the last measured request's end; None
    #: without measured requests.
    measured_start_ns: int | None
    measured_end_ns: int | None
    request_throughput: float
    output_token_throughput: float
    total_output_tokens: int
    total_prompt_tokens: int
    num_token_counts_estimated: int
    #: Token-carrying chunks of successful requests, and those that carried more than one token.
    num_chunks: int
    num_multi_token_chunks: int
    #: Successful requests whose chunk token counts came from per-chunk usage, and those whose
    #: chunks carried none (one token each).
    num_chunk_counts_from_usage: int
    num_chunk_counts_one_per_chunk: int
    #: A metric with no values is absent.
    metrics: dict[_MetricName | _ReasoningMetricName, MetricStats]
    #: None when no successful measured request had reasoning.
    reasoning: ReasoningSummary | None
    #: ``LoadTest.summary()`` only (a journal's summary has none).
    preconnect: NotRequired[PreconnectSummary]

@type_check_only
class PreconnectSummary(TypedDict):
    """``Summary["preconnect"]``: opening the connection pool before the clock started."""

    enabled: bool
    #: As many as the load shape holds in flight (0 when not enabled).
    connections_wanted: int
    #: TCP connections the client opened during the preconnect.
    connections_opened: int
    seconds: float
    #: Why the preconnect fell short (a warning; the run went on), else None.
    error: str | None
    #: TCP connections the client opened after the clock started (warm-up included).
    connections_opened_during_run: int

@type_check_only
class ReasoningSummary(TypedDict):
    """``Summary["reasoning"]``: the aggregates of a run with reasoning (successful requests)."""

    num_with_reasoning: int
    #: Requests whose reasoning count is per chunk (no usage ``completion_tokens_details``).
    num_reasoning_counts_from_chunks: int
    total_reasoning_tokens: int
    total_answer_tokens: int
    #: Tokens per second over the measured window.
    reasoning_token_throughput: float
    answer_token_throughput: float

@type_check_only
class MockLogEntry(TypedDict):
    """``MockServer.log()``: the server's truth about one answered request (seconds since it started)."""

    received_s: float
    first_token_sent_s: float | None
    last_token_sent_s: float | None
    #: The first chunk with answer (not reasoning) tokens.
    first_answer_token_sent_s: float | None
    tokens_sent: int
    reasoning_tokens_sent: int
    concurrent_at_arrival: int
    slot_acquired_s: float | None
    diverged: bool
    #: The TCP connection it came on (numbered from 0 as accepted), and the requests of any
    #: kind read on it before (0: this request opened the connection).
    connection: int
    earlier_on_connection: int

@type_check_only
class ProgramResult(TypedDict):
    """One program's outcome in ``run_programs``."""

    status: Literal["passed", "timed out", "failed"]
    reason: str | None
    #: "passed", "timed out" or "failed: <reason>".
    text: str
    exit_code: int | None
    signal: int | None
    duration_s: float
    cpu_time_s: float
    stdout: str
    stderr: str
    truncated: bool

@type_check_only
class SandboxLimits(TypedDict):
    """The resource limits the sandbox applied."""

    cpu_time_s: int
    address_space_bytes: int
    processes: int | None
    file_size_bytes: int
    open_files: int
    core_file_bytes: int
    #: The whole program's memory (its cgroup's limit); None without a cgroup.
    program_memory_bytes: int | None
    #: The whole program's processes (its cgroup's pids.max); None without a cgroup.
    program_processes: int | None

@type_check_only
class Isolation(TypedDict):
    """How isolated ``run_programs``' programs were (the weakest any run got)."""

    python: str
    python_version: str
    dropped_to_uid: int | None
    network_namespace: bool
    ipc_namespace: bool
    pid_namespace: bool
    private_proc: bool
    #: The work directory's total size cap (a tmpfs of its own); None: per-file limit only.
    disk_bytes: int | None
    host_run_hidden: bool
    #: "v2" or "v1": the run's cgroup; None: limits per process only.
    cgroup: str | None
    memory_limit_whole_program: bool
    seccomp: bool
    landlock_abi: int | None
    filesystem_writes_confined: bool
    tcp_denied: bool
    signals_scoped: bool
    no_new_privs: bool
    limits: SandboxLimits
    wall_timeout_s: float
    #: The programs' processes were forked from a fork server per worker (a pre-started
    #: interpreter); False: a fresh interpreter each (``notes`` says why).
    fork_server: bool
    notes: list[str]

@final
class LoadTest:
    def __new__(
        cls,
        base_url: str | list[str],
        model: str,
        *,
        prompts: list[str] | None = None,
        messages: list[list[dict[str, Any]]] | None = None,
        requests: list[dict[str, Any]] | None = None,
        endpoint: str = "completions",
        num_requests: int = 100,
        concurrency: int | None = ...,
        request_rate: float | None = None,
        arrival: str = "poisson",
        burstiness: float = 1.0,
        output_tokens: int = 1024,
        seed: int = 0,
        warmup: int = 0,
        ignore_eos: bool = False,
        timeout_s: float | None = None,
        time_limit_s: float | None = None,
        api_key: str | None = None,
        temperature: float = 0.0,
        extra_body: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        journal: str | PathLike[str] | None = None,
        routing: str = "round_robin",
        sessions: list[list[str]] | None = None,
        think_time_s: float = 0.0,
        trace_offsets_ns: list[int] | None = None,
        preconnect: bool = True,
    ) -> LoadTest: ...
    def progress(self) -> Progress: ...
    def cancel(self) -> None: ...
    def done(self) -> bool: ...
    def wait(self, timeout_s: float | None = None) -> bool: ...
    def wait_async(self) -> Awaitable[None]: ...
    def stop_reason(self) -> Literal["completed", "cancelled", "time_limit"]: ...
    def wall_s(self) -> float: ...
    def clock_origin_monotonic(self) -> float:
        """The instant the records' ``*_ns`` times count from, on ``time.monotonic()``'s clock."""
    def records(self) -> Any:
        """An Arrow record batch (Arrow PyCapsule interface)."""
    def summary(self) -> Summary: ...

def check_base_url(base_url: str) -> str:
    """The server root of ``base_url``; a ``ConfigError`` says what is wrong with it."""

def read_journal(path: str | PathLike[str]) -> tuple[Any, Summary, list[int]]:
    """(records as an Arrow batch, their summary, numbers of partial lines skipped)."""

def make_prompts(
    base_url: str,
    model: str,
    num_prompts: int,
    input_tokens: int,
    *,
    seed: int = 0,
    tokenizer: str | None = None,
    api_key: str | None = None,
    timeout_s: float | None = None,
) -> tuple[list[str], str, str | None]: ...
def make_prefix_prompts(
    base_url: str,
    model: str,
    prefixes: int,
    prefix_tokens: int,
    suffixes: int,
    suffix_tokens: int,
    *,
    seed: int = 0,
    tokenizer: str | None = None,
    api_key: str | None = None,
    timeout_s: float | None = None,
) -> tuple[list[str], list[int], list[int], str, str | None]: ...
def make_trace_prompts(
    base_url: str,
    model: str,
    prefix_tokens: list[int],
    prompts: list[tuple[int | None, int]],
    *,
    seed: int = 0,
    tokenizer: str | None = None,
    api_key: str | None = None,
    timeout_s: float | None = None,
) -> tuple[list[str], list[int], str, str | None]: ...
def count_tokens(tokenizer: str, text: str, add_special: bool = True) -> int: ...

@final
class MockServer:
    def __new__(
        cls,
        *,
        ttft_ms: float = 20.0,
        gap_ms: float = 5.0,
        tokens: int = 16,
        fault: str = "none",
        fault_arg: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        tokenize: Literal["missing", "words", "hang"] = "missing",
        slots: int | None = None,
        gap_growth: float = 0.0,
        diverge_above: int | None = None,
        diverge_at: int = 0,
        tokens_per_chunk: int = 1,
        model: str = "mock",
        reasoning_tokens: int = 0,
        prefix_cache: int | None = None,
    ) -> MockServer: ...
    @property
    def base_url(self) -> str: ...
    def log(self) -> list[MockLogEntry]: ...
    def stop(self) -> None: ...
    def __enter__(self) -> MockServer: ...
    def __exit__(self, _t: object, _v: object, _tb: object) -> None: ...

def squad_v2_scores(
    predictions: list[str], gold_answers: list[list[str]], no_answer_phrase: str | None = None
) -> tuple[list[float], list[float], list[bool]]: ...
def squad_normalize(text: str) -> str: ...
def gsm8k_extract(text: str, mode: str = "marked-or-last") -> str: ...
def gsm8k_correct(predictions: list[str], golds: list[str], mode: str = "marked-or-last") -> list[bool]: ...
def pass_at_k(n: int, c: int, k: int) -> float: ...

@final
class Embedder:
    """Sentence embedding model (BERT encoder, mean pooling, L2 norm) run by ONNX Runtime.
    Use optbench.embeddings.Embedder, which finds the model folder and the library."""

    def __new__(
        cls,
        model_dir: str | PathLike[str],
        ort_library: str | PathLike[str],
        *,
        threads: int | None = None,
        max_length: int = 256,
    ) -> Embedder: ...
    def encode(self, texts: list[str], batch_size: int = 32) -> npt.NDArray[np.float32]: ...
    def tokenize(self, texts: list[str]) -> list[list[int]]: ...
    @property
    def dim(self) -> int: ...
    @property
    def max_length(self) -> int: ...
    @property
    def model_path(self) -> Path: ...

def run_programs(
    programs: list[str],
    *,
    workers: int | None = None,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    cpu_s: int = 10,
    python: str | PathLike[str] | None = None,
    max_output_bytes: int = 65536,
    fork_server: bool = True,
) -> tuple[list[ProgramResult], Isolation]: ...
def run_tests(
    tests: list[tuple[str, str, str, str]],
    *,
    workers: int | None = None,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    cpu_s: int = 10,
    python: str | PathLike[str] | None = None,
    max_output_bytes: int = 65536,
    fork_server: bool = True,
) -> tuple[list[ProgramResult], Isolation]: ...
def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str: ...
