"""The seam between Python and the Rust core: Ctrl-C in long native calls, core errors as the
right Python classes, and typed inputs (Python objects, not JSON text) with errors that name
the place."""

from __future__ import annotations

import errno
import socket
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from optbench import _core
from optbench.exceptions import ConfigError, OptbenchError, ServerError


def _silent_server() -> tuple[socket.socket, str]:
    """A listening socket that never accepts: connections complete, requests get no answer."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


def _python_child(script: str) -> subprocess.Popen[str]:
    """``python -c script`` with Ctrl-C as a terminal gives it: SIGINT at its default, so that
    Python raises KeyboardInterrupt (a shell's background job inherits SIGINT ignored, and
    Python then leaves it ignored)."""
    return subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_ctrl_c_interrupts_make_prompts_waiting_on_tokenize():
    # The server never answers /tokenize (make_prompts would wait 30 s for it): Ctrl-C must
    # raise KeyboardInterrupt within a fraction of a second.
    script = textwrap.dedent(
        """
        import socket, sys, time
        from optbench import _core
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        print("ready", flush=True)
        try:
            _core.make_prompts(url, "m", 4, 64)
        except KeyboardInterrupt:
            print("interrupted", time.monotonic(), flush=True)
            sys.exit(0)
        print("returned", flush=True)
        sys.exit(1)
        """
    )
    child = _python_child(script)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(1.0)  # well inside make_prompts' wait for /tokenize
        sent = time.monotonic()
        child.send_signal(2)  # SIGINT
        out, err = child.communicate(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, out + err
    word, when = out.split()
    assert word == "interrupted"
    assert float(when) - sent < 1.0


def test_a_server_that_goes_away_raises_a_connection_error():
    # /tokenize answers once (so make_prompts picks the server's counter), then the server is
    # gone: the next calls are refused.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"

    def answer_once() -> None:
        conn, _ = listener.accept()
        listener.close()
        conn.recv(65536)
        body = b'{"tokens": [1, 2, 3]}'
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        conn.close()

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    with pytest.raises(_core.ServerConnectionError) as info:
        _core.make_prompts(url, "m", 2, 16)
    thread.join(5)
    assert isinstance(info.value, ConnectionError) and isinstance(info.value, ServerError)
    assert isinstance(info.value, OptbenchError)
    assert "/tokenize" in str(info.value)


def test_server_error_classes_nest():
    assert issubclass(_core.ServerConnectionError, ServerError)
    assert issubclass(_core.ServerConnectionError, ConnectionError)
    assert issubclass(_core.ServerTimeoutError, ServerError)
    assert issubclass(_core.ServerTimeoutError, TimeoutError)


def test_an_io_error_is_an_os_error_with_its_errno():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(OSError) as info:
            _core.MockServer(port=port)
    finally:
        taken.close()
    assert info.value.errno == errno.EADDRINUSE
    assert f"127.0.0.1:{port}" in str(info.value)


def test_requests_cross_as_python_objects():
    with _core.MockServer(ttft_ms=1, gap_ms=1, tokens=4) as server:
        requests = [
            {"prompt": "hello", "body": {"stop": ["\n"], "max_tokens": 4}},
            {"messages": [{"role": "user", "content": "hi"}], "endpoint": "chat", "body": None},
        ]
        run = _core.LoadTest(
            server.base_url,
            "mock",
            requests=requests,
            num_requests=2,
            concurrency=2,
            extra_body={"top_k": 1, "nested": {"a": [1, 2.5, None, True]}},
        )
        assert run.wait(10)
        summary = run.summary()
    assert summary["num_succeeded"] == 2, summary


def test_messages_cross_as_python_objects():
    with _core.MockServer(ttft_ms=1, gap_ms=1, tokens=4) as server:
        run = _core.LoadTest(
            server.base_url,
            "mock",
            endpoint="chat",
            num_requests=2,
            concurrency=1,
            messages=[[{"role": "user", "content": "a"}], ({"role": "user", "content": "b"},)],
        )
        assert run.wait(10)
        assert run.summary()["num_succeeded"] == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            dict(requests=[{"prompt": "a"}, {"prompt": "b", "body": {"stop": {1, 2}}}]),
            r"requests\[1\]\.body\.stop: .*got set",
        ),
        (
            dict(requests=[{"prompt": "a", "body": {"t": float("nan")}}]),
            r"requests\[0\]\.body\.t: NaN is not a JSON number",
        ),
        (dict(requests=[{"prompt": "a", "colour": 1}]), r"requests\[0\]: unknown key \"colour\""),
        (dict(requests=["a"]), r"requests\[0\] must be a dict, got str"),
        (dict(messages=[[{"role": "user", "content": "a"}], "b"]), r"messages\[1\]: expected a list of messages"),
        (dict(messages=[[{1: "user"}]]), r"messages\[0\]\[0\]: dict keys must be strings"),
        (dict(prompts=["a"], extra_body=["top_k", 1]), r"extra_body must be a dict, got list"),
        (dict(prompts=["a"], extra_body={"x": object()}), r"extra_body\.x: expected a JSON value"),
        (
            dict(prompts=["a"], messages=[[{"role": "user", "content": "a"}]]),
            "exactly one of prompts, messages and requests",
        ),
    ],
)
def test_bad_inputs_name_the_place(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        _core.LoadTest("http://127.0.0.1:9", "m", num_requests=1, concurrency=1, **kwargs)


def test_a_list_that_contains_itself_is_refused():
    body: list = []
    body.append(body)
    with pytest.raises(ConfigError, match="contains itself"):
        _core.LoadTest("http://127.0.0.1:9", "m", prompts=["a"], num_requests=1, extra_body={"x": body})


def test_wait_is_interruptible_and_leaves_the_run_going():
    sock, url = _silent_server()
    script = textwrap.dedent(
        f"""
        import sys, time
        from optbench import _core
        run = _core.LoadTest({url!r}, "m", prompts=["a"], num_requests=1, concurrency=1, timeout_s=60)
        print("ready", flush=True)
        try:
            run.wait()
        except KeyboardInterrupt:
            print("interrupted", run.done(), time.monotonic(), flush=True)
            run.cancel()
            sys.exit(0 if run.wait(10) else 2)
        sys.exit(1)
        """
    )
    child = _python_child(script)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        sent = time.monotonic()
        child.send_signal(2)
        out, err = child.communicate(timeout=15)
    finally:
        if child.poll() is None:
            child.kill()
        sock.close()
    assert child.returncode == 0, out + err
    word, done, when = out.split()
    assert (word, done) == ("interrupted", "False")
    assert float(when) - sent < 1.0


def test_metric_and_statistic_names_match_the_summary():
    with _core.MockServer(ttft_ms=1, gap_ms=1, tokens=4) as server:
        run = _core.LoadTest(server.base_url, "mock", prompts=["a", "b"], num_requests=2, concurrency=1)
        assert run.wait(10)
        summary = run.summary()
    assert set(summary["metrics"]) <= set(_core.METRIC_NAMES)
    assert {"ttft_ms", "e2e_ms", "itl_ms"} <= set(summary["metrics"])
    for stats in summary["metrics"].values():
        assert tuple(stats) == _core.STATISTIC_NAMES
