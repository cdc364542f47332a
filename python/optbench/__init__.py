"""optbench: decide how to serve an LLM.

Load-test OpenAI-compatible servers with a Rust streaming client whose numbers you can trust::

    import optbench
    result = optbench.load_test("http://127.0.0.1:8000", "my-model", num_requests=100, concurrency=8)
    result.requests        # pandas DataFrame, one row per request
    result.summary         # aggregates: P50/P90/P95/P99 TTFT, tokens/s, E2E, throughput
    result.to_parquet("results/run.parquet")

In Jupyter, ``await optbench.aload_test(...)`` keeps the event loop free.

How far to trust the numbers: ``optbench.calibrate(concurrency=8)`` measures this machine's client
error against a mock server with known timings (``optbench run`` does it before each load test).

Quality: ``optbench.evaluate(base_url, model, dataset="data/test_dataset.json")`` generates and
scores answers (QA, math reasoning, chat, code); ``optbench.compare_quality`` gives the verdict.
``optbench.quality_under_load(base_url, model, concurrency=8)`` checks that the answers stay the
same at concurrency 8 as at 1; ``optbench.compare(run_a, run_b)`` says which differences between
runs are real, with bootstrap intervals.

Capacity: ``optbench.search(base_url, model, slo={"ttft_ms": 500, "itl_ms": 50}, target=0.99)``
finds the highest concurrency (or request rate) whose SLO attainment meets the target.
"""

from optbench import datasets, embeddings, exceptions, sandbox, scoring, testing
from optbench._core import __version__, build_profile
from optbench.exceptions import ConfigError, OptbenchError, ServerError, ServerStartError, TokenizerError
from optbench.evaluate import EvaluationResult, aevaluate, evaluate, save_evaluation
from optbench.loadtest import LoadTestResult, aload_test, load_test
from optbench.options import EvaluationOptions, LoadTestOptions
from optbench.prompts import PromptSet, load_user_prompts, synthetic_prompts
from optbench.quality import compare_quality
from optbench.results import save_load_test
from optbench.config import ServerConfig, load_config
from optbench.calibration import Calibration, calibrate
from optbench.report import build_report
from optbench.run import run
from optbench.under_load import QualityUnderLoadResult, quality_under_load
from optbench.compare import Comparison, compare
from optbench.search import SearchOptions, SearchResult, search
from optbench.servers.engines import Server, serve
from optbench.servers.llama_cpp import LlamaServer, embedded_server

__all__ = [
    "__version__",
    "build_profile",
    "load_test",
    "aload_test",
    "LoadTestResult",
    "LoadTestOptions",
    "EvaluationOptions",
    "PromptSet",
    "load_user_prompts",
    "synthetic_prompts",
    "save_load_test",
    "LlamaServer",
    "ServerConfig",
    "load_config",
    "Server",
    "serve",
    "run",
    "search",
    "SearchOptions",
    "SearchResult",
    "build_report",
    "calibrate",
    "Calibration",
    "embedded_server",
    "evaluate",
    "aevaluate",
    "EvaluationResult",
    "compare_quality",
    "quality_under_load",
    "QualityUnderLoadResult",
    "compare",
    "Comparison",
    "save_evaluation",
    "datasets",
    "embeddings",
    "sandbox",
    "scoring",
    "exceptions",
    "testing",
    "OptbenchError",
    "ConfigError",
    "ServerError",
    "ServerStartError",
    "TokenizerError",
]
