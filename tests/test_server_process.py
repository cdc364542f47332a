"""How servers are started and stopped: parent-death detection that does not depend on the
starting thread, clean-up on any exception during start-up, temporary log folders removed,
and the warning when the server does not list the run's model. Real llama-server
(SmolLM2-135M, CPU) and small real HTTP servers; every server is stopped."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

import optbench
from optbench.datasets import build_test_dataset
from optbench.exceptions import ServerStartError
from optbench.servers.engines import print_command
from optbench.servers.llama_cpp import LlamaServer
from optbench.servers.probe import check_model, listed_models
from optbench.servers.process import ManagedProcess

pytestmark = [pytest.mark.llama, pytest.mark.slow]

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def group_gone(pid: int, within_s: float) -> bool:
    """True when process group ``pid`` no longer exists within ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def health(base_url: str) -> int:
    with urllib.request.urlopen(f"{base_url}/health", timeout=5) as resp:
        return int(resp.status)


# -- 1. parent death is the process's death, not the starting thread's ------------------------


def test_a_server_started_from_a_thread_outlives_the_thread(tmp_path):
    box: dict[str, LlamaServer] = {}
    starter = threading.Thread(
        target=lambda: box.setdefault("s", optbench.embedded_server(parallel=1, log_path=tmp_path / "log").start())
    )
    starter.start()
    starter.join(timeout=120)
    server = box["s"]
    try:
        assert not starter.is_alive()
        time.sleep(2.0)  # PR_SET_PDEATHSIG tied to the starting thread fired ~0.4 s after it ended
        assert server.process is not None and server.process.running(), server.process and server.process.log_tail()
        assert health(server.base_url) == 200
    finally:
        server.stop()
    assert group_gone(server.process.pid, 5)


_STARTS_IN_A_THREAD_THEN_SLEEPS = """
import sys, threading, time, urllib.request
import optbench
from optbench.datasets import build_test_dataset
box = {}
t = threading.Thread(target=lambda: box.setdefault("s", optbench.embedded_server(parallel=1, log_path=sys.argv[1]).start()))
t.start(); t.join()
s = box["s"]
time.sleep(1.5)
try:
    urllib.request.urlopen(s.base_url + "/health", timeout=5).close()
    state = "alive"
except OSError:
    state = "dead"
print(s.process.pid, state, flush=True)
time.sleep(600)
"""


def test_a_server_started_from_a_thread_dies_with_its_killed_process(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", _STARTS_IN_A_THREAD_THEN_SLEEPS, str(tmp_path / "log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    pid = None
    try:
        line = child.stdout.readline().split() if child.stdout else []
        assert len(line) == 2, f"the child printed {line}"
        pid, state = int(line[0]), line[1]
        assert state == "alive", "the server died when the thread that started it ended"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        assert group_gone(pid, 10), "llama-server outlived its SIGKILLed parent"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if pid is not None:
            kill_group(pid)


_STARTS_A_SERVER_THAT_IGNORES_SIGTERM = """
import sys, time
from optbench.servers import process
process.ORPHAN_GRACE_S = 1.0
code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"
p = process.ManagedProcess([sys.executable, "-c", code], log_path=sys.argv[1])
deadline = time.monotonic() + 30
while "up" not in p.log_tail() and time.monotonic() < deadline:
    time.sleep(0.05)
print(p.pid, flush=True)
time.sleep(600)
"""


def test_a_server_that_ignores_sigterm_is_killed_after_its_caller_dies(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", _STARTS_A_SERVER_THAT_IGNORES_SIGTERM, str(tmp_path / "log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    pid = None
    try:
        pid = int(child.stdout.readline()) if child.stdout else None
        assert pid is not None
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        assert group_gone(pid, 8), "a server that ignores SIGTERM outlived its SIGKILLed parent"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if pid is not None:
            kill_group(pid)


def test_stopping_a_server_leaves_no_process_behind(tmp_path):
    before = children()
    proc = ManagedProcess([sys.executable, "-c", "import time; time.sleep(600)"], log_path=tmp_path / "log")
    assert len(children() - before) == 2  # the server and its watcher
    proc.stop(grace_s=5)
    assert children() - before == set()
    assert group_gone(proc.pid, 0)


# -- 2. any exception while waiting for readiness stops the server ------------------------------


def _interrupt_health_polls(monkeypatch, how: str) -> None:
    """Makes the first readiness poll end in ``how``: a real SIGINT (Ctrl-C) or an exception."""

    def poll(*args, **kwargs):
        if how == "sigint":
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)  # KeyboardInterrupt arrives here
        raise RuntimeError("a failure while waiting for health")

    monkeypatch.setattr(urllib.request, "urlopen", poll)


def children(name: bytes = b"") -> set[int]:
    """The ids of this process's children that still run (zombies excluded) and whose
    command line contains ``name``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == os.getpid() and name in cmdline:
            found.add(int(entry.name))
    return found


def llama_children() -> set[int]:
    return children(b"llama-server")


@pytest.mark.parametrize("how", ["sigint", "error"])
def test_an_interrupted_embedded_start_stops_the_server(monkeypatch, tmp_path, how):
    before = llama_children()
    server = optbench.embedded_server(parallel=1, log_path=tmp_path / "log")
    _interrupt_health_polls(monkeypatch, how)
    with pytest.raises(KeyboardInterrupt if how == "sigint" else RuntimeError):
        server.start()
    left = llama_children() - before
    for pid in left:
        kill_group(pid)
    assert not left, "llama-server still runs after its start was interrupted"


@pytest.mark.parametrize("how", ["sigint", "error"])
def test_an_interrupted_serve_start_stops_the_server(monkeypatch, tmp_path, how):
    before = llama_children()
    server = optbench.serve(CONFIGS / "embedded.toml")
    _interrupt_health_polls(monkeypatch, how)
    # The traceback is kept, as an interactive session keeps the last one: that keeps the
    # started objects alive, so their garbage collection cannot be what stops the server.
    with pytest.raises(KeyboardInterrupt if how == "sigint" else RuntimeError) as first:
        server.start()  # not as a context manager: start() itself cleans up
    left = llama_children() - before
    for pid in left:
        kill_group(pid)
    assert not left, "the configuration's llama-server still runs after its start was interrupted"
    with pytest.raises(KeyboardInterrupt if how == "sigint" else RuntimeError) as second:
        with optbench.serve(CONFIGS / "embedded.toml"):
            pass
    left = llama_children() - before
    assert first.traceback and second.traceback
    for pid in left:
        kill_group(pid)
    assert not left, "the configuration's llama-server still runs after its start in `with` was interrupted"


# -- 3. temporary log folders do not pile up ------------------------------------------------------


@pytest.fixture
def temp_root(tmp_path, monkeypatch) -> Iterator[Path]:
    """The system temporary folder, redirected to an empty folder of this test's own."""
    root = tmp_path / "systemp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield root


def test_starting_and_stopping_leaves_no_temporary_folder(temp_root, tmp_path):
    server = optbench.embedded_server(parallel=1)
    assert list(temp_root.iterdir()) == []  # nothing made before start
    with server:
        log = server.log_path
        assert log is not None and log.parent.parent == temp_root and log.parent.name.startswith("optbench-llama-")
    assert list(temp_root.iterdir()) == [], "the server's temporary log folder was left behind"
    with optbench.serve(CONFIGS / "embedded.toml") as served:
        assert served.log_path is not None and served.log_path.parent.parent == temp_root
    assert list(temp_root.iterdir()) == []
    print_command(CONFIGS / "embedded.toml")  # builds LlamaServer objects it never starts
    assert list(temp_root.iterdir()) == []


def test_a_log_the_caller_placed_is_kept(temp_root, tmp_path):
    with optbench.embedded_server(parallel=1, log_path=tmp_path / "kept" / "server.log"):
        pass
    with optbench.serve(CONFIGS / "embedded.toml", log_dir=tmp_path / "logs"):
        pass
    assert (tmp_path / "kept" / "server.log").stat().st_size > 0
    assert (tmp_path / "logs" / "embedded.log").stat().st_size > 0
    assert list(temp_root.iterdir()) == []


def test_a_failed_start_keeps_the_log_it_names(temp_root, tmp_path):
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"this is not a GGUF file")
    server = LlamaServer(bad, ready_timeout_s=60)
    with pytest.raises(ServerStartError, match="exited with code") as info:
        server.start()
    assert server.log_path is not None and str(server.log_path) in str(info.value)
    assert server.log_path.stat().st_size > 0
    server.stop()  # a later stop does not take the log away either
    assert server.log_path.exists()


# -- 4. the served model is listed by the server ------------------------------------------------


def test_check_model_warns_about_a_name_llama_server_does_not_list(llama_server):
    warning = check_model(llama_server.base_url, "Llama-3-70B", timeout_s=5)
    assert warning is not None
    assert "'Llama-3-70B'" in warning and "does not list" in warning and "'SmolLM2-135M-Instruct'" in warning
    assert check_model(llama_server.base_url, llama_server.model, timeout_s=5) is None
    assert check_model(llama_server.base_url + "/v1/", llama_server.model, timeout_s=5) is None


def test_a_load_test_under_a_name_the_server_does_not_list_warns(llama_server):
    with pytest.warns(UserWarning, match="does not list model 'wrong-model'"):
        r = optbench.load_test(
            llama_server.base_url, "wrong-model", num_requests=1, concurrency=1, input_tokens=16, output_tokens=2,
            progress=False,
        )  # fmt: skip
    assert r.summary["num_succeeded"] == 1  # llama.cpp answered under the wrong name...
    assert any("does not list model 'wrong-model'" in w for w in r.warnings)  # ...and the result says so
    right = optbench.load_test(
        llama_server.base_url, llama_server.model, num_requests=1, concurrency=1, input_tokens=16, output_tokens=2,
        progress=False,
    )  # fmt: skip
    assert not any("does not list" in w for w in right.warnings)


def test_an_evaluation_under_a_name_the_server_does_not_list_warns(llama_server, shared_dir, tmp_path):
    dataset = tmp_path / "test_dataset.json"
    build_test_dataset(
        str(shared_dir / "datasets"), output=dataset, counts={"qa": 3, "reasoning": 3, "chat": 3, "code": 3}
    )
    r = optbench.evaluate(
        llama_server.base_url, "wrong-model", dataset=dataset, categories=["qa"], limit=1, max_tokens={"qa": 4},
        progress=False,
    )  # fmt: skip
    assert any("does not list model 'wrong-model'" in w for w in r.warnings), r.warnings


class _Handler(http.server.BaseHTTPRequestHandler):
    """/v1/models as the test asks: missing (404), failing (500), not JSON, slow, or a body."""

    mode = "404"
    body = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.mode == "slow":
            time.sleep(3)  # longer than the client waits: no answer
            return
        code = {"404": 404, "500": 500}.get(self.mode, 200)
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        if code == 200:
            self.wfile.write(self.body if self.mode == "body" else b"<html>not json</html>")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def plain_server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("mode", ["404", "500", "not-json", "slow"])
def test_check_model_is_silent_when_the_listing_cannot_be_read(plain_server, mode):
    base_url, handler = plain_server
    handler.mode = mode
    began = time.monotonic()
    assert check_model(base_url, "any-model", timeout_s=0.5) is None
    assert time.monotonic() - began < 2.5  # bounded by the timeout, not the server
    assert check_model("http://127.0.0.1:9", "any-model", timeout_s=0.5) is None  # nothing listens


def test_check_model_reads_both_listing_shapes(plain_server):
    base_url, handler = plain_server
    handler.mode = "body"
    handler.body = b'{"object": "list", "data": [{"id": "a"}, {"id": "b"}]}'
    assert check_model(base_url, "b", api_key="k") is None
    assert "it lists 'a', 'b'" in (check_model(base_url, "c") or "")
    handler.body = b'{"models": [{"name": "m1", "model": "m1"}], "data": []}'
    assert check_model(base_url, "m1") is None
    handler.body = b'{"data": []}'
    assert check_model(base_url, "x") is None  # nothing listed: nothing to compare with
    assert listed_models({"data": ["s1", {"id": "s2", "aliases": ["s3"]}]}) == ["s1", "s2", "s3"]
    assert listed_models([{"id": "t"}]) == ["t"] and listed_models("nonsense") == []
