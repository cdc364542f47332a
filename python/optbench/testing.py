"""Tools for testing pipelines without a model or a GPU.

:class:`MockServer` is an OpenAI-compatible streaming server on its own thread, with known
timings and injectable faults: the first token ``ttft_ms`` after a request is read, the rest
``gap_ms`` apart on absolute deadlines, then ``usage`` and ``[DONE]``::

    from optbench.testing import MockServer
    with MockServer(ttft_ms=50, gap_ms=10, tokens=100) as server:
        result = optbench.load_test(server.base_url, "mock", num_requests=16, prompts=["hi"])
        truth = server.log()   # per request: when it was read, first and last token written

Faults (``fault=``): ``status`` (HTTP ``fault_arg``), ``reset`` (after ``fault_arg`` tokens),
``malformed``, ``no_done``, ``slow_headers`` (``fault_arg`` ms), ``no_usage``. ``tokenize=``
says how ``POST /tokenize`` answers: ``missing`` (404), ``words`` (one token per word) or
``hang`` (never answers).
"""

from optbench._core import MockServer

__all__ = ["MockServer"]
