"""End-to-end overhead: optbench's own CPU time during ``optbench run`` on the embedded server,
as a share of the server's.

The bench starts the embedded llama-server (SmolLM2-135M on CPU, the same binary, model and
slots as ``configs/embedded.toml``) itself and points ``optbench run`` at it through an
``openai`` configuration, so the two CPU times separate cleanly: optbench's is the ``optbench
run`` process tree from start to exit (interpreter start, dataset, load test, evaluation with
scoring, sandboxed code runs, report), read with ``wait4``; the server's is llama-server's
CPU over the same span, read from /proc.

    .venv/bin/python benches/overhead.py [--small] --out benches/out/overhead.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, Section, _stat, markdown_table  # noqa: E402

from optbench.servers.llama_cpp import LlamaServer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--small", action="store_true", help="a shorter run (a smoke test)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    section = Section("End-to-end overhead: optbench's CPU during `optbench run` vs the server's")
    with (
        tempfile.TemporaryDirectory(prefix="optbench-overhead-") as tmp,
        LlamaServer(parallel=4, ctx_size=16384) as server,
    ):
        config = Path(tmp) / "embedded_external.toml"
        limit = 2 if args.small else 5
        requests = 8 if args.small else 16
        config.write_text(f"""name = "embedded"
engine = "openai"
model = "{server.model}"
baseline = true

[server]
base_url = "{server.base_url}/v1"

[load_test]
num_requests = {requests}
concurrency = 4
input_tokens = 256
output_tokens = 64
ignore_eos = true

[evaluation]
limit = {limit}
""")
        cmd = [
            sys.executable,
            "-m",
            "optbench.cli",
            "run",
            str(config),
            "--profile",
            "quick",
            "--results-dir",
            str(Path(tmp) / "results"),
            "--report",
            str(Path(tmp) / "RESULTS.md"),
            "--dataset",
            str(Path(tmp) / "dataset.json"),
            "--dataset-source",
            str(SHARED / "datasets"),
        ]
        assert server.process is not None
        server_pid = server.process.pid
        server_before = _stat(server_pid)[1]
        started = time.monotonic()
        env = dict(os.environ)
        local_model = SHARED / "models" / "all-MiniLM-L6-v2"
        if "OPTBENCH_EMBEDDING_MODEL" not in env and local_model.is_dir():
            env["OPTBENCH_EMBEDDING_MODEL"] = str(local_model)  # offline: the chat scorer's model
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        server_after = _stat(server_pid)[1]
        output = proc.stdout.read() if proc.stdout else ""
        if os.waitstatus_to_exitcode(status) != 0:
            section.markdown = f"`optbench run` failed:\n\n```\n{output[-3000:]}\n```"
            section.ratio("optbench CPU / server CPU during optbench run", None, 0.02, "<=", "")
            section.write(args.out)
            return
    ours = usage.ru_utime + usage.ru_stime
    theirs = server_after - server_before
    share = ours / theirs
    section.commands = [" ".join(server.command()), " ".join(cmd)]
    section.markdown = (
        f"`optbench run --profile quick` ({requests} load-test requests at concurrency 4, 256 prompt / 64 output "
        f"tokens, then {limit} evaluation items per category) against the embedded llama-server started by the "
        "bench (SmolLM2-135M Q4_1, 4 slots, CPU). optbench's CPU covers its whole process tree from start to "
        "exit, including Python's start-up, the dataset build, the sandboxed code runs and the report.\n\n"
        + markdown_table(
            ["wall s", "optbench CPU s", "llama-server CPU s", "optbench / server"], [[wall, ours, theirs, share]]
        )
    )
    section.ratio("optbench CPU / server CPU during optbench run", share, 0.02, "<=", "")
    section.write(args.out)
    print(
        f"optbench run: {wall:.1f} s wall, optbench {ours:.2f} CPU-s, llama-server {theirs:.2f} CPU-s, share {share:.3%}"
    )


if __name__ == "__main__":
    main()
