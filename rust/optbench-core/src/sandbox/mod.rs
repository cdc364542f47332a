//! A sandbox for untrusted Python programs: the code scorer runs each HumanEval sample here.
//!
//! Every program runs in its own process, in a fresh temporary directory that is removed
//! afterwards: forked from its worker's fork server (see [`fork_server`]; the default where it
//! works, [`SandboxConfig::fork_server`]) or a freshly started `python3 -I -B`, with the same
//! setup either way:
//!
//! - its own session and process group; a wall-clock timeout (and the program's own end) kills
//!   the whole group with `SIGKILL`;
//! - resource limits: CPU time, address space, processes, file size, open files, no core dumps;
//! - an empty environment (only `HOME` and `TMPDIR`, both the work directory; `-I` makes
//!   CPython ignore `PYTHON*` variables anyway), stdin from `/dev/null`, stdout and stderr
//!   captured up to a cap (the rest is read and discarded), no other inherited descriptor but
//!   the control pipe on which the child reports its setup and the end of the program;
//! - a new network namespace (no interfaces but a down loopback) where the kernel allows one;
//! - when the parent is root: an unprivileged uid/gid of its own, leased for the run from
//!   [`SandboxConfig::uids`], so that `RLIMIT_NPROC` binds and everything left running under
//!   that uid (even processes that left the group with `setsid`) is killed at the end;
//! - `no_new_privs` and, where the kernel has Landlock, a Landlock domain that denies writing
//!   anywhere but the work directory (and `/dev/null`), TCP `bind`/`connect`, and signalling
//!   or connecting to abstract Unix sockets outside the sandbox.
//!
//! What was achieved is reported per run as an [`Isolation`]; nothing silently pretends. A run
//! through the fork server says so ([`Isolation::fork_server`]) with a note on what it shares
//! with its worker's other programs (the fork server's address-space layout and hash seed).
//!
//! The program is executed the way HumanEval's reference harness executes it: compiled from
//! its file and `exec`uted in fresh, empty globals (so `__name__` is not `"__main__"`), and it
//! passes only if that `exec` returns and the process then exits with code 0. A program that
//! leaves early with `os._exit(0)` or `sys.exit(0)` fails, as in the reference (which reports
//! "timed out" and "failed: 0" for those).

mod cgroup;
mod child;
mod config;
mod fork_server;
mod landlock;
mod python;
mod report;
mod seccomp;
mod supervise;
mod uid_lease;
mod workdir;

use std::fs::File;
use std::io::{self, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::{CoreError, Result};

use cgroup::RunCgroup;
use child::SETUP_STEPS;
use child::{fd_above_stdio, got, pipe_above_stdio, read_setup_failure, ChildFds, ChildSetup, SetupHeader};
use config::applied_limits;
pub use config::{AppliedLimits, SandboxConfig};
use fork_server::ForkServer;
use python::{default_python_candidates, resolve_python};
pub use report::{Isolation, SandboxResult, Status};
use supervise::{classify, supervise, Leader};
use uid_lease::UidLease;
use workdir::WorkDir;

/// The HumanEval program for one completion, exactly as the reference harness builds it:
/// `prompt + completion + "\n" + test + "\n" + f"check({entry_point})"`.
pub fn humaneval_program(prompt: &str, completion: &str, test: &str, entry_point: &str) -> String {
    format!("{prompt}{completion}\n{test}\ncheck({entry_point})")
}

/// One HumanEval-style test of a completion: `prompt` and `test` are trusted (they come from
/// the dataset), `completion` is not. Run by [`Sandbox::run_test`]: `prompt + completion` in
/// one process, `prompt`, then `test` and `check(<entry_point>)` in another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeTest {
    /// The function's signature and docstring (and any helpers the test uses).
    pub prompt: String,
    /// The model's completion of the prompt.
    pub completion: String,
    /// The test code; it defines `check(candidate)`.
    pub test: String,
    /// The name of the function under test.
    pub entry_point: String,
}

/// What one run executes.
#[derive(Clone, Copy)]
enum Job<'a> {
    Program(&'a str),
    Test(&'a CodeTest),
}

impl Job<'_> {
    /// The driver's mode.
    fn mode(&self) -> &'static str {
        match self {
            Job::Program(_) => "program",
            Job::Test(_) => "test",
        }
    }

    /// What the driver reads from its task descriptor: a line of byte lengths, then the texts.
    fn task(&self) -> Vec<u8> {
        let parts: Vec<&str> = match self {
            Job::Program(p) => vec![p],
            Job::Test(t) => vec![&t.prompt, &t.completion, &t.entry_point, &t.test],
        };
        let lengths: Vec<String> = parts.iter().map(|p| p.len().to_string()).collect();
        let mut task = format!("{}\n", lengths.join(" ")).into_bytes();
        for p in parts {
            task.extend_from_slice(p.as_bytes());
        }
        task
    }
}

/// The default number of parallel workers: the number of CPUs.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Runs untrusted Python programs; see the module documentation for what it enforces.
///
/// Construction resolves the interpreter and runs a probe program through the full sandbox,
/// so a `Sandbox` that exists is known to work on this machine.
#[derive(Debug)]
pub struct Sandbox {
    config: SandboxConfig,
    python: PathBuf,
    python_version: String,
    isolation: Isolation,
    /// Idle fork servers, one per worker that has run a program (see [`fork_server`]).
    fork_servers: Mutex<Vec<ForkServer>>,
    /// Why programs start a fresh interpreter each: the fork server is off or did not work.
    fork_server_error: Option<String>,
}

/// The Python driver of every run (see the file's comments): `program` mode runs a program in
/// its own process; `test` mode runs a completion and its test in two processes.
const DRIVER: &str = include_str!("driver.py");
const END_MARKER: &[u8] = b"\0optbench-sandbox-end\0";
/// What the probe says when the program's uid cannot use the interpreter.
const OUT_OF_REACH: &str = "out of reach of the sandbox uid";
/// The probe run by [`Sandbox::new`]; it prints the interpreter's version. It checks that the
/// program's uid can execute the interpreter and read its standard library: a fork server
/// starts the interpreter before the child leaves the parent's uid.
const PROBE: &str = "import os, sys\n\
    assert os.access(sys.executable, os.X_OK) and os.access(os.path.dirname(os.__file__), os.R_OK | os.X_OK), \
    'the interpreter or its standard library is out of reach of the sandbox uid'\n\
    print('%d.%d.%d' % sys.version_info[:3])\n";

impl Sandbox {
    /// Validates `config`, finds the interpreter and checks, by running a probe program, that
    /// the sandbox works. Errors are [`CoreError::Config`] with what to fix.
    pub fn new(config: SandboxConfig) -> Result<Sandbox> {
        config.validate()?;
        let candidates = match &config.python {
            Some(p) => vec![resolve_python(p)?],
            None => default_python_candidates(),
        };
        if candidates.is_empty() {
            return Err(CoreError::config("no python3 found on PATH, in /usr/bin or in /usr/local/bin"));
        }
        let mut failures = Vec::new();
        for python in candidates {
            // Through a fork server first (when configured), else a fresh interpreter each.
            let mut fork_server_error = (!config.fork_server).then(|| "turned off in the configuration".to_string());
            loop {
                // Filled in from the probe's result below.
                let mut sandbox = Sandbox {
                    isolation: Isolation::unknown(&python, &config),
                    config: config.clone(),
                    python: python.clone(),
                    python_version: String::new(),
                    fork_servers: Mutex::new(Vec::new()),
                    fork_server_error: fork_server_error.clone(),
                };
                let failure = match sandbox.run(PROBE) {
                    Ok(r) if r.passed() && (r.isolation.fork_server || fork_server_error.is_some()) => {
                        sandbox.python_version = r.stdout.trim().to_string();
                        sandbox.isolation = r.isolation;
                        return Ok(sandbox);
                    }
                    Ok(r) if r.passed() => {
                        format!("{}: the probe did not run through the fork server", sandbox.python.display())
                    }
                    Ok(r) => format!("{}: probe {} {}", sandbox.python.display(), r.status, r.stderr.trim()),
                    Err(e) => format!("{}: {e}", sandbox.python.display()),
                };
                // An interpreter out of the sandbox uid's reach fails a fresh start too.
                if fork_server_error.is_some() || failure.contains(OUT_OF_REACH) {
                    failures.push(failure);
                    break;
                }
                fork_server_error = Some(failure);
            }
        }
        let who = if is_root() && config.uids.is_some() {
            " (programs run as an unprivileged uid, which must be able to read and execute the \
             interpreter and its standard library)"
        } else {
            ""
        };
        Err(CoreError::config(format!("no Python interpreter runs in the sandbox{who}: {}", failures.join("; "))))
    }

    /// The interpreter programs run with.
    pub fn python(&self) -> &Path {
        &self.python
    }

    /// Its version, e.g. "3.11.2".
    pub fn python_version(&self) -> &str {
        &self.python_version
    }

    /// The configuration.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// The isolation the probe run got at construction: what this machine allows.
    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }

    /// Runs one program. `Err` only when the sandbox itself fails (no temporary directory, no
    /// process); whatever the program does is a [`SandboxResult`].
    pub fn run(&self, program: &str) -> Result<SandboxResult> {
        let never = AtomicBool::new(false);
        Ok(self.run_one(Job::Program(program), &never)?.expect("not cancelled"))
    }

    /// Runs the programs on `workers` threads (at least 1), each program in its own sandboxed
    /// process; results come back in input order. The first sandbox error stops the rest.
    pub fn run_programs<S: AsRef<str> + Sync>(&self, programs: &[S], workers: usize) -> Result<Vec<SandboxResult>> {
        let never = AtomicBool::new(false);
        Ok(self.run_programs_cancellable(programs, workers, &never)?.expect("not cancelled"))
    }

    /// [`Sandbox::run_programs`] that stops, killing the programs in flight, once `cancel` is
    /// set; it then returns `Ok(None)`.
    pub fn run_programs_cancellable<S: AsRef<str> + Sync>(
        &self,
        programs: &[S],
        workers: usize,
        cancel: &AtomicBool,
    ) -> Result<Option<Vec<SandboxResult>>> {
        let jobs: Vec<Job<'_>> = programs.iter().map(|p| Job::Program(p.as_ref())).collect();
        self.run_jobs(&jobs, workers, cancel)
    }

    /// Runs one test: passed only if the test's `check` returned, which the completion's code
    /// cannot fake (see the module documentation).
    pub fn run_test(&self, test: &CodeTest) -> Result<SandboxResult> {
        let never = AtomicBool::new(false);
        Ok(self.run_one(Job::Test(test), &never)?.expect("not cancelled"))
    }

    /// [`Sandbox::run_test`] for each test on `workers` threads; results in input order,
    /// `Ok(None)` once `cancel` is set (the tests in flight are killed).
    pub fn run_tests_cancellable(
        &self,
        tests: &[CodeTest],
        workers: usize,
        cancel: &AtomicBool,
    ) -> Result<Option<Vec<SandboxResult>>> {
        let jobs: Vec<Job<'_>> = tests.iter().map(Job::Test).collect();
        self.run_jobs(&jobs, workers, cancel)
    }

    fn run_jobs(&self, jobs: &[Job<'_>], workers: usize, cancel: &AtomicBool) -> Result<Option<Vec<SandboxResult>>> {
        let next = AtomicUsize::new(0);
        // Set on the first sandbox error so that the other workers stop too.
        let failed = AtomicBool::new(false);
        let stop = StopFlags { cancel, failed: &failed };
        let workers = workers.clamp(1, jobs.len().max(1));
        let mut slots: Vec<Option<Result<Option<SandboxResult>>>> = (0..jobs.len()).map(|_| None).collect();
        let finished: Vec<Vec<(usize, Result<Option<SandboxResult>>)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        while !stop.is_set() {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&job) = jobs.get(i) else { break };
                            let outcome = self.run_one(job, &stop);
                            if outcome.is_err() {
                                failed.store(true, Ordering::SeqCst);
                            }
                            done.push((i, outcome));
                        }
                        done
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("sandbox worker panicked")).collect()
        });
        for (i, outcome) in finished.into_iter().flatten() {
            slots[i] = Some(outcome);
        }
        // The first error in input order wins over cancellation and over missing results.
        if let Some(Some(Err(e))) = slots.iter_mut().find(|s| matches!(s, Some(Err(_)))).map(Option::take) {
            return Err(e);
        }
        let mut results = Vec::with_capacity(slots.len());
        for slot in slots {
            match slot {
                Some(Ok(Some(r))) => results.push(r),
                _ => return Ok(None), // cancelled before or while this one ran
            }
        }
        Ok(Some(results))
    }

    /// One program from start to cleanup; `Ok(None)` if `stop` was set while it ran.
    fn run_one(&self, job: Job<'_>, stop: &dyn Stop) -> Result<Option<SandboxResult>> {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let lease = match &self.config.uids {
            Some(range) if is_root() => Some(UidLease::acquire(range)?),
            _ => None,
        };
        let run_as = lease.as_ref().map(|l| l.uid);
        let mut workdir = WorkDir::create(run_as)?;
        let task = task_descriptor(&job.task()).map_err(|e| sandbox_err("cannot pass the program on", e))?;

        let mut notes = Vec::new();
        let ruleset = match landlock::Ruleset::new() {
            Ok(r) => Some(r),
            Err(e) => {
                notes.push(format!("Landlock unavailable: {e}"));
                None
            }
        };
        let limits = applied_limits(&self.config, run_as.is_some());
        // The program's memory, plus its tmpfs work directory (whose pages count as memory).
        let cgroup_memory = self.config.memory_bytes.saturating_add(self.config.max_disk_bytes);
        let cgroup = if is_root() {
            let name = match run_as {
                Some(uid) => format!("optbench-sandbox-uid-{uid}"),
                None => format!("optbench-sandbox-{}-{}", std::process::id(), RUNS.fetch_add(1, Ordering::Relaxed)),
            };
            match RunCgroup::create(&name, cgroup_memory, self.config.max_processes) {
                Ok(c) => Some(c),
                Err(e) => {
                    notes.push(format!("no cgroup for the run ({e}): {}", per_process_worst_case(&limits)));
                    None
                }
            }
        } else {
            notes.push(format!("not root, no cgroup: {}", per_process_worst_case(&limits)));
            None
        };
        if run_as.is_none() {
            notes.push(if is_root() {
                "running as root: no uid was configured, so RLIMIT_NPROC is not applied".to_string()
            } else {
                "not root: programs keep the parent's uid, so RLIMIT_NPROC is not applied and a \
                 process that leaves the process group (setsid) can outlive the run"
                    .to_string()
            });
        }
        let (ctl_read, ctl_write) = pipe_above_stdio().map_err(|e| sandbox_err("cannot create a pipe", e))?;
        let setup = ChildSetup::new(
            &limits,
            run_as,
            ChildFds {
                control: ctl_write.as_raw_fd(),
                source: task.as_raw_fd(),
                landlock: ruleset.as_ref().map(|r| (r.fd.as_raw_fd(), r.workdir_access)),
                cgroup_procs: cgroup.as_ref().map_or([-1, -1], RunCgroup::procs_fds),
                workdir: &workdir.path,
                disk_bytes: self.config.max_disk_bytes,
                disk_files: self.config.max_disk_files,
            },
        )
        .map_err(|e| sandbox_err("cannot prepare the child", e))?;

        // Through the fork server where there is one, else a freshly started interpreter.
        let mut forked = None;
        let mut server = self.fork_server_error.is_none().then(|| self.take_fork_server()).flatten();
        if let Some(srv) = server.as_mut() {
            match self.fork(srv, &setup, job) {
                Ok(f) => forked = Some(f),
                Err(e) => {
                    notes.push(format!("the fork server failed ({e}): this program started a fresh interpreter"));
                    server = None; // broken: ended on drop
                }
            }
        }
        let used_fork_server = forked.is_some();
        let (leader_pid, stdout, stderr, child) = match forked {
            Some((pid, stdout, stderr)) => (pid, stdout, stderr, None),
            None => {
                let mut child = self.spawn(&setup, job, &workdir.path, &task, &ctl_write, &ctl_read)?;
                let stdout = OwnedFd::from(child.stdout.take().expect("piped stdout"));
                let stderr = OwnedFd::from(child.stderr.take().expect("piped stderr"));
                (child.id() as libc::pid_t, stdout, stderr, Some(child))
            }
        };
        drop(ctl_write); // the child has its copy; ours must go for the pipe to end with it
        drop(task);
        drop(ruleset); // the child holds the Landlock domain now
        let leader = match (&child, server.as_mut()) {
            (None, Some(srv)) => Leader::Forked(leader_pid, srv),
            _ => Leader::Spawned(leader_pid),
        };
        let supervised = supervise(
            leader,
            [stdout, stderr, ctl_read],
            self.config.timeout,
            self.config.max_output_bytes,
            lease.as_ref(),
            stop,
        );
        drop(child); // already reaped by `supervise`; dropping a `Child` neither waits nor kills
        if let Some(srv) = server {
            self.return_fork_server(srv);
        }
        let oom_killed = cgroup.as_ref().is_some_and(RunCgroup::oom_killed);
        let cgroup_version = cgroup.as_ref().map(|c| c.version);
        drop(cgroup); // removed once its processes are gone
                      // Removed here, after every process that could write to it is gone, and checked.
        let cleanup = workdir.remove();
        if let (Some(lease), Ok(())) = (&lease, &cleanup) {
            lease.mark_clean();
        }
        drop(lease);
        let Some(s) = supervised else { return Ok(None) };
        if used_fork_server {
            if let Some(failure) = forked_setup_failure(&s.control.head) {
                return Err(failure);
            }
        }

        let mut isolation = self.isolation_from_header(&s.control.head, run_as, limits, notes, used_fork_server);
        if let Some(version) = cgroup_version {
            if isolation.memory_limit_whole_program {
                isolation.cgroup = Some(version.to_string());
                isolation.limits.program_memory_bytes = Some(cgroup_memory);
                isolation.limits.program_processes = Some(self.config.max_processes);
            }
        }
        let mut status = classify(&s, &self.config);
        if oom_killed && status != Status::Passed && status != Status::TimedOut {
            status = Status::Failed(format!(
                "memory limit: the program's processes ran out of their {} bytes (killed by the kernel)",
                cgroup_memory
            ));
        }
        if let Err(e) = cleanup {
            isolation.notes.push(format!("work directory left behind: {e}"));
            status = Status::Failed(format!("work directory left behind: {e}"));
        }
        Ok(Some(SandboxResult {
            status,
            exit_code: s.exit_code,
            signal: s.signal,
            duration: s.duration,
            cpu_time: s.cpu_time,
            stdout: String::from_utf8_lossy(&s.stdout.head).into_owned(),
            stderr: String::from_utf8_lossy(&s.stderr.head).into_owned(),
            stdout_truncated: s.stdout.truncated(),
            stderr_truncated: s.stderr.truncated(),
            isolation,
        }))
    }

    /// A fork server of the pool, or a new one; `None` if none starts (the run then starts a
    /// fresh interpreter, and the note says why).
    fn take_fork_server(&self) -> Option<ForkServer> {
        if let Some(server) = self.fork_servers.lock().expect("fork server pool").pop() {
            return Some(server);
        }
        ForkServer::start(&self.python).ok()
    }

    /// Puts a fork server back into the pool (one per worker that ran), unless it broke.
    fn return_fork_server(&self, server: ForkServer) {
        if !server.broken {
            self.fork_servers.lock().expect("fork server pool").push(server);
        }
    }

    /// Has `server` fork the run's child: its pid, and our ends of its stdout and stderr.
    fn fork(
        &self,
        server: &mut ForkServer,
        setup: &ChildSetup,
        job: Job<'_>,
    ) -> io::Result<(libc::pid_t, OwnedFd, OwnedFd)> {
        let (stdout_read, stdout_write) = pipe_above_stdio()?;
        let (stderr_read, stderr_write) = pipe_above_stdio()?;
        let (request, fds) = setup.fork_server_request(job.mode(), stdout_write.as_raw_fd(), stderr_write.as_raw_fd());
        let pid = server.fork(&request, &fds)?;
        Ok((pid, stdout_read, stderr_read))
    }

    /// Starts the run's child as a fresh interpreter (`fork`, the setup, `exec`).
    fn spawn(
        &self,
        setup: &ChildSetup,
        job: Job<'_>,
        workdir: &Path,
        task: &OwnedFd,
        ctl_write: &OwnedFd,
        ctl_read: &OwnedFd,
    ) -> Result<std::process::Child> {
        let mut command = Command::new(&self.python);
        command
            .args([
                "-I",
                "-B",
                "-c",
                DRIVER,
                job.mode(),
                &task.as_raw_fd().to_string(),
                &ctl_write.as_raw_fd().to_string(),
            ])
            .env_clear()
            .env("HOME", workdir)
            .env("TMPDIR", workdir)
            .current_dir(workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let setup = setup.clone();
        // SAFETY: `ChildSetup::apply` makes only async-signal-safe system calls on data
        // prepared before (no allocation, no locks), as `pre_exec` requires after `fork`.
        unsafe {
            command.pre_exec(move || setup.apply());
        }
        command.spawn().map_err(|e| {
            let detail = read_setup_failure(ctl_read).unwrap_or_default();
            sandbox_err(&format!("cannot start {}{detail}", self.python.display()), e)
        })
    }

    /// The isolation report from the header the child wrote before `exec` (or, `forked`, before
    /// the fork server's child ran the driver).
    fn isolation_from_header(
        &self,
        head: &[u8],
        run_as: Option<u32>,
        limits: AppliedLimits,
        mut notes: Vec<String>,
        forked: bool,
    ) -> Isolation {
        if forked {
            notes.push(
                "fork server: the program's process is a fork of its worker's pre-started interpreter, \
                 not a fresh one: it shares that interpreter's address-space layout (ASLR) and str hash \
                 seed with the worker's other programs (its setup is a fresh interpreter's)"
                    .to_string(),
            );
        } else if let Some(why) = &self.fork_server_error {
            notes.push(format!("no fork server ({why}): each program started a fresh interpreter"));
        }
        let header = SetupHeader::parse(head);
        let header_ok = header.is_some();
        if header.is_none() {
            notes.push("the child's setup report is missing".into());
        }
        let h = header.unwrap_or_default();
        if let Some(errno) = h.netns_errno {
            notes.push(format!("no network namespace: unshare failed: {}", io::Error::from_raw_os_error(errno)));
        }
        if let Some(errno) = h.landlock_errno {
            notes.push(format!(
                "Landlock not applied: landlock_restrict_self failed: {}",
                io::Error::from_raw_os_error(errno)
            ));
        }
        if let Some(errno) = h.seccomp_errno {
            notes.push(format!("no seccomp filter: {}", io::Error::from_raw_os_error(errno)));
        } else if !h.seccomp && header_ok {
            notes.push(match seccomp::filters() {
                Err(e) => format!("no seccomp filter: {e}"),
                Ok(_) => "no seccomp filter: no_new_privs could not be set".to_string(),
            });
        }
        let has = |bit: u8| h.got & bit != 0;
        if header_ok && !has(got::PID_NAMESPACE) {
            notes.push(
                "no PID namespace (root only): processes that leave the process group are killed \
                 through their uid, and not at all if the host dies; other processes are visible in /proc"
                    .to_string(),
            );
        }
        if header_ok && !has(got::PRIVATE_WORKDIR) {
            notes.push(format!(
                "no private tmpfs work directory (root only): no total disk cap, only files of at most \
                 {} bytes each",
                limits.file_size_bytes
            ));
        }
        let abi = if h.landlock { landlock::abi().ok() } else { None };
        Isolation {
            python: self.python.clone(),
            dropped_to_uid: run_as,
            network_namespace: h.netns,
            ipc_namespace: has(got::IPC_NAMESPACE),
            pid_namespace: has(got::PID_NAMESPACE),
            private_proc: has(got::PRIVATE_PROC),
            disk_bytes: has(got::PRIVATE_WORKDIR).then_some(self.config.max_disk_bytes),
            host_run_hidden: has(got::HOST_RUN_HIDDEN),
            cgroup: None,
            memory_limit_whole_program: has(got::CGROUP),
            seccomp: h.seccomp,
            landlock_abi: abi,
            filesystem_writes_confined: abi.is_some(),
            tcp_denied: abi.is_some_and(|a| a >= 4),
            signals_scoped: abi.is_some_and(|a| a >= 6),
            no_new_privs: h.no_new_privs,
            limits,
            wall_timeout: self.config.timeout,
            fork_server: forked,
            notes,
        }
    }
}

/// The sandbox error for a child of the fork server whose setup failed (it reported the step
/// and errno on the control pipe instead of the setup header), if it did.
fn forked_setup_failure(control: &[u8]) -> Option<CoreError> {
    let [b'E', step, errno, ..] = *control else { return None };
    let step = SETUP_STEPS.get(step as usize).copied().unwrap_or("the setup");
    Some(sandbox_err(
        &format!("cannot start the program in the fork server ({step} failed in the child)"),
        io::Error::from_raw_os_error(errno as i32),
    ))
}

/// What per-process limits allow a whole program, for the isolation notes.
fn per_process_worst_case(limits: &AppliedLimits) -> String {
    let each = limits.address_space_bytes;
    match limits.processes {
        Some(n) => format!(
            "memory is limited per process ({each} bytes of address space), processes by RLIMIT_NPROC ({n}): \
             a program can hold up to {n} x {each} bytes",
        ),
        None => format!(
            "memory is limited per process ({each} bytes of address space) and the number of processes is not \
             limited: a program can hold any multiple of that, until its CPU time or wall-clock limit",
        ),
    }
}

/// A memory file holding `task`, read by the driver (so that no program file lies in the work
/// directory, and the test's text never reaches the candidate's process).
fn task_descriptor(task: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: memfd_create with a NUL-terminated name returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"optbench-task".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(task)?;
    file.rewind()?;
    fd_above_stdio(OwnedFd::from(file))
}

/// Why a worker should stop early: cancelled by the caller, or another worker failed.
trait Stop: Sync {
    fn is_set(&self) -> bool;
}

impl Stop for AtomicBool {
    fn is_set(&self) -> bool {
        self.load(Ordering::SeqCst)
    }
}

struct StopFlags<'a> {
    cancel: &'a AtomicBool,
    failed: &'a AtomicBool,
}

impl Stop for StopFlags<'_> {
    fn is_set(&self) -> bool {
        self.cancel.load(Ordering::SeqCst) || self.failed.load(Ordering::SeqCst)
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn io_err(path: &Path, source: io::Error) -> CoreError {
    CoreError::Io { path: path.display().to_string(), source }
}

fn sandbox_err(what: &str, e: io::Error) -> CoreError {
    CoreError::Io { path: format!("sandbox: {what}"), source: e }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn humaneval_program_is_the_reference_formula() {
        assert_eq!(
            humaneval_program("def f():\n", "    return 1\n", "def check(c):\n    assert c() == 1\n", "f"),
            "def f():\n    return 1\n\ndef check(c):\n    assert c() == 1\n\ncheck(f)"
        );
    }

    #[test]
    fn status_text() {
        assert_eq!(Status::Passed.to_string(), "passed");
        assert_eq!(Status::TimedOut.as_text(), "timed out");
        assert_eq!(
            Status::Failed("exit code 1: AssertionError".into()).to_string(),
            "failed: exit code 1: AssertionError"
        );
    }

    #[test]
    fn bad_config_is_rejected() {
        let c = SandboxConfig { timeout: Duration::ZERO, ..SandboxConfig::default() };
        assert!(matches!(Sandbox::new(c), Err(CoreError::Config(_))));
        let c = SandboxConfig { python: Some("/nonexistent/python3".into()), ..SandboxConfig::default() };
        assert!(matches!(Sandbox::new(c), Err(CoreError::Config(_))));
    }
}
