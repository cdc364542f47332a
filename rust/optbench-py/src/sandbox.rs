//! Bindings for the core's sandbox of untrusted Python programs (the code scorer). The Python
//! wrapper `optbench.sandbox` turns the dicts returned here into dataclasses.

use std::path::PathBuf;
use std::time::Duration;

use optbench_core::sandbox::{self, CodeTest, Isolation, Sandbox, SandboxConfig, SandboxResult};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::ConfigError;
use crate::native_call;

/// Runs each program in its own sandboxed `python3 -I -B` process, `workers` at a time (None:
/// one per CPU), and returns `(results, isolation)`: one dict per program in input order
/// (`status` "passed" / "timed out" / "failed", `reason`, `text`, `exit_code`, `signal`,
/// `duration_s`, `cpu_time_s`, `stdout`, `stderr`, `truncated`) and the weakest isolation any
/// run got. Limits: `timeout_s` wall clock per program (the whole process group is killed),
/// `memory_mb` address space, `cpu_s` CPU time, `max_output_bytes` kept of stdout and of
/// stderr each. `python`: the interpreter (None: `python3` on PATH or the system one, the
/// first that runs as the sandbox's unprivileged uid). `fork_server`: run the programs through a
/// fork server per worker (a pre-started interpreter that forks each program's process, with the
/// same isolation), falling back to a fresh interpreter per program where it does not work (the
/// isolation's `fork_server` and `notes` say which ran). The GIL is released while programs
/// run; Ctrl-C kills the programs in flight and raises `KeyboardInterrupt`.
#[pyfunction]
#[pyo3(signature = (programs, *, workers=None, timeout_s=10.0, memory_mb=1024, cpu_s=10, python=None, max_output_bytes=65536, fork_server=true))]
#[allow(clippy::too_many_arguments)]
fn run_programs<'py>(
    py: Python<'py>,
    programs: Vec<String>,
    workers: Option<i64>,
    timeout_s: f64,
    memory_mb: i64,
    cpu_s: i64,
    python: Option<PathBuf>,
    max_output_bytes: i64,
    fork_server: bool,
) -> PyResult<(Vec<Bound<'py, PyDict>>, Bound<'py, PyDict>)> {
    let (config, workers) = sandbox_config(workers, timeout_s, memory_mb, cpu_s, python, max_output_bytes)?;
    let config = SandboxConfig { fork_server, ..config };
    // Ctrl-C sets the cancel flag, which kills the programs in flight within a tick.
    let (sb, results) = native_call::run_blocking(py, |cancel| {
        let sb = Sandbox::new(config)?;
        let results = sb.run_programs_cancellable(&programs, workers, cancel.flag())?;
        Ok((sb, results))
    })?;
    results_and_isolation(py, &sb, results)
}

/// Runs HumanEval-style tests, each `(prompt, completion, test, entry_point)`, in the sandbox
/// the way the code scorer does: the completion (`prompt + completion`) in one process, the
/// test's `check(candidate)` in another that calls it with plain data and alone reports the end
/// of the test, so that the completion cannot forge a pass. Parameters, results and isolation
/// as [`run_programs`].
#[pyfunction]
#[pyo3(signature = (tests, *, workers=None, timeout_s=10.0, memory_mb=1024, cpu_s=10, python=None, max_output_bytes=65536, fork_server=true))]
#[allow(clippy::too_many_arguments)]
fn run_tests<'py>(
    py: Python<'py>,
    tests: Vec<(String, String, String, String)>,
    workers: Option<i64>,
    timeout_s: f64,
    memory_mb: i64,
    cpu_s: i64,
    python: Option<PathBuf>,
    max_output_bytes: i64,
    fork_server: bool,
) -> PyResult<(Vec<Bound<'py, PyDict>>, Bound<'py, PyDict>)> {
    let tests: Vec<CodeTest> = tests
        .into_iter()
        .map(|(prompt, completion, test, entry_point)| CodeTest { prompt, completion, test, entry_point })
        .collect();
    let (config, workers) = sandbox_config(workers, timeout_s, memory_mb, cpu_s, python, max_output_bytes)?;
    let config = SandboxConfig { fork_server, ..config };
    let (sb, results) = native_call::run_blocking(py, |cancel| {
        let sb = Sandbox::new(config)?;
        let results = sb.run_tests_cancellable(&tests, workers, cancel.flag())?;
        Ok((sb, results))
    })?;
    results_and_isolation(py, &sb, results)
}

/// The sandbox's configuration and the number of workers from the Python parameters (signed,
/// so that a negative value is a ConfigError rather than an OverflowError).
fn sandbox_config(
    workers: Option<i64>,
    timeout_s: f64,
    memory_mb: i64,
    cpu_s: i64,
    python: Option<PathBuf>,
    max_output_bytes: i64,
) -> PyResult<(SandboxConfig, usize)> {
    let workers = workers.map(|w| at_least("workers", w, 1)).transpose()?;
    if !(timeout_s > 0.0 && timeout_s <= 24.0 * 3600.0) {
        return Err(ConfigError::new_err(format!("timeout_s must be in (0, 86400] seconds, got {timeout_s}")));
    }
    let memory_mb = at_least("memory_mb", memory_mb, 1)?;
    let memory_bytes = memory_mb
        .checked_mul(1 << 20)
        .ok_or_else(|| ConfigError::new_err(format!("memory_mb is too large: {memory_mb}")))?;
    let config = SandboxConfig {
        python,
        timeout: Duration::from_secs_f64(timeout_s),
        cpu_time_s: at_least("cpu_s", cpu_s, 1)?,
        memory_bytes,
        max_output_bytes: at_least("max_output_bytes", max_output_bytes, 0)? as usize,
        ..SandboxConfig::default()
    };
    Ok((config, workers.map_or_else(sandbox::default_workers, |w| w as usize)))
}

/// One dict per result and the weakest isolation of the probe and every run.
fn results_and_isolation<'py>(
    py: Python<'py>,
    sb: &Sandbox,
    results: Option<Vec<SandboxResult>>,
) -> PyResult<(Vec<Bound<'py, PyDict>>, Bound<'py, PyDict>)> {
    // Only cancellation yields None, and run_blocking raises KeyboardInterrupt then.
    let results = results.expect("not cancelled");
    let mut isolation = sb.isolation().clone();
    for r in &results {
        isolation = isolation.weakest(&r.isolation);
    }
    let dicts = results.iter().map(|r| result_dict(py, r)).collect::<PyResult<Vec<_>>>()?;
    let iso = isolation_dict(py, &isolation)?;
    iso.set_item("python_version", sb.python_version())?;
    Ok((dicts, iso))
}

/// `prompt + completion + "\n" + test + "\n" + f"check({entry_point})"`: the program HumanEval's
/// reference harness runs for one completion.
#[pyfunction]
fn humaneval_program(prompt: &str, completion: &str, test: &str, entry_point: &str) -> String {
    sandbox::humaneval_program(prompt, completion, test, entry_point)
}

fn result_dict<'py>(py: Python<'py>, r: &SandboxResult) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("status", r.status.kind())?;
    d.set_item("reason", r.status.reason())?;
    d.set_item("text", r.status.as_text())?;
    d.set_item("exit_code", r.exit_code)?;
    d.set_item("signal", r.signal)?;
    d.set_item("duration_s", r.duration.as_secs_f64())?;
    d.set_item("cpu_time_s", r.cpu_time.as_secs_f64())?;
    d.set_item("stdout", &r.stdout)?;
    d.set_item("stderr", &r.stderr)?;
    d.set_item("truncated", r.stdout_truncated || r.stderr_truncated)?;
    Ok(d)
}

fn isolation_dict<'py>(py: Python<'py>, iso: &Isolation) -> PyResult<Bound<'py, PyDict>> {
    let limits = PyDict::new(py);
    limits.set_item("cpu_time_s", iso.limits.cpu_time_s)?;
    limits.set_item("address_space_bytes", iso.limits.address_space_bytes)?;
    limits.set_item("processes", iso.limits.processes)?;
    limits.set_item("file_size_bytes", iso.limits.file_size_bytes)?;
    limits.set_item("open_files", iso.limits.open_files)?;
    limits.set_item("core_file_bytes", iso.limits.core_file_bytes)?;
    limits.set_item("program_memory_bytes", iso.limits.program_memory_bytes)?;
    limits.set_item("program_processes", iso.limits.program_processes)?;
    let d = PyDict::new(py);
    d.set_item("python", iso.python.display().to_string())?;
    d.set_item("dropped_to_uid", iso.dropped_to_uid)?;
    d.set_item("network_namespace", iso.network_namespace)?;
    d.set_item("ipc_namespace", iso.ipc_namespace)?;
    d.set_item("pid_namespace", iso.pid_namespace)?;
    d.set_item("private_proc", iso.private_proc)?;
    d.set_item("disk_bytes", iso.disk_bytes)?;
    d.set_item("host_run_hidden", iso.host_run_hidden)?;
    d.set_item("cgroup", iso.cgroup.as_deref())?;
    d.set_item("memory_limit_whole_program", iso.memory_limit_whole_program)?;
    d.set_item("seccomp", iso.seccomp)?;
    d.set_item("landlock_abi", iso.landlock_abi)?;
    d.set_item("filesystem_writes_confined", iso.filesystem_writes_confined)?;
    d.set_item("tcp_denied", iso.tcp_denied)?;
    d.set_item("signals_scoped", iso.signals_scoped)?;
    d.set_item("no_new_privs", iso.no_new_privs)?;
    d.set_item("limits", limits)?;
    d.set_item("wall_timeout_s", iso.wall_timeout.as_secs_f64())?;
    d.set_item("fork_server", iso.fork_server)?;
    d.set_item("notes", &iso.notes)?;
    Ok(d)
}

fn at_least(name: &str, value: i64, min: i64) -> PyResult<u64> {
    if value < min {
        return Err(ConfigError::new_err(format!("{name} must be at least {min}, got {value}")));
    }
    Ok(value as u64)
}

/// Adds the sandbox's functions to `optbench._core`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(run_programs, m)?)?;
    m.add_function(wrap_pyfunction!(run_tests, m)?)?;
    m.add_function(wrap_pyfunction!(humaneval_program, m)?)?;
    Ok(())
}
