"""`optbench run --ray`: the `[resources]` table, the flag without Ray installed, and runs on a
real local Ray cluster (head only, CPUs only, on 127.0.0.1, started once for the module and
always shut down): two embedded configurations give the same table as a local run, a task
whose worker is killed mid-run is recorded as failed and a second run with the same run id
finishes it while skipping the one already complete, a task that raises is recorded, and files
come back through `--ray-storage`."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

import optbench
from optbench import cli
from optbench.config import RESOURCE_KEYS, load_config, parse_config
from optbench.exceptions import ConfigError
from optbench.ray_runner import task_options

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
README = Path(__file__).resolve().parents[1] / "README.md"

# Ray reads these when it is imported, in this process and in the CLI's: every address of the
# test cluster is 127.0.0.1 (not the machine's interface address), and no usage report is sent.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


# -- the [resources] table ------------------------------------------------------------------


@pytest.mark.parametrize(
    "resources,message",
    [
        ({"num_gpu": 1}, "unknown key 'resources.num_gpu'"),
        ({"num_gpus": "1"}, "key 'resources.num_gpus' must be an integer or a number"),
        ({"num_gpus": -1}, "key 'resources.num_gpus' must be 0 or more"),
        ({"num_gpus": 1.5}, "key 'resources.num_gpus' above 1 must be a whole number"),
        ({"num_cpus": True}, "key 'resources.num_cpus' must be"),
        ({"accelerator_type": ""}, "key 'resources.accelerator_type' must not be empty"),
        ({"resources": {"GPU": 1}}, "resources.resources.GPU': GPU is Ray's own resource"),
        ({"resources": {"disk": "a"}}, "key 'resources.resources.disk' must be a number >= 0"),
        ({"labels": {"zone": 1}}, "key 'resources.labels.zone' must be a string"),
        ({"labels": "zone=a"}, "key 'resources.labels' must be a table"),
    ],
)
def test_resources_table_errors_name_the_file_and_key(resources, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_config({"engine": "vllm", "model": "m", "resources": resources}, "configs/x.toml")
    assert str(info.value).startswith("configs/x.toml: ")


def test_task_resources_come_from_the_configuration():
    def opts(engine, server=None, resources=None):
        data = {"engine": engine, "model": "m", "server": server or {}, "resources": resources or {}}
        if engine == "openai":
            data["server"] = {"base_url": "http://127.0.0.1:1/v1"}
        return task_options(parse_config(data))

    # Defaults: the GPUs the server settings use, one CPU.
    assert opts("vllm") == {"num_cpus": 1, "num_gpus": 1.0}
    assert opts("vllm", {"tensor_parallel_size": 4})["num_gpus"] == 4.0
    assert opts("sglang", {"tp_size": 2})["num_gpus"] == 2.0
    assert opts("llama_cpp", {"model_path": "embedded"})["num_gpus"] == 0.0
    assert opts("llama_cpp", {"model_path": "m.gguf", "gpu_layers": 999})["num_gpus"] == 1.0
    assert opts("openai")["num_gpus"] == 0.0
    # Everything the table sets, under Ray's names.
    full = {
        "num_gpus": 2,
        "num_cpus": 8,
        "accelerator_type": "H100",
        "resources": {"fast_disk": 1},
        "labels": {"ray.io/market-type": "on-demand"},
    }
    assert opts("vllm", {"tensor_parallel_size": 2}, full) == {
        "num_gpus": 2,
        "num_cpus": 8,
        "accelerator_type": "H100",
        "resources": {"fast_disk": 1},
        "label_selector": {"ray.io/market-type": "on-demand"},
    }
    # The committed configurations: the GPU ones ask for a GPU, the CPU ones for none.
    for name in ("baseline_llama_cpp", "vllm", "vllm_fp8_quantization", "sglang", "sglang_torch_compile"):
        assert task_options(load_config(CONFIGS / f"{name}.toml"))["num_gpus"] == 1.0, name
    for name in ("embedded", "vllm_cpu", "openai"):
        assert task_options(load_config(CONFIGS / f"{name}.toml"))["num_gpus"] == 0.0, name


def test_configs_readme_documents_every_resources_key_and_the_readme_the_cluster_example():
    text = (CONFIGS / "README.md").read_text()
    assert "[resources]" in text
    for key, (_, doc) in RESOURCE_KEYS.items():
        assert doc and f"`{key}`" in text, f"configs/README.md does not list [resources] key {key}"
    readme = README.read_text()
    assert "## Running on a Ray cluster" in readme and "configs/kuberay.yaml" in readme
    import yaml

    cluster = yaml.safe_load((CONFIGS / "kuberay.yaml").read_text())
    assert cluster["kind"] == "RayCluster"
    groups = cluster["spec"]["workerGroupSpecs"]
    limits = [c["resources"]["limits"] for g in groups for c in g["template"]["spec"]["containers"]]
    assert any("nvidia.com/gpu" in lim for lim in limits), "no GPU worker group"


def test_without_ray_the_flag_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code = cli.main(["run", str(CONFIGS / "embedded.toml"), "--ray", "--dataset", str(tmp_path / "none.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert "optbench: error: --ray needs Ray" in err and "pip install 'optbench[ray]'" in err
    assert "Traceback" not in err and not (tmp_path / "none.json").exists()


def test_bad_ray_arguments_are_errors_before_any_work(capsys, tmp_path):
    cfg = CONFIGS / "embedded.toml"
    code = cli.main(["run", str(cfg), "--ray-storage", str(tmp_path), "--results-dir", str(tmp_path)])
    assert code == 2 and "--ray-storage needs --ray" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.read_text() + '\n[resources]\nlabels = { "not a label!" = "x" }\n')
    code = cli.main(["run", str(bad), "--ray", "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and f"{bad}: [resources] is not valid for Ray" in err and "not a label!" in err
    assert not (tmp_path / "runs").exists()


def test_a_cluster_address_where_nothing_answers_is_an_error_at_once(capsys, tmp_path):
    pytest.importorskip("ray")
    from optbench.servers.process import free_port

    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    code = cli.main(["run", str(CONFIGS / "embedded.toml"), "--ray", address, "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and f"--ray {address}: nothing answers at {address}" in err
    assert time.monotonic() - started < 15 and not (tmp_path / "runs").exists()


def test_ray_takes_an_optional_address_and_never_swallows_a_configuration():
    parser = cli.build_parser()
    a, b = str(CONFIGS / "embedded.toml"), str(CONFIGS / "vllm.toml")
    for argv, want in [
        (["run", "--ray", a, b], ([a, b], True)),
        (["run", a, b, "--ray"], ([a, b], True)),
        (["run", a, "--ray", "127.0.0.1:6379"], ([a], "127.0.0.1:6379")),
        (["run", "--ray=ray://head:10001", a], ([a], "ray://head:10001")),
        (["run", a], ([a], None)),
    ]:
        assert cli._ray_target(parser.parse_args(argv)) == want, argv


def test_replacing_a_configuration_folder_keeps_the_earlier_attempt_and_its_answer_journal(tmp_path):
    from optbench.ray_runner import _replace_folder
    from optbench.run import UNDER_LOAD_JOURNAL

    target = tmp_path / "a"
    (target / UNDER_LOAD_JOURNAL).mkdir(parents=True)
    (target / UNDER_LOAD_JOURNAL / "c1.0.journal.jsonl").write_text("{}\n")
    (target / "load_test.journal.jsonl").write_text("{}\n")
    (target / "meta.json").write_text('{"status": "failed"}\n')
    _replace_folder(target, lambda d: (d / "meta.json").write_text('{"status": "ok"}\n'))
    assert json.loads((target / "meta.json").read_text()) == {"status": "ok"}
    kept = {p.relative_to(target / "attempts").as_posix() for p in (target / "attempts").rglob("*") if p.is_file()}
    assert {k.split("/", 1)[1] for k in kept} == {
        f"{UNDER_LOAD_JOURNAL}/c1.0.journal.jsonl",
        "load_test.journal.jsonl",
        "meta.json",
    }


def test_lost_tasks_are_named_for_what_happened():
    ray = pytest.importorskip("ray")
    from optbench.ray_runner import _lost_reason

    ex = ray.exceptions
    assert "worker running the task died" in _lost_reason(ray, ex.WorkerCrashedError())
    assert "was cancelled" in _lost_reason(ray, ex.TaskCancelledError())
    assert "node running the task died" in _lost_reason(ray, ex.NodeDiedError("node 1 died"))
    raised = ex.RayTaskError("f", "Traceback ...", ValueError("bad value"))
    assert _lost_reason(ray, raised) == "the Ray task raised ValueError: bad value"


# -- on a local Ray cluster ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster for the module: head node only, 2 CPUs, 200 MB object store, no
    dashboard; yields the address a driver connects to. Shut down (every Ray process this
    fixture started ends) whatever the tests did."""
    ray = pytest.importorskip("ray") if os.environ.get("CI") != "true" else __import__("ray")
    ctx = ray.init(
        num_cpus=2,
        object_store_memory=200 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        address = ctx.address_info["gcs_address"]
        assert address.startswith("127.0.0.1:"), address
        yield address
    finally:
        ray.shutdown()


def _config_file(folder: Path, name: str, *, baseline: bool = False, binary: Path | None = None) -> Path:
    server = 'model_path = "embedded"\nparallel = 1\nctx_size = 2048\nthreads = 1\n'
    if binary is not None:
        server += f'binary = "{binary}"\n'
    path = folder / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nengine = "llama_cpp"\nmodel = "SmolLM2-135M-Instruct"\nbaseline = {str(baseline).lower()}\n'
        f"ready_timeout_s = 120\n\n[server]\n{server}\n"
        "[load_test]\nnum_requests = 2\nconcurrency = 1\ninput_tokens = 16\noutput_tokens = 4\nwarmup = 0\n"
        "ignore_eos = true\n\n"
        '[evaluation]\nlimit = 1\ncategories = ["qa"]\nmax_tokens = { qa = 8 }\n'
    )
    return path


def _hangs_the_first_time(folder: Path, marker: Path) -> Path:
    """A llama-server that, the first time it is started, writes its parent's pid (the Ray
    worker's) and its own to ``marker`` and hangs; afterwards it is the real one."""
    from optbench.servers.llama_cpp import find_llama_server

    real = find_llama_server()
    script = folder / "llama-server-hangs-once"
    script.write_text(
        "#!/bin/sh\n"
        f'case "$1" in --version) exec "{real}" "$@";; esac\n'
        f'if [ ! -e "{marker}" ]; then echo "$PPID $$" > "{marker}.tmp"; mv "{marker}.tmp" "{marker}"; exec sleep 300; fi\n'
        f'exec "{real}" "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def _optbench(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "optbench.cli", "run", *args, "--profile", "quick", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"optbench run did not finish in {timeout} s:\n{err[-4000:]}")
    return proc.returncode, err


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def tiny_dataset(shared_dir, tmp_path_factory):
    from optbench.datasets import build_test_dataset

    path = tmp_path_factory.mktemp("data") / "data.json"
    build_test_dataset(
        str(shared_dir / "datasets"), output=path, counts={"qa": 3, "reasoning": 3, "chat": 3, "code": 3}
    )
    return path


@pytest.mark.llama
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ray_run_is_a_local_run_and_a_killed_task_is_failed_then_resumed(cluster, tiny_dataset, tmp_path):
    marker = tmp_path / "hung"
    a = _config_file(tmp_path, "a", baseline=True)
    b = _config_file(tmp_path, "b", binary=_hangs_the_first_time(tmp_path, marker))
    results = tmp_path / "ray-results"
    common = ["--dataset", str(tiny_dataset), "--results-dir", str(results), "--report", str(tmp_path / "R.md")]
    common += ["--run-id", "r1"]

    # 1. b's server hangs; its worker is killed (SIGKILL) while a runs to the end.
    proc = _optbench(str(a), str(b), "--ray", cluster, *common)
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "b's server never started"
    worker, hung_server = map(int, marker.read_text().split())
    os.kill(worker, signal.SIGKILL)
    code, err = _finish(proc)
    assert code == 0, err[-4000:]
    run_dir = results / "runs" / "r1"
    meta_b = json.loads((run_dir / "b" / "meta.json").read_text())
    assert meta_b["status"] == "failed"
    assert meta_b["reason"].startswith("the Ray worker running the task died: killed or crashed (WorkerCrashedError)")
    table = pd.read_csv(results / "results.csv")
    assert list(table["configuration"]) == ["a", "b"] and list(table["status"]) == ["ok", "failed"]
    assert "- b failed: the Ray worker running the task died" in (tmp_path / "R.md").read_text()
    # The driver showed each task's state and, through Ray, the tasks' own log lines.
    for line in ("[optbench ray] a: submitted (num_cpus 1, num_gpus 0.0)", "a: finished ok", "b: FAILED: the Ray"):
        assert line in err, err[-4000:]
    assert "(optbench:a pid=" in err and "a: load test (2 requests, concurrency 1)" in err
    # The hung server died with its worker (PR_SET_PDEATHSIG), not left behind.
    for _ in range(50):
        if not _alive(hung_server):
            break
        time.sleep(0.1)
    assert not _alive(hung_server)
    a_meta_before = (run_dir / "a" / "meta.json").read_bytes()
    assert json.loads(a_meta_before)["ray"]["node_ip"] == "127.0.0.1"

    # 2. The same command and run id: a is skipped, b (its server now real) runs and is ok.
    code, err = _finish(_optbench(str(a), str(b), "--ray", cluster, *common))
    assert code == 0, err[-4000:]
    assert "a: already complete" in err and "a: submitted" not in err and "b: finished ok" in err
    assert (run_dir / "a" / "meta.json").read_bytes() == a_meta_before
    on_ray = pd.read_csv(results / "results.csv")
    assert list(on_ray["status"]) == ["ok", "ok"]
    # b's failed attempt is kept aside, as a local resume keeps it, not deleted.
    (attempt,) = (run_dir / "b" / "attempts").iterdir()
    assert json.loads((attempt / "meta.json").read_text())["reason"].startswith("the Ray worker running the task died")

    # 3. The same two configurations run locally give the same table (the numbers aside).
    local = tmp_path / "local-results"
    optbench.run(
        [a, b], profile="quick", dataset=tiny_dataset, results_dir=local, report_path=None, run_id="l1", progress=False
    )
    here = pd.read_csv(local / "results.csv")
    assert list(on_ray.columns) == list(here.columns)
    assert on_ray[["configuration", "status"]].equals(here[["configuration", "status"]])
    for name in ("a", "b"):
        files = {p.name for p in (run_dir / name).iterdir()} - {"attempts"}
        assert files == {p.name for p in (local / "runs" / "l1" / name).iterdir()}
        assert files == {"meta.json", "requests.parquet", "samples.parquet", f"{name}.log"}
        assert len(pd.read_parquet(run_dir / name / "samples.parquet")) == 1
        assert not any(p.name.startswith(".") for p in run_dir.iterdir())


@pytest.mark.llama
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_files_come_back_through_storage_and_a_task_that_raises_is_recorded(cluster, tiny_dataset, tmp_path):
    # A configuration that fails at start (not a GGUF): its log and meta.json still come back.
    broken = tmp_path / "broken.toml"
    broken.write_text(
        f'engine = "llama_cpp"\nmodel = "m"\n[server]\nmodel_path = "{broken}"\n[load_test]\nnum_requests = 2\n'
    )
    storage = tmp_path / "storage"
    args = [
        "--ray",
        cluster,
        "--dataset",
        str(tiny_dataset),
        "--results-dir",
        str(tmp_path / "r"),
        "--report",
        str(tmp_path / "R.md"),
    ]
    code, err = _finish(_optbench(str(broken), *args, "--ray-storage", str(storage), "--run-id", "s1"))
    assert code == 1, err[-4000:]
    meta = json.loads((tmp_path / "r" / "runs" / "s1" / "broken" / "meta.json").read_text())
    assert meta["status"] == "failed" and meta["reason"].startswith("start: ")
    assert (tmp_path / "r" / "runs" / "s1" / "broken" / "broken.log").is_file()
    assert (storage / "s1" / "broken" / "meta.json").is_file()
    # Storage the node cannot write (a path under a file): the task raises, recorded as failed.
    (tmp_path / "a-file").write_text("")
    code, err = _finish(
        _optbench(str(broken), *args, "--ray-storage", str(tmp_path / "a-file" / "x"), "--run-id", "s2")
    )
    meta = json.loads((tmp_path / "r" / "runs" / "s2" / "broken" / "meta.json").read_text())
    assert meta["status"] == "failed" and meta["reason"].startswith("the Ray task raised "), meta["reason"]
    assert "b: FAILED" not in err and "broken: FAILED: the Ray task raised" in err


@pytest.mark.llama
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_cancels_the_tasks_and_records_them_as_interrupted(cluster, tiny_dataset, tmp_path):
    marker = tmp_path / "hung"
    hangs = _config_file(tmp_path, "hangs", binary=_hangs_the_first_time(tmp_path, marker))
    args = ["--ray", cluster, "--dataset", str(tiny_dataset), "--results-dir", str(tmp_path / "r"), "--run-id", "i1"]
    proc = _optbench(str(hangs), *args, "--report", str(tmp_path / "R.md"))
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "the server never started"
    worker, hung_server = map(int, marker.read_text().split())
    proc.send_signal(signal.SIGINT)
    code, err = _finish(proc, timeout=60)
    assert code == 130, err[-4000:]
    meta = json.loads((tmp_path / "r" / "runs" / "i1" / "hangs" / "meta.json").read_text())
    assert meta["status"] == "failed" and meta["reason"] == "interrupted: the Ray task was cancelled"
    # The cancelled task's worker and its server are gone.
    for _ in range(100):
        if not (_alive(worker) or _alive(hung_server)):
            break
        time.sleep(0.1)
    assert not _alive(worker) and not _alive(hung_server)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_task_lost_mid_load_test_keeps_its_finished_requests(cluster, tmp_path, monkeypatch):
    from optbench.ray_runner import TASK_FILE, WORK_DIR_ENV
    from optbench.results import JOURNAL
    from optbench.testing import MockServer

    work = tmp_path / "work"
    monkeypatch.setenv(WORK_DIR_ENV, str(work))  # forwarded to the task like every OPTBENCH_ variable
    with MockServer(ttft_ms=20, gap_ms=10) as server:
        cfg = tmp_path / "c.toml"
        cfg.write_text(
            f'name = "c"\nengine = "openai"\nmodel = "mock"\n[server]\nbase_url = "{server.base_url}"\n'
            "[load_test]\nnum_requests = 200\nconcurrency = 2\ninput_tokens = 16\noutput_tokens = 8\n"
            "warmup = 0\nignore_eos = true\n"
        )
        killed: dict[str, int] = {}

        def kill_once_ten_requests_finished() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                for journal in work.glob(f"optbench-ray/*/run/c/{JOURNAL}"):
                    if journal.read_text().count("\n") >= 10:
                        task = json.loads((journal.parents[2] / TASK_FILE).read_text())
                        killed["pid"] = task["worker_pid"]
                        killed["lines"] = journal.read_text().count("\n")
                        os.kill(task["worker_pid"], signal.SIGKILL)
                        return
                time.sleep(0.05)

        watcher = threading.Thread(target=kill_once_ten_requests_finished, daemon=True)
        watcher.start()
        common = dict(profile="quick", dataset=None, results_dir=tmp_path / "r", report_path=tmp_path / "R.md")
        report = optbench.run([cfg], ray=cluster, run_id="k1", progress=False, calibrate=False, **common)
        watcher.join()
        assert killed, "the task never journaled 10 requests"
        row = report["table"].iloc[0]
        assert row["status"] == "failed"
        assert row["num_requests"] - row["num_failed"] >= 10  # finished requests, from the lost task's journal
        meta = json.loads((tmp_path / "r" / "runs" / "k1" / "c" / "meta.json").read_text())
        assert meta["reason"].startswith("the Ray worker running the task died"), meta["reason"]
        assert meta["ray"]["worker_pid"] == killed["pid"] and meta["phase"] == "load test"
        assert "recovered from its journal" in (tmp_path / "R.md").read_text()
        assert not list(work.glob("optbench-ray/*"))  # taken over, then removed from the node

        # The same run id: c runs again to the end; the lost attempt is kept aside with its journal.
        # The run's own settings reach the task: no calibration, two trials.
        report = optbench.run([cfg], ray=cluster, run_id="k1", progress=False, calibrate=False, trials=2, **common)
        row = report["table"].iloc[0]
        assert row["status"] == "ok" and row["num_requests"] == 2 * 200 and row["num_failed"] == 0  # summed over trials
        meta = json.loads((tmp_path / "r" / "runs" / "k1" / "c" / "meta.json").read_text())
        assert meta["trials"] == 2 and "calibration" not in meta
        assert (tmp_path / "r" / "runs" / "k1" / "c" / "requests_trial2.parquet").is_file()
        (attempt,) = (tmp_path / "r" / "runs" / "k1" / "c" / "attempts").iterdir()
        assert (attempt / JOURNAL).read_text().count("\n") >= killed["lines"]
        assert not list(work.glob("optbench-ray/*"))  # a task that returned leaves nothing on its node
