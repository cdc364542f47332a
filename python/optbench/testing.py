"""Tools for testing pipelines without a model or a GPU.

:class:`MockServer` is an OpenAI-compatible streaming server on its own thread, with known
timings and injectable faults: the first token ``ttft_ms`` after a request is read, the rest
``gap_ms`` apart on absolute deadlines, then ``usage`` and ``[DONE]``::

    from optbench.testing import MockServer
    with MockServer(ttft_ms=50, gap_ms=10, tokens=100) as server:
        result = optbench.load_test(server.base_url, "mock", num_requests=16, prompts=["hi"])
        truth = server.log()   # per request: when it was read, got its slot, first and last token

A chat request's log entry also holds the conversation it carried (``messages``, its JSON text),
which is how a multi-turn client's history is checked.

Faults (``fault=``): ``status`` (HTTP ``fault_arg``), ``reset`` (after ``fault_arg`` tokens),
``malformed``, ``no_done``, ``slow_headers`` (``fault_arg`` ms), ``no_usage``. ``tokenize=``
says how ``POST /tokenize`` answers: ``missing`` (404), ``words`` (one token per word) or
``hang`` (never answers).

**Text.** Token ``i`` of an answer is `` tokD``, ``D`` a digit drawn from a hash of the prompt
(the JSON of ``prompt``, or of ``messages`` for chat) and ``i``: the same prompt always gets the
same answer, different prompts (almost always) different ones.

**Capacity model** (``slots``, ``gap_growth``). At most ``slots`` requests are *active* (being
decoded) at once; the others wait, after their response headers, in a first-in first-out queue.
A request's first token is due ``ttft_ms`` after it gets its slot, so its TTFT is its queue wait
plus ``ttft_ms``. After each token the next is due ``gap_ms × (1 + gap_growth × (active − 1))``
later, ``active`` being the requests holding a slot at that moment (itself included). With
``slots=None`` there is no queue and every request in flight is active.

**Answers that change under load** (``diverge_above``, ``diverge_at``). When token
``diverge_at`` of an answer is due and more than ``diverge_above`` requests are active, that
token and every later one of the answer differ from the answer the prompt gets alone (each
replaced token is another digit), as a batching bug would; ``log()`` marks such requests
``diverged``.

**Tokens per chunk** (``tokens_per_chunk``). Each chunk carries that many tokens (the last one
what is left), ``gap_ms`` apart, as vLLM does under load. When the request asks for
``stream_options.continuous_usage_stats`` (optbench's client does), every chunk carries the
cumulative ``usage`` as vLLM sends it; otherwise only the final usage chunk does. The ``reset``
and ``malformed`` faults then count chunks, and ``log()``'s ``tokens_sent`` counts tokens.

**Reasoning** (``reasoning_tokens``). The chat endpoint streams the first ``reasoning_tokens``
tokens (`` thinkD``) as ``delta.reasoning_content`` and the rest as ``delta.content``, as vLLM
with a reasoning parser does (a chunk straddling the boundary carries both). When the request
asks for ``stream_options.include_usage`` (optbench's client does), its usage carries
``completion_tokens_details.reasoning_tokens``; otherwise the usage has no details, as vLLM's.
The completions endpoint has no split. ``log()`` gives ``first_answer_token_sent_s`` and
``reasoning_tokens_sent``.

**Prefix cache** (``prefix_cache``: how many prompts it remembers; None: no cache). A prompt's
tokens are a BOS and its whitespace-separated words (what ``tokenize="words"`` counts with
specials); its cached tokens are its longest leading run of words shared with a remembered
prompt plus the BOS when that run is not empty, at most all but one token. Its usage then
reports ``prompt_tokens`` and ``prompt_tokens_details.cached_tokens``, and its TTFT is
``ttft_ms × uncached / prompt_tokens``. Prompts are remembered as they are read (without a cache ``prompt_tokens`` is always 7).

:func:`capacity_model` computes, for a closed loop, what the capacity model gives each request
(the truth a search for the highest concurrency meeting an SLO is tested against).
"""

from __future__ import annotations

import heapq

import pandas as pd

from optbench._core import MockServer


def capacity_model(
    concurrency: int,
    num_requests: int,
    *,
    slots: int | None = None,
    ttft_ms: float = 20.0,
    gap_ms: float = 5.0,
    gap_growth: float = 0.0,
    tokens: int = 16,
) -> pd.DataFrame:
    """What a :class:`MockServer` with these settings gives each of ``num_requests`` requests
    of a closed loop with ``concurrency`` in flight (all starting together, each finished one
    replaced at once, as ``optbench.load_test`` does), in the steady state of the model.

    ``active = min(concurrency, slots)`` requests are decoded at every moment, so every gap is
    ``gap_ms × (1 + gap_growth × (active − 1))`` and every request holds its slot for
    ``S = ttft_ms + (tokens − 1) × gap``. Slots are given first-come first-served; the queue
    wait of each request follows from simulating that queue with the service time ``S``. The
    model leaves out the run's tail: once fewer than ``concurrency`` requests remain to be sent,
    fewer are decoded at once and the real gaps get shorter (at concurrency 6 with 20 requests,
    the last 2 run with 2 active), so the server can do better than the model there.

    Returns one row per request, in the order they were sent, with the columns the SLO code
    reads (``optbench.slo``): ``request_id``, ``warmup`` (False), ``error_kind`` (None),
    ``queue_ms`` (the wait for a slot), ``ttft_ms`` (wait + ``ttft_ms``), ``itl_ms`` (the list
    of gaps), ``tpot_ms``, ``e2e_ms``, ``output_tokens``, ``sent_s`` and ``done_s`` (seconds
    from the start). The real server adds a little: the client's own latency (well under a
    millisecond on loopback) and a timer that may write up to ~1 ms late.
    """
    if concurrency < 1 or num_requests < 1 or tokens < 1:
        raise ValueError("concurrency, num_requests and tokens must be at least 1")
    active = concurrency if slots is None else min(concurrency, slots)
    gap = gap_ms * (1 + gap_growth * (active - 1))
    service = ttft_ms + (tokens - 1) * gap
    free = [0.0] * (slots if slots is not None else concurrency)  # when each slot is free
    heapq.heapify(free)
    # (arrival, order): the first `concurrency` at 0, then each one when another ends.
    arrivals = [(0.0, i) for i in range(min(concurrency, num_requests))]
    heapq.heapify(arrivals)
    sent = len(arrivals)
    rows = []
    while arrivals:
        arrival, order = heapq.heappop(arrivals)
        start = max(arrival, heapq.heappop(free))
        done = start + service
        heapq.heappush(free, done)
        wait = start - arrival
        rows.append(
            {
                "request_id": order,
                "warmup": False,
                "error_kind": None,
                "queue_ms": wait,
                "ttft_ms": wait + ttft_ms,
                "itl_ms": [gap] * (tokens - 1),
                "tpot_ms": gap if tokens > 1 else None,
                "e2e_ms": wait + service,
                "output_tokens": tokens,
                "sent_s": arrival / 1e3,
                "done_s": done / 1e3,
            }
        )
        if sent < num_requests:
            heapq.heappush(arrivals, (done, sent))
            sent += 1
    return pd.DataFrame(rows).sort_values("request_id", ignore_index=True)


__all__ = ["MockServer", "capacity_model"]
