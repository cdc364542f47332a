"""Run untrusted Python programs in optbench's sandbox; score HumanEval completions.

Each program runs in its own process (Rust, ``optbench-core``'s ``sandbox``): by default a
fork of a fork server (one per worker: a ``python3 -I -B`` interpreter started once, which has
imported the modules test programs commonly use and never sees a program), or with
``fork_server=False`` a freshly started ``python3 -I -B``. Either way the process gets the same setup before the program runs:
own session and process group, killed as a whole at the wall-clock timeout; limits on CPU
time, address space, processes, file size and open files, no core dumps; an empty environment,
stdin from ``/dev/null``, a fresh temporary working directory removed afterwards; a new network
namespace where the kernel allows one; when run as root, an unprivileged uid of its own; and,
where the kernel has Landlock, no writes outside the working directory and no TCP. The report
returned with the results says which of these this machine actually gave, and whether the fork
server was used. Nothing a program does reaches the next one through the fork server: each
child is a fresh fork of it (its memory, modules and environment as the fork server has them),
with fresh namespaces, cgroup, uid and work directory; what forked children share is the fork
server's address-space layout and str hash seed (the report's notes say so).

Programs run the way HumanEval's reference harness runs them: ``exec`` of the whole program in
fresh globals, which must return (``os._exit(0)`` or ``sys.exit(0)`` before the end fails, as
in the reference). Results read "passed", "timed out" or "failed: <reason>". HumanEval
completions are scored with :func:`optbench.scoring.humaneval`::

    from optbench import scoring
    scores = scoring.humaneval(items, completions, workers=2)
    scores.pass_at_1, scores.results[0].text
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from optbench import _core
from optbench.exceptions import ConfigError

__all__ = ["SandboxResult", "humaneval_program", "run_programs", "run_tests"]


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of one program.

    ``status`` is "passed" (the program ran to its end and exited with code 0), "timed out"
    (killed at the wall-clock timeout) or "failed", with a concise ``reason`` such as
    ``"exit code 1: AssertionError"``, ``"memory limit: MemoryError"`` or
    ``"CPU time limit (SIGXCPU)"``. ``text`` is "passed", "timed out" or "failed: <reason>".
    ``stdout`` / ``stderr`` hold at most ``max_output_bytes`` each; ``truncated`` says whether
    either was longer."""

    status: Literal["passed", "timed out", "failed"]
    reason: str | None
    text: str
    exit_code: int | None
    signal: int | None
    duration_s: float
    cpu_time_s: float
    stdout: str
    stderr: str
    truncated: bool

    @property
    def passed(self) -> bool:
        """Whether the program passed."""
        return self.status == "passed"


def run_programs(
    programs: Sequence[str],
    *,
    workers: int | None = None,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    cpu_s: int = 10,
    python: str | os.PathLike[str] | None = None,
    max_output_bytes: int = 65536,
    fork_server: bool = True,
) -> tuple[list[SandboxResult], _core.Isolation]:
    """Runs each program in the sandbox, ``workers`` at a time (None: one per CPU).

    Returns the results in input order and the isolation report: the weakest any run got,
    with ``python`` / ``python_version`` (the interpreter used), ``dropped_to_uid`` (the
    unprivileged uid programs ran as, None if they kept the parent's; each run leases its own
    uid from a range, this is one of them), ``network_namespace``, ``ipc_namespace``,
    ``pid_namespace`` (everything the program starts dies with it and with the host),
    ``private_proc`` (other processes invisible), ``disk_bytes`` (the work directory's total
    cap, a tmpfs; None: per-file limit only), ``host_run_hidden``, ``cgroup`` ("v2", "v1" or
    None) and ``memory_limit_whole_program``, ``seccomp``, ``landlock_abi``,
    ``filesystem_writes_confined``, ``tcp_denied``, ``signals_scoped``, ``no_new_privs``,
    ``limits`` (the resource limits applied; ``processes`` None when not applied;
    ``program_memory_bytes`` / ``program_processes`` the whole program's, None without a cgroup),
    ``wall_timeout_s``, ``fork_server`` and ``notes`` (why anything is missing).

    ``fork_server`` (default True) runs the programs through a fork server per worker, which saves each program
    the interpreter's start-up; where it cannot start or run the probe
    program, each program starts a fresh interpreter and ``notes`` says why. False: a fresh
    interpreter per program.

    ``python`` defaults to ``python3`` on PATH, else the system interpreter: under root,
    programs run as an unprivileged uid, which cannot start an interpreter installed under
    ``/root`` (a pyenv or a virtual environment there), so ``sys.executable`` is often not
    usable. Raises :class:`~optbench.exceptions.ConfigError` for bad parameters or when no
    interpreter runs in the sandbox, and ``KeyboardInterrupt`` (after killing the programs in
    flight) on Ctrl-C.
    """
    if isinstance(programs, str):
        raise ConfigError("programs must be a sequence of program texts, not one string")
    dicts, isolation = _core.run_programs(
        list(programs),
        workers=workers,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        cpu_s=cpu_s,
        python=None if python is None else os.fspath(python),
        max_output_bytes=max_output_bytes,
        fork_server=fork_server,
    )
    return [SandboxResult(**d) for d in dicts], isolation


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The program HumanEval's reference harness runs for one completion:
    ``prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"``."""
    return _core.humaneval_program(prompt, completion, test, entry_point)


def run_tests(
    tests: Sequence[tuple[str, str, str, str]],
    *,
    workers: int | None = None,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    cpu_s: int = 10,
    python: str | os.PathLike[str] | None = None,
    max_output_bytes: int = 65536,
    fork_server: bool = True,
) -> tuple[list[SandboxResult], _core.Isolation]:
    """Runs HumanEval-style tests, each ``(prompt, completion, test, entry_point)``, the way the
    code scorer does: ``prompt + completion`` in one sandboxed process, the test's
    ``check(candidate)`` in another (in the same sandbox) that calls the candidate with plain
    data and alone reports the end of the test. The completion cannot forge a pass by writing
    a marker and leaving early, and never sees the test's text. Parameters, results and the
    isolation report as :func:`run_programs`."""
    dicts, isolation = _core.run_tests(
        [(prompt, completion, test, entry_point) for prompt, completion, test, entry_point in tests],
        workers=workers,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        cpu_s=cpu_s,
        python=None if python is None else os.fspath(python),
        max_output_bytes=max_output_bytes,
        fork_server=fork_server,
    )
    return [SandboxResult(**d) for d in dicts], isolation
