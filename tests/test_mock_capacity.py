"""The mock server's capacity model and its answers that change under load, against the truth
computed in advance by ``optbench.testing.capacity_model``."""

from __future__ import annotations

import numpy as np
import pytest

import optbench
from optbench.testing import MockServer, capacity_model

PROMPTS = [f"question {i}" for i in range(6)]


def run(server: MockServer, concurrency: int, n: int, tokens: int) -> optbench.LoadTestResult:
    return optbench.load_test(
        server.base_url,
        "mock",
        num_requests=n,
        concurrency=concurrency,
        output_tokens=tokens,
        prompts=PROMPTS,
        progress=False,
    )


def test_queue_and_gaps_match_the_model():
    model = dict(slots=2, ttft_ms=20.0, gap_ms=2.0, gap_growth=0.5, tokens=16)
    with MockServer(**model) as server:
        r = run(server, 3, 12, 16)
        log = server.log()
    truth = capacity_model(3, 12, **model)
    # 2 active: gaps of 2 × 1.5 = 3 ms, a slot held 20 + 15 × 3 = 65 ms; of 3 in flight, one waits.
    assert truth["itl_ms"].map(np.mean).eq(3.0).all() and truth["e2e_ms"].min() == 65.0
    assert r.requests["error_kind"].isna().all()
    # The server's own mean gap per request (its deadlines are chained, so a late write does
    # not shift the next, but a starved CPU can delay the last write); the last requests of
    # the run may be decoded alone (2 ms gaps).
    gaps = sorted((e["last_token_sent_s"] - e["first_token_sent_s"]) * 1e3 / 15 for e in log)
    assert min(gaps) > 1.9 and sum(2.8 < g < 3.4 for g in gaps) >= 8, gaps
    # Which requests wait, and how long, depends on how in step the slots are (a request that
    # arrives a few ms late shifts them all); the total wait much less: with the slots always
    # busy, each client is either waiting or being served.
    waits = [(e["slot_acquired_s"] - e["received_s"]) * 1e3 for e in log]
    assert sum(w < 3 for w in waits) >= 2 and max(waits) > 40
    assert abs(np.mean(waits) - truth["queue_ms"].mean()) < 0.3 * truth["queue_ms"].mean(), waits


def test_the_answer_is_a_function_of_the_prompt_and_changes_under_load():
    # 100 ms to the first token: the requests of a loaded run are all in before token 5 is due
    # (the server's log says which answers changed, and the texts must agree with it).
    with MockServer(ttft_ms=100, gap_ms=1, tokens=8, diverge_above=2, diverge_at=5) as server:
        alone = run(server, 1, 6, 8).requests.set_index("request_id")["output_text"]
        again = run(server, 2, 6, 8).requests.set_index("request_id")["output_text"]
        loaded = run(server, 6, 6, 8).requests.set_index("request_id")["output_text"]
        log = server.log()
    assert alone.str.fullmatch(r"( tok\d){8}").all() and alone.nunique() == 6
    assert (alone == again).all()  # 2 active is not more than 2: the same answers
    assert not any(e["diverged"] for e in log[:12]) and sum(e["diverged"] for e in log[12:]) >= 4
    # Requests reach the server in the order they are sent: log entry 12 + i is request i.
    for i in alone.index:
        a, b = alone[i].split(), loaded[i].split()
        assert a[:5] == b[:5]
        if log[12 + i]["diverged"]:
            assert all(x != y for x, y in zip(a[5:], b[5:]))
        else:
            assert a == b


def test_bad_capacity_settings_are_clear_errors():
    with pytest.raises(optbench.ConfigError, match="slots"):
        MockServer(slots=0)
    with pytest.raises(optbench.ConfigError, match="gap_growth"):
        MockServer(gap_growth=-1.0)
