"""Type stub of optbench's Rust extension (see rust/optbench-py)."""

from collections.abc import Awaitable
from os import PathLike
from pathlib import Path
from typing import Any, Literal, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "ConfigError",
    "Embedder",
    "LoadTest",
    "MockServer",
    "OptbenchError",
    "ServerError",
    "TokenizerError",
    "__version__",
    "build_profile",
    "count_tokens",
    "gsm8k_correct",
    "gsm8k_extract",
    "humaneval_program",
    "make_prompts",
    "pass_at_k",
    "run_programs",
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

@final
class LoadTest:
    def __new__(
        cls,
        base_url: str,
        model: str,
        *,
        prompts: list[str] | None = None,
        messages_json: list[str] | None = None,
        requests_json: list[str] | None = None,
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
        extra_body_json: str | None = None,
        tokenizer: str | None = None,
    ) -> LoadTest: ...
    def progress(self) -> dict[str, Any]: ...
    def cancel(self) -> None: ...
    def done(self) -> bool: ...
    def wait(self, timeout_s: float | None = None) -> bool: ...
    def wait_async(self) -> Awaitable[None]: ...
    def stop_reason(self) -> str: ...
    def wall_s(self) -> float: ...
    def records(self) -> Any:
        """An Arrow record batch (Arrow PyCapsule interface)."""
    def summary(self) -> dict[str, Any]: ...

def make_prompts(
    base_url: str,
    model: str,
    num_prompts: int,
    input_tokens: int,
    *,
    seed: int = 0,
    tokenizer: str | None = None,
    api_key: str | None = None,
) -> tuple[list[str], str, str | None]: ...
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
    ) -> MockServer: ...
    @property
    def base_url(self) -> str: ...
    def log(self) -> list[dict[str, Any]]: ...
    def stop(self) -> None: ...
    def __enter__(self) -> MockServer: ...
    def __exit__(self, _t: object, _v: object, _tb: object) -> None: ...

def squad_v2_scores(
    predictions: list[str], gold_answers: list[list[str]], no_answer_phrase: str | None = None
) -> tuple[list[float], list[float], list[bool]]: ...
def squad_normalize(text: str) -> str: ...
def gsm8k_extract(text: str, mode: str = "default") -> str: ...
def gsm8k_correct(predictions: list[str], golds: list[str], mode: str = "default") -> list[bool]: ...
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
) -> tuple[list[dict[str, Any]], dict[str, Any]]: ...
def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str: ...
