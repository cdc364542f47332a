//! A sandbox for untrusted Python programs: the code scorer runs each HumanEval sample here.
//!
//! Every program runs in its own `python3 -I -B` process, in a fresh temporary directory that is
//! removed afterwards, with:
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
//! What was achieved is reported per run as an [`Isolation`]; nothing silently pretends.
//!
//! The program is executed the way HumanEval's reference harness executes it: compiled from
//! its file and `exec`uted in fresh, empty globals (so `__name__` is not `"__main__"`), and it
//! passes only if that `exec` returns and the process then exits with code 0. A program that
//! leaves early with `os._exit(0)` or `sys.exit(0)` fails, as in the reference (which reports
//! "timed out" and "failed: 0" for those).

use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::io::{self, Write};
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{CoreError, Result};

/// The HumanEval program for one completion, exactly as the reference harness builds it:
/// `prompt + completion + "\n" + test + "\n" + f"check({entry_point})"`.
pub fn humaneval_program(prompt: &str, completion: &str, test: &str, entry_point: &str) -> String {
    format!("{prompt}{completion}\n{test}\ncheck({entry_point})")
}

/// The default number of parallel workers: the number of CPUs.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Limits and settings of a [`Sandbox`]. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// The Python interpreter: a path, or a name looked up on `PATH`. `None`: `python3` on
    /// `PATH` (the real executable behind shims such as pyenv's), else `/usr/bin/python3` or
    /// `/usr/local/bin/python3`, the first that runs in the sandbox (an interpreter under a
    /// directory the sandbox uid cannot enter, such as `/root`, does not).
    pub python: Option<PathBuf>,
    /// Wall-clock limit of one program; past it the whole process group is killed. Default 10 s.
    pub timeout: Duration,
    /// `RLIMIT_CPU` in seconds (`SIGXCPU` at the limit, `SIGKILL` one second later). Default 10.
    pub cpu_time_s: u64,
    /// `RLIMIT_AS`: address space in bytes. Default 1 GiB.
    pub memory_bytes: u64,
    /// `RLIMIT_NPROC`: processes and threads of the sandbox uid. Applied only when the parent
    /// is root and programs run under a uid of their own (the limit counts every process of a
    /// uid, so it would be meaningless, or harmful, on a shared one). Default 64.
    pub max_processes: u64,
    /// `RLIMIT_FSIZE`: the largest file a program may write, in bytes. Default 16 MiB.
    pub max_file_size_bytes: u64,
    /// `RLIMIT_NOFILE`: open file descriptors. Default 64.
    pub max_open_files: u64,
    /// Bytes of stdout and of stderr kept (each); the rest is read and discarded. Default 64 KiB.
    pub max_output_bytes: usize,
    /// When the parent is root, each run leases one uid of this range for itself (gid = uid),
    /// locked across processes. `None` keeps root's identity: `RLIMIT_NPROC` is then not
    /// applied and the sandbox is much weaker. Default `60000..61000` (the range the `isolate`
    /// sandbox uses; these ids need no `/etc/passwd` entry).
    pub uids: Option<Range<u32>>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            python: None,
            timeout: Duration::from_secs(10),
            cpu_time_s: 10,
            memory_bytes: 1 << 30,
            max_processes: 64,
            max_file_size_bytes: 16 << 20,
            max_open_files: 64,
            max_output_bytes: 64 << 10,
            uids: Some(60000..61000),
        }
    }
}

impl SandboxConfig {
    /// Checks the values; the error says what to fix.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(CoreError::config(msg));
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(24 * 3600) {
            return bad(format!(
                "sandbox timeout must be in (0 s, 24 h], got {:?}",
                self.timeout
            ));
        }
        if self.cpu_time_s == 0 {
            return bad("sandbox cpu_time_s must be at least 1".into());
        }
        if self.memory_bytes < 32 << 20 {
            return bad(format!(
                "sandbox memory must be at least 32 MiB (CPython needs it to start), got {} bytes",
                self.memory_bytes
            ));
        }
        if self.max_processes == 0 {
            return bad("sandbox max_processes must be at least 1".into());
        }
        if self.max_open_files < 16 {
            return bad(format!(
                "sandbox max_open_files must be at least 16 (CPython needs a few), got {}",
                self.max_open_files
            ));
        }
        if let Some(uids) = &self.uids {
            if uids.is_empty() || uids.start == 0 {
                return bad(format!(
                    "sandbox uids must be a non-empty range of non-root uids, got {uids:?}"
                ));
            }
        }
        Ok(())
    }
}

/// How one run ended. Its text form is "passed", "timed out" or `"failed: <reason>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// The program ran to its end and the process exited with code 0.
    Passed,
    /// The wall-clock timeout killed the process group.
    TimedOut,
    /// Anything else, with a concise reason such as `"exit code 1: AssertionError"`,
    /// `"memory limit: MemoryError"`, `"CPU time limit (SIGXCPU)"` or
    /// `"killed by signal 11 (SIGSEGV)"`.
    Failed(String),
}

impl Status {
    /// "passed", "timed out" or "failed".
    pub fn kind(&self) -> &'static str {
        match self {
            Status::Passed => "passed",
            Status::TimedOut => "timed out",
            Status::Failed(_) => "failed",
        }
    }

    /// The reason of a failure; `None` otherwise.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Status::Failed(reason) => Some(reason),
            _ => None,
        }
    }

    /// "passed", "timed out" or `"failed: <reason>"`.
    pub fn as_text(&self) -> String {
        self.to_string()
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Failed(reason) => write!(f, "failed: {reason}"),
            other => f.write_str(other.kind()),
        }
    }
}

/// The resource limits a run was given (after clamping to the parent's own hard limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedLimits {
    /// `RLIMIT_CPU` soft limit, seconds.
    pub cpu_time_s: u64,
    /// `RLIMIT_AS`, bytes.
    pub address_space_bytes: u64,
    /// `RLIMIT_NPROC`; `None` when not applied (no uid of its own).
    pub processes: Option<u64>,
    /// `RLIMIT_FSIZE`, bytes.
    pub file_size_bytes: u64,
    /// `RLIMIT_NOFILE`.
    pub open_files: u64,
    /// `RLIMIT_CORE`, always 0.
    pub core_file_bytes: u64,
}

/// What isolation a run actually got. Fields that could not be had are `false`/`None` and
/// [`Isolation::notes`] says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    /// The interpreter that ran the program.
    pub python: PathBuf,
    /// The uid (and gid) the program ran as after leaving root; `None` if it kept the
    /// parent's identity.
    pub dropped_to_uid: Option<u32>,
    /// A new, empty network namespace: no network at all, loopback included.
    pub network_namespace: bool,
    /// The Landlock ABI version of the domain the program ran in; `None`: no Landlock.
    pub landlock_abi: Option<u32>,
    /// Writes confined to the work directory (and `/dev/null`) by Landlock.
    pub filesystem_writes_confined: bool,
    /// TCP `bind` and `connect` denied by Landlock (ABI 4+).
    pub tcp_denied: bool,
    /// Signals and abstract Unix sockets scoped to the sandbox by Landlock (ABI 6+).
    pub signals_scoped: bool,
    /// `PR_SET_NO_NEW_PRIVS`: set-uid binaries cannot raise privileges.
    pub no_new_privs: bool,
    /// The resource limits.
    pub limits: AppliedLimits,
    /// The wall-clock timeout.
    pub wall_timeout: Duration,
    /// Why something above is missing, one line each.
    pub notes: Vec<String>,
}

impl Isolation {
    /// A report that claims nothing, for a sandbox not yet probed.
    fn unknown(python: &Path, config: &SandboxConfig) -> Isolation {
        Isolation {
            python: python.to_path_buf(),
            dropped_to_uid: None,
            network_namespace: false,
            landlock_abi: None,
            filesystem_writes_confined: false,
            tcp_denied: false,
            signals_scoped: false,
            no_new_privs: false,
            limits: applied_limits(config, false),
            wall_timeout: config.timeout,
            notes: Vec::new(),
        }
    }

    /// The weakest of two reports, field by field (`dropped_to_uid` stays `Some` only if both
    /// dropped privileges; it then keeps `self`'s uid). Notes are merged without duplicates.
    pub fn weakest(&self, other: &Isolation) -> Isolation {
        let mut notes = self.notes.clone();
        for n in &other.notes {
            if !notes.contains(n) {
                notes.push(n.clone());
            }
        }
        Isolation {
            python: self.python.clone(),
            dropped_to_uid: self.dropped_to_uid.and(other.dropped_to_uid),
            network_namespace: self.network_namespace && other.network_namespace,
            landlock_abi: self.landlock_abi.zip(other.landlock_abi).map(|(a, b)| a.min(b)),
            filesystem_writes_confined: self.filesystem_writes_confined && other.filesystem_writes_confined,
            tcp_denied: self.tcp_denied && other.tcp_denied,
            signals_scoped: self.signals_scoped && other.signals_scoped,
            no_new_privs: self.no_new_privs && other.no_new_privs,
            limits: AppliedLimits {
                processes: self.limits.processes.and(other.limits.processes),
                ..self.limits.clone()
            },
            wall_timeout: self.wall_timeout.max(other.wall_timeout),
            notes,
        }
    }
}

/// The outcome of one program.
#[derive(Debug, Clone)]
pub struct SandboxResult {
    /// Passed, timed out or failed (with a reason).
    pub status: Status,
    /// The exit code, if the process exited (rather than being killed by a signal).
    pub exit_code: Option<i32>,
    /// The signal that killed the process, if any (`SIGKILL` after a timeout).
    pub signal: Option<i32>,
    /// Wall-clock time from start until the process ended or timed out.
    pub duration: Duration,
    /// User plus system CPU time of the process (and of its children it waited for).
    pub cpu_time: Duration,
    /// Captured stdout (lossy UTF-8), at most [`SandboxConfig::max_output_bytes`] bytes.
    pub stdout: String,
    /// Captured stderr (lossy UTF-8), at most [`SandboxConfig::max_output_bytes`] bytes.
    pub stderr: String,
    /// stdout was longer than the cap.
    pub stdout_truncated: bool,
    /// stderr was longer than the cap.
    pub stderr_truncated: bool,
    /// The isolation this run actually got.
    pub isolation: Isolation,
}

impl SandboxResult {
    /// `status == Passed`.
    pub fn passed(&self) -> bool {
        self.status == Status::Passed
    }
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
}

/// Runs the program file in fresh globals, as HumanEval's harness does, then tells the parent
/// on the control pipe (its descriptor is the last argument) that the program reached its end,
/// so that an early `os._exit(0)` is not a pass. `os.write` is bound before the program runs,
/// so the program replacing it does not matter.
const DRIVER: &str = "\
import os, sys
_end, _fd = os.write, int(sys.argv.pop())
with open(sys.argv[1], encoding='utf-8') as _f:
    _code = compile(_f.read(), sys.argv[1], 'exec')
exec(_code, {})
_end(_fd, b'\\0optbench-sandbox-end\\0')
";
const END_MARKER: &[u8] = b"\0optbench-sandbox-end\0";
/// The program's file name inside the work directory (as shown in tracebacks).
const PROGRAM_FILE: &str = "program.py";
/// The probe run by [`Sandbox::new`]; it prints the interpreter's version.
const PROBE: &str = "import sys\nprint('%d.%d.%d' % sys.version_info[:3])\n";
/// Bytes of stderr's end kept apart from the capped capture, to read the failure reason from.
const STDERR_TAIL_BYTES: usize = 4096;
/// After the program ended and its group was killed, how long to wait for the pipes to close.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

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
            return Err(CoreError::config(
                "no python3 found on PATH, in /usr/bin or in /usr/local/bin",
            ));
        }
        let mut failures = Vec::new();
        for python in candidates {
            // Filled in from the probe's result below.
            let mut sandbox = Sandbox {
                isolation: Isolation::unknown(&python, &config),
                config: config.clone(),
                python,
                python_version: String::new(),
            };
            match sandbox.run(PROBE) {
                Ok(r) if r.passed() => {
                    sandbox.python_version = r.stdout.trim().to_string();
                    sandbox.isolation = r.isolation;
                    return Ok(sandbox);
                }
                Ok(r) => failures.push(format!(
                    "{}: probe {} {}",
                    sandbox.python.display(),
                    r.status,
                    r.stderr.trim()
                )),
                Err(e) => failures.push(format!("{}: {e}", sandbox.python.display())),
            }
        }
        let who = if is_root() && config.uids.is_some() {
            " (programs run as an unprivileged uid, which must be able to read and execute the \
             interpreter and its standard library)"
        } else {
            ""
        };
        Err(CoreError::config(format!(
            "no Python interpreter runs in the sandbox{who}: {}",
            failures.join("; ")
        )))
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
        Ok(self.run_one(program, &never)?.expect("not cancelled"))
    }

    /// Runs the programs on `workers` threads (at least 1), each program in its own sandboxed
    /// process; results come back in input order. The first sandbox error stops the rest.
    pub fn run_programs<S: AsRef<str> + Sync>(&self, programs: &[S], workers: usize) -> Result<Vec<SandboxResult>> {
        let never = AtomicBool::new(false);
        Ok(self
            .run_programs_cancellable(programs, workers, &never)?
            .expect("not cancelled"))
    }

    /// [`Sandbox::run_programs`] that stops, killing the programs in flight, once `cancel` is
    /// set; it then returns `Ok(None)`.
    pub fn run_programs_cancellable<S: AsRef<str> + Sync>(
        &self,
        programs: &[S],
        workers: usize,
        cancel: &AtomicBool,
    ) -> Result<Option<Vec<SandboxResult>>> {
        let next = AtomicUsize::new(0);
        // Set on the first sandbox error so that the other workers stop too.
        let failed = AtomicBool::new(false);
        let stop = StopFlags {
            cancel,
            failed: &failed,
        };
        let workers = workers.clamp(1, programs.len().max(1));
        let mut slots: Vec<Option<Result<Option<SandboxResult>>>> = (0..programs.len()).map(|_| None).collect();
        let finished: Vec<Vec<(usize, Result<Option<SandboxResult>>)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        while !stop.is_set() {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(program) = programs.get(i) else { break };
                            let outcome = self.run_one(program.as_ref(), &stop);
                            if outcome.is_err() {
                                failed.store(true, Ordering::SeqCst);
                            }
                            done.push((i, outcome));
                        }
                        done
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("sandbox worker panicked"))
                .collect()
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
    fn run_one(&self, program: &str, stop: &dyn Stop) -> Result<Option<SandboxResult>> {
        let lease = match &self.config.uids {
            Some(range) if is_root() => Some(UidLease::acquire(range)?),
            _ => None,
        };
        let run_as = lease.as_ref().map(|l| l.uid);
        let workdir = WorkDir::create(run_as)?;
        let program_path = workdir.path.join(PROGRAM_FILE);
        write_program(&program_path, program, run_as).map_err(|e| io_err(&program_path, e))?;

        let mut notes = Vec::new();
        let ruleset = match landlock::Ruleset::for_workdir(&workdir.path) {
            Ok(r) => Some(r),
            Err(e) => {
                notes.push(format!("Landlock unavailable: {e}"));
                None
            }
        };
        let limits = applied_limits(&self.config, run_as.is_some());
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
            ruleset.as_ref().map(|r| r.fd.as_raw_fd()),
            ctl_write.as_raw_fd(),
        );

        let mut command = Command::new(&self.python);
        command
            .args([
                "-I",
                "-B",
                "-c",
                DRIVER,
                PROGRAM_FILE,
                &ctl_write.as_raw_fd().to_string(),
            ])
            .env_clear()
            .env("HOME", &workdir.path)
            .env("TMPDIR", &workdir.path)
            .current_dir(&workdir.path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: `ChildSetup::apply` makes only async-signal-safe system calls on data
        // prepared above (no allocation, no locks), as `pre_exec` requires after `fork`.
        unsafe {
            command.pre_exec(move || setup.apply());
        }
        let spawned = command.spawn();
        drop(ctl_write); // the child has its copy; ours must go for the pipe to end with it
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let detail = read_setup_failure(&ctl_read).unwrap_or_default();
                return Err(sandbox_err(
                    &format!("cannot start {}{detail}", self.python.display()),
                    e,
                ));
            }
        };
        drop(ruleset); // the child holds the Landlock domain now

        let stdout = OwnedFd::from(child.stdout.take().expect("piped stdout"));
        let stderr = OwnedFd::from(child.stderr.take().expect("piped stderr"));
        let pid = child.id() as libc::pid_t;
        let supervised = supervise(
            pid,
            [stdout, stderr, ctl_read],
            self.config.timeout,
            self.config.max_output_bytes,
            lease.as_ref(),
            stop,
        );
        drop(child); // already reaped by `supervise`; dropping a `Child` neither waits nor kills
        drop(workdir); // removed here, after every process that could write to it is gone
        drop(lease);
        let Some(s) = supervised else { return Ok(None) };

        let isolation = self.isolation_from_header(&s.control.head, run_as, limits, notes);
        let status = classify(&s, &self.config);
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

    /// The isolation report from the header the child wrote before `exec`.
    fn isolation_from_header(
        &self,
        head: &[u8],
        run_as: Option<u32>,
        limits: AppliedLimits,
        mut notes: Vec<String>,
    ) -> Isolation {
        let header = SetupHeader::parse(head);
        if header.is_none() {
            notes.push("the child's setup report is missing".into());
        }
        let h = header.unwrap_or_default();
        if let Some(errno) = h.netns_errno {
            notes.push(format!(
                "no network namespace: unshare failed: {}",
                io::Error::from_raw_os_error(errno)
            ));
        }
        if let Some(errno) = h.landlock_errno {
            notes.push(format!(
                "Landlock not applied: landlock_restrict_self failed: {}",
                io::Error::from_raw_os_error(errno)
            ));
        }
        let abi = if h.landlock { landlock::abi().ok() } else { None };
        Isolation {
            python: self.python.clone(),
            dropped_to_uid: run_as,
            network_namespace: h.netns,
            landlock_abi: abi,
            filesystem_writes_confined: abi.is_some(),
            tcp_denied: abi.is_some_and(|a| a >= 4),
            signals_scoped: abi.is_some_and(|a| a >= 6),
            no_new_privs: h.no_new_privs,
            limits,
            wall_timeout: self.config.timeout,
            notes,
        }
    }
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
    CoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn sandbox_err(what: &str, e: io::Error) -> CoreError {
    CoreError::Io {
        path: format!("sandbox: {what}"),
        source: e,
    }
}

/// The limits for `config`, clamped to the parent's hard limits (which an unprivileged parent
/// cannot raise). `RLIMIT_NPROC` only with a uid of its own.
fn applied_limits(config: &SandboxConfig, own_uid: bool) -> AppliedLimits {
    let clamp = |resource, want: u64| -> u64 {
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass.
        if unsafe { libc::getrlimit(resource, &mut current) } == 0 && !is_root() {
            want.min(current.rlim_max)
        } else {
            want
        }
    };
    AppliedLimits {
        cpu_time_s: clamp(libc::RLIMIT_CPU, config.cpu_time_s),
        address_space_bytes: clamp(libc::RLIMIT_AS, config.memory_bytes),
        processes: own_uid.then_some(config.max_processes),
        file_size_bytes: clamp(libc::RLIMIT_FSIZE, config.max_file_size_bytes),
        open_files: clamp(libc::RLIMIT_NOFILE, config.max_open_files),
        core_file_bytes: 0,
    }
}

/// `python` as given, or looked up on `PATH` when it is a bare name.
fn resolve_python(python: &Path) -> Result<PathBuf> {
    let found = if python.components().count() == 1 && !python.is_absolute() {
        find_on_path(python.as_os_str())
    } else {
        python.is_file().then(|| python.to_path_buf())
    };
    found.ok_or_else(|| CoreError::config(format!("python interpreter {} not found", python.display())))
}

fn find_on_path(name: &OsStr) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `python3` on `PATH` (through shims to the real executable), then the system interpreters.
/// Remembered per value of `PATH` for the life of the process: asking a pyenv shim for its
/// interpreter runs several shell scripts (~0.2 s), which each batch of programs would pay.
fn default_python_candidates() -> Vec<PathBuf> {
    static CACHE: std::sync::Mutex<Option<(Option<std::ffi::OsString>, Vec<PathBuf>)>> = std::sync::Mutex::new(None);
    let path = std::env::var_os("PATH");
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((cached_path, candidates)) = cache.as_ref() {
        if *cached_path == path && candidates.iter().all(|c| c.is_file()) {
            return candidates.clone();
        }
    }
    let candidates = find_default_python_candidates();
    *cache = Some((path, candidates.clone()));
    candidates
}

fn find_default_python_candidates() -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(shim_or_real) = find_on_path(OsStr::new("python3")) {
        // pyenv-style shims are scripts that need the parent's environment; ask the
        // interpreter behind one for its real path.
        let real = Command::new(&shim_or_real)
            .args(["-c", "import sys; print(sys.executable)"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .filter(|p| p.is_file());
        candidates.push(real.unwrap_or(shim_or_real));
    }
    for system in ["/usr/bin/python3", "/usr/local/bin/python3"] {
        let p = PathBuf::from(system);
        let same = |c: &PathBuf| fs::canonicalize(c).ok() == fs::canonicalize(&p).ok();
        if p.is_file() && !candidates.iter().any(same) {
            candidates.push(p);
        }
    }
    candidates
}

fn write_program(path: &Path, program: &str, owner: Option<u32>) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(program.as_bytes())?;
    if let Some(uid) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(uid))?;
    }
    Ok(())
}

/// A fresh `optbench-sandbox-XXXXXX` directory under the temporary directory, owned by the
/// sandbox uid, removed on drop (permissions the program changed are fixed first).
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create(owner: Option<u32>) -> Result<WorkDir> {
        let template = std::env::temp_dir().join("optbench-sandbox-XXXXXX");
        let mut bytes = CString::new(template.as_os_str().as_bytes())
            .map_err(|_| CoreError::config("the temporary directory's path contains a NUL byte"))?
            .into_bytes_with_nul();
        // SAFETY: `bytes` is a NUL-terminated template that mkdtemp fills in place.
        let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
        if made.is_null() {
            return Err(io_err(&template, io::Error::last_os_error()));
        }
        bytes.pop(); // the NUL
        let dir = WorkDir {
            path: PathBuf::from(OsStr::from_bytes(&bytes)),
        };
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&dir.path, Some(uid), Some(uid)).map_err(|e| io_err(&dir.path, e))?;
        }
        Ok(dir)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if fs::remove_dir_all(&self.path).is_err() {
            // A program may have made directories unreadable or unwritable; root does not
            // care, an unprivileged parent does.
            make_removable(&self.path);
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn make_removable(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                make_removable(&entry.path());
            }
        }
    }
}

/// A uid from [`SandboxConfig::uids`] held by this run alone: an exclusive `flock` on
/// `<lock dir>/uid-N.lock` (so other processes using the same range skip it), released on
/// drop. The lock file's one byte says whether the last holder killed everything of the uid
/// at its end ("c", clean); if not (a crashed holder), the lease starts by doing so, so
/// leftovers cannot count against `RLIMIT_NPROC`.
struct UidLease {
    uid: u32,
    lock: File,
}

impl UidLease {
    /// Kills everything still running under the uid and marks the uid clean.
    fn kill_leftovers(&self) {
        kill_all_processes_of(self.uid);
        let _ = self.lock.write_at(b"c", 0);
    }

    fn acquire(range: &Range<u32>) -> Result<UidLease> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = lock_dir()?;
        let len = range.end - range.start;
        // Start at different places in different processes to avoid probing held locks.
        let offset = std::process::id().wrapping_mul(7919);
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            for _ in 0..len {
                let uid = range.start + NEXT.fetch_add(1, Ordering::Relaxed).wrapping_add(offset) % len;
                let path = dir.join(format!("uid-{uid}.lock"));
                let file = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&path)
                    .map_err(|e| io_err(&path, e))?;
                // SAFETY: flock on a descriptor we own.
                if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                    let mut state = [0u8; 1];
                    if file.read_at(&mut state, 0).ok() != Some(1) || state != *b"c" {
                        kill_all_processes_of(uid);
                    }
                    file.write_at(b"d", 0).map_err(|e| io_err(&path, e))?;
                    return Ok(UidLease { uid, lock: file });
                }
            }
            if Instant::now() > give_up {
                return Err(CoreError::config(format!(
                    "all sandbox uids {range:?} are in use; give a larger range"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `/run/optbench-sandbox` (or `<tmp>/optbench-sandbox-locks`), created 0700 and checked to be
/// root's own, so no other user can plant or hold the lock files.
fn lock_dir() -> Result<&'static Path> {
    static DIR: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = if Path::new("/run").is_dir() {
            PathBuf::from("/run/optbench-sandbox")
        } else {
            std::env::temp_dir().join("optbench-sandbox-locks")
        };
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        }
        let meta = fs::symlink_metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            return Err(format!(
                "{} must be a directory owned by root and writable by root alone",
                dir.display()
            ));
        }
        Ok(dir)
    });
    dir.as_deref()
        .map_err(|e| CoreError::config(format!("sandbox uid locks: {e}")))
}

/// Sends `SIGKILL` to every process of `uid`, from a helper process that becomes `uid` and
/// calls `kill(-1)`: the kernel then signals them all at once, which also catches processes
/// that left the sandbox's process group (`setsid`) and fork bombs still forking.
///
/// The helper shares our memory and we wait while it runs (`CLONE_VM | CLONE_VFORK`, as
/// `posix_spawn` does): a plain `fork` would copy the page tables of a large host process
/// (a Python interpreter with its libraries), which costs milliseconds per run.
fn kill_all_processes_of(uid: u32) {
    /// Runs in the helper, on its own stack: raw system calls only (glibc's `setuid` would
    /// try to change the credentials of every thread it believes shares its memory).
    extern "C" fn helper(uid: *mut libc::c_void) -> libc::c_int {
        let uid = uid as usize as libc::c_long;
        // SAFETY: plain system calls, no shared state touched.
        unsafe {
            if libc::syscall(libc::SYS_setgid, uid) == 0 && libc::syscall(libc::SYS_setuid, uid) == 0 {
                libc::syscall(libc::SYS_kill, -1 as libc::c_long, libc::SIGKILL as libc::c_long);
            }
        }
        0
    }
    let mut stack = vec![0u8; 64 << 10];
    // SAFETY: the helper runs on `stack` (top, 16-byte aligned), which outlives it because
    // CLONE_VFORK suspends this thread until the helper has exited.
    unsafe {
        let top = stack.as_mut_ptr().add(stack.len());
        let top = top.sub(top as usize % 16);
        let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
        let pid = libc::clone(helper, top.cast(), flags, uid as usize as *mut libc::c_void);
        if pid > 0 {
            while libc::waitpid(pid, std::ptr::null_mut(), 0) < 0 && errno() == libc::EINTR {}
        }
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A close-on-exec pipe whose descriptors are above 2 (so that the child's stdio `dup2`s can
/// never clobber them, even if the parent runs with stdin closed): `(read, write)`.
fn pipe_above_stdio() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills `fds` with two new descriptors that we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((fd_above_stdio(r)?, fd_above_stdio(w)?))
}

fn fd_above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor that we own.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// The steps of the child's setup, as reported on the control pipe when one fails.
const SETUP_STEPS: [&str; 6] = ["setsid", "setrlimit", "setgroups", "setgid", "setuid", "fcntl"];

/// Everything the child does between `fork` and `exec`, prepared before the fork.
#[derive(Clone, Copy)]
struct ChildSetup {
    rlimits: [(RlimitResource, libc::rlim_t, libc::rlim_t); 6],
    rlimit_count: usize,
    run_as: Option<u32>,
    /// Not root: a network namespace needs a user namespace around it.
    new_user_namespace: bool,
    landlock_fd: Option<RawFd>,
    control_fd: RawFd,
}

#[cfg(target_env = "gnu")]
type RlimitResource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type RlimitResource = libc::c_int;

impl ChildSetup {
    fn new(limits: &AppliedLimits, run_as: Option<u32>, landlock_fd: Option<RawFd>, control_fd: RawFd) -> ChildSetup {
        let mut rlimits = [(libc::RLIMIT_CORE, 0, 0); 6];
        let mut n = 0;
        let mut push = |resource, soft: u64, hard: u64| {
            rlimits[n] = (resource, soft as libc::rlim_t, hard as libc::rlim_t);
            n += 1;
        };
        // SIGXCPU at the soft limit (a clear reason), SIGKILL one second later if ignored.
        push(libc::RLIMIT_CPU, limits.cpu_time_s, limits.cpu_time_s.saturating_add(1));
        push(libc::RLIMIT_AS, limits.address_space_bytes, limits.address_space_bytes);
        push(libc::RLIMIT_FSIZE, limits.file_size_bytes, limits.file_size_bytes);
        push(libc::RLIMIT_NOFILE, limits.open_files, limits.open_files);
        push(libc::RLIMIT_CORE, 0, 0);
        if let Some(nproc) = limits.processes {
            push(libc::RLIMIT_NPROC, nproc, nproc);
        }
        ChildSetup {
            rlimits,
            rlimit_count: n,
            run_as,
            new_user_namespace: !is_root(),
            landlock_fd,
            control_fd,
        }
    }

    /// Runs in the child after `fork`: only async-signal-safe system calls. Mandatory steps
    /// (session, limits, uid) fail the spawn; best-effort ones (network namespace, Landlock)
    /// are reported in the header written to the control pipe.
    fn apply(&self) -> io::Result<()> {
        // SAFETY: plain system calls on values prepared before the fork.
        unsafe {
            if libc::setsid() < 0 {
                return self.fail(0);
            }
            let ns_flags = if self.new_user_namespace {
                libc::CLONE_NEWUSER | libc::CLONE_NEWNET
            } else {
                libc::CLONE_NEWNET
            };
            let netns_errno = if libc::unshare(ns_flags) == 0 { 0 } else { errno() };
            for &(resource, soft, hard) in &self.rlimits[..self.rlimit_count] {
                let limit = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(resource, &limit) != 0 {
                    return self.fail(1);
                }
            }
            if let Some(id) = self.run_as {
                if libc::setgroups(0, std::ptr::null()) != 0 {
                    return self.fail(2);
                }
                if libc::setgid(id) != 0 {
                    return self.fail(3);
                }
                if libc::setuid(id) != 0 {
                    return self.fail(4);
                }
            }
            // Changing credentials clears the parent-death signal, so set it afterwards.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
            let no_new_privs = libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) == 0;
            let landlock_errno = match self.landlock_fd {
                Some(fd) if no_new_privs => {
                    if libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) == 0 {
                        0
                    } else {
                        errno()
                    }
                }
                Some(_) => libc::EPERM,
                None => -1,
            };
            let header = SetupHeader::encode(netns_errno, no_new_privs, landlock_errno);
            libc::write(self.control_fd, header.as_ptr().cast(), header.len());
            // Descriptors the parent leaked without close-on-exec must not reach the program
            // (marked close-on-exec rather than closed: std reports exec errors through one);
            // the control pipe alone stays open, at the number the driver gets as argument.
            let ctl = self.control_fd as libc::c_uint;
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                ctl - 1,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            libc::syscall(
                libc::SYS_close_range,
                ctl + 1,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if libc::fcntl(self.control_fd, libc::F_SETFD, 0) != 0 {
                return self.fail(5);
            }
        }
        Ok(())
    }

    /// Reports the failed step on the control pipe and fails the spawn with errno.
    fn fail(&self, step: u8) -> io::Result<()> {
        let e = errno();
        let report = [b'E', step, e.clamp(0, 255) as u8];
        // SAFETY: write of a stack buffer to a descriptor we hold.
        unsafe { libc::write(self.control_fd, report.as_ptr().cast(), report.len()) };
        Err(io::Error::from_raw_os_error(e))
    }
}

/// The fixed-size header the child writes before `exec`: `b'O'`, then the network namespace's
/// errno (0: created), whether `no_new_privs` is set, and the Landlock errno (0: applied,
/// 255: not attempted). Written before the program exists, so the program cannot forge it.
#[derive(Debug, Default)]
struct SetupHeader {
    netns: bool,
    netns_errno: Option<i32>,
    no_new_privs: bool,
    landlock: bool,
    landlock_errno: Option<i32>,
}

const HEADER_LEN: usize = 4;

impl SetupHeader {
    fn encode(netns_errno: i32, no_new_privs: bool, landlock_errno: i32) -> [u8; HEADER_LEN] {
        let byte = |e: i32| if e < 0 { 255 } else { e.min(254) as u8 };
        [b'O', byte(netns_errno), no_new_privs as u8, byte(landlock_errno)]
    }

    fn parse(head: &[u8]) -> Option<SetupHeader> {
        let h: &[u8; HEADER_LEN] = head.get(..HEADER_LEN)?.try_into().ok()?;
        if h[0] != b'O' {
            return None;
        }
        let errno = |b: u8| (b != 0 && b != 255).then_some(b as i32);
        Some(SetupHeader {
            netns: h[1] == 0,
            netns_errno: errno(h[1]),
            no_new_privs: h[2] == 1,
            landlock: h[3] == 0,
            landlock_errno: errno(h[3]),
        })
    }
}

/// After a failed spawn: " (<step> failed)" from the child's report, if it wrote one.
fn read_setup_failure(control: &OwnedFd) -> Option<String> {
    let mut buf = [0u8; 64];
    set_nonblocking(control.as_raw_fd());
    // SAFETY: read into a stack buffer from a descriptor we own.
    let n = unsafe { libc::read(control.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    let got = buf.get(..usize::try_from(n).ok()?)?;
    let at = got.iter().position(|&b| b == b'E')?;
    let step = SETUP_STEPS.get(*got.get(at + 1)? as usize)?;
    Some(format!(" ({step} failed in the child)"))
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl flag changes on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// Output kept from one pipe: the first `cap` bytes, the last `tail_cap` bytes, and the total.
struct Capture {
    head: Vec<u8>,
    cap: usize,
    tail: Vec<u8>,
    tail_cap: usize,
    total: u64,
}

impl Capture {
    fn new(cap: usize, tail_cap: usize) -> Capture {
        Capture {
            head: Vec::new(),
            cap,
            tail: Vec::new(),
            tail_cap,
            total: 0,
        }
    }

    fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        let room = self.cap.saturating_sub(self.head.len());
        self.head.extend_from_slice(&data[..room.min(data.len())]);
        if self.tail_cap > 0 {
            let keep = &data[data.len().saturating_sub(self.tail_cap)..];
            self.tail.extend_from_slice(keep);
            if self.tail.len() > 2 * self.tail_cap {
                self.tail.drain(..self.tail.len() - self.tail_cap);
            }
        }
    }

    fn truncated(&self) -> bool {
        self.total > self.head.len() as u64
    }

    fn tail(&self) -> &[u8] {
        &self.tail[self.tail.len().saturating_sub(self.tail_cap)..]
    }
}

/// What [`supervise`] saw.
struct Supervised {
    timed_out: bool,
    /// The exit status could not be collected (the process was reaped elsewhere).
    status_lost: bool,
    exit_code: Option<i32>,
    signal: Option<i32>,
    duration: Duration,
    cpu_time: Duration,
    stdout: Capture,
    stderr: Capture,
    control: Capture,
}

/// Reads the pipes while waiting for the program to end, the timeout or `stop`; then kills the
/// process group (and, with a uid of its own, everything of that uid), drains the pipes and
/// reaps the process. `None` when stopped.
fn supervise(
    pid: libc::pid_t,
    fds: [OwnedFd; 3],
    timeout: Duration,
    max_output: usize,
    lease: Option<&UidLease>,
    stop: &dyn Stop,
) -> Option<Supervised> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut captures = [
        Capture::new(max_output, 0),
        Capture::new(max_output, STDERR_TAIL_BYTES),
        Capture::new(HEADER_LEN, END_MARKER.len()),
    ];
    let mut open: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    for &fd in &open {
        set_nonblocking(fd);
    }
    // A pidfd wakes poll the moment the program exits; without one, poll in short ticks.
    // SAFETY: pidfd_open returns a new descriptor that we own, or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) });
    let tick = if pidfd.is_some() {
        Duration::from_millis(50)
    } else {
        Duration::from_millis(5)
    };
    let mut buf = vec![0u8; 64 << 10];

    let mut timed_out = false;
    let mut stopped = false;
    loop {
        if leader_exited(pid) {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            break;
        }
        if stop.is_set() {
            stopped = true;
            break;
        }
        let wait = (deadline - now).min(tick);
        poll_and_read(
            &mut open,
            &mut captures,
            pidfd.as_ref().map(|f| f.as_raw_fd()),
            wait,
            &mut buf,
        );
    }
    let duration = start.elapsed();

    // The leader is alive or a zombie, so its pgid cannot have been reused yet.
    // SAFETY: signalling the process group we created.
    unsafe { libc::killpg(pid, libc::SIGKILL) };
    if let Some(lease) = lease {
        lease.kill_leftovers();
    }
    let drain_until = Instant::now() + DRAIN_GRACE;
    while open.iter().any(|&fd| fd >= 0) && Instant::now() < drain_until {
        poll_and_read(&mut open, &mut captures, None, Duration::from_millis(20), &mut buf);
    }

    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it and `status`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = loop {
        match unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } {
            r if r < 0 && errno() == libc::EINTR => continue,
            r => break r == pid,
        }
    };
    drop(fds);
    if stopped {
        return None;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let [stdout, stderr, control] = captures;
    Some(Supervised {
        timed_out,
        status_lost: !reaped,
        exit_code: (reaped && libc::WIFEXITED(status)).then(|| libc::WEXITSTATUS(status)),
        signal: (reaped && libc::WIFSIGNALED(status)).then(|| libc::WTERMSIG(status)),
        duration,
        cpu_time: tv(usage.ru_utime) + tv(usage.ru_stime),
        stdout,
        stderr,
        control,
    })
}

/// Whether the process has exited, without reaping it (so its pid and pgid stay reserved).
/// Also true if it is no longer our child to wait for (ECHILD: something else in this process,
/// such as a `waitpid(-1)` SIGCHLD handler, reaped it).
fn leader_exited(pid: libc::pid_t) -> bool {
    // SAFETY: waitid with WNOWAIT only inspects our child.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        (r == 0 && info.si_pid() != 0) || (r < 0 && errno() == libc::ECHILD)
    }
}

/// Polls the open pipes (and the pidfd) for up to `wait`, then reads what is there, at most
/// 1 MiB per pipe so that a program printing without end cannot starve the timeout check.
/// A pipe at end of file is marked closed (-1).
fn poll_and_read(
    open: &mut [RawFd],
    captures: &mut [Capture; 3],
    pidfd: Option<RawFd>,
    wait: Duration,
    buf: &mut [u8],
) {
    let mut pfds: Vec<libc::pollfd> = open
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    pfds.push(libc::pollfd {
        fd: pidfd.unwrap_or(-1),
        events: libc::POLLIN,
        revents: 0,
    });
    let ms = wait.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    // SAFETY: poll over a vector of pollfd structs we own.
    let ready = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if ready <= 0 {
        return;
    }
    for (i, pfd) in pfds.iter().take(open.len()).enumerate() {
        if pfd.revents == 0 || open[i] < 0 {
            continue;
        }
        let mut budget = 1 << 20;
        while budget > 0 {
            // SAFETY: read into our buffer from a descriptor we own.
            let n = unsafe { libc::read(open[i], buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                captures[i].push(&buf[..n as usize]);
                budget -= (n as usize).min(budget);
            } else if n == 0 {
                open[i] = -1; // end of file
                break;
            } else if errno() == libc::EINTR {
                continue;
            } else {
                if errno() != libc::EAGAIN {
                    open[i] = -1;
                }
                break;
            }
        }
    }
}

/// The status of a finished run.
fn classify(s: &Supervised, config: &SandboxConfig) -> Status {
    if s.timed_out {
        return Status::TimedOut;
    }
    if s.status_lost {
        return Status::Failed("exit status lost: the process was reaped outside the sandbox".into());
    }
    if let Some(signal) = s.signal {
        let cpu_limit_hit = s.cpu_time >= Duration::from_secs(config.cpu_time_s);
        return Status::Failed(match signal {
            libc::SIGXCPU => "CPU time limit (SIGXCPU)".to_string(),
            libc::SIGKILL if cpu_limit_hit => "CPU time limit (SIGKILL)".to_string(),
            _ => format!("killed by signal {signal} ({})", signal_name(signal)),
        });
    }
    let code = s.exit_code.unwrap_or(-1);
    let finished = s.control.total > HEADER_LEN as u64 && s.control.tail().ends_with(END_MARKER);
    if code == 0 && finished {
        return Status::Passed;
    }
    if code == 0 {
        return Status::Failed("exited with code 0 before the end of the program".into());
    }
    let last = last_line(s.stderr.tail());
    Status::Failed(if last.starts_with("MemoryError") {
        format!("memory limit: {last}")
    } else if last.is_empty() {
        format!("exit code {code}")
    } else {
        format!("exit code {code}: {last}")
    })
}

/// The last non-empty line of `text`, trimmed and cut to 200 characters.
fn last_line(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    match line.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line.to_string(),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => "unknown signal",
    }
}

/// Landlock through its raw system calls (the kernel ABI is small and stable).
mod landlock {
    use super::*;

    const CREATE_RULESET_VERSION: u32 = 1 << 0;
    const RULE_PATH_BENEATH: libc::c_int = 1;

    // Filesystem rights (ABI 1 unless noted).
    const WRITE_FILE: u64 = 1 << 1;
    const REMOVE_DIR: u64 = 1 << 4;
    const REMOVE_FILE: u64 = 1 << 5;
    const MAKE_CHAR: u64 = 1 << 6;
    const MAKE_DIR: u64 = 1 << 7;
    const MAKE_REG: u64 = 1 << 8;
    const MAKE_SOCK: u64 = 1 << 9;
    const MAKE_FIFO: u64 = 1 << 10;
    const MAKE_BLOCK: u64 = 1 << 11;
    const MAKE_SYM: u64 = 1 << 12;
    const REFER: u64 = 1 << 13; // ABI 2
    const TRUNCATE: u64 = 1 << 14; // ABI 3
                                   // Network rights (ABI 4).
    const BIND_TCP: u64 = 1 << 0;
    const CONNECT_TCP: u64 = 1 << 1;
    // Scopes (ABI 6).
    const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
    const SCOPE_SIGNAL: u64 = 1 << 1;

    #[repr(C)]
    struct RulesetAttr {
        handled_access_fs: u64,
        handled_access_net: u64,
        scoped: u64,
    }

    #[repr(C, packed)]
    struct PathBeneathAttr {
        allowed_access: u64,
        parent_fd: i32,
    }

    /// The kernel's Landlock ABI version, or why there is none.
    pub(super) fn abi() -> std::result::Result<u32, String> {
        static ABI: OnceLock<std::result::Result<u32, String>> = OnceLock::new();
        ABI.get_or_init(|| {
            // SAFETY: the version query takes no attribute.
            let v = unsafe {
                libc::syscall(
                    libc::SYS_landlock_create_ruleset,
                    std::ptr::null::<RulesetAttr>(),
                    0usize,
                    CREATE_RULESET_VERSION,
                )
            };
            if v > 0 {
                Ok(v as u32)
            } else {
                Err(format!("the kernel has no Landlock ({})", io::Error::last_os_error()))
            }
        })
        .clone()
    }

    /// A ruleset, ready for `landlock_restrict_self` in the child.
    pub(super) struct Ruleset {
        pub(super) fd: OwnedFd,
    }

    impl Ruleset {
        /// Denies every write outside `workdir` (writing `/dev/null` stays allowed), and by
        /// ABI: TCP bind/connect (4+), signals and abstract Unix sockets outside the domain (6+).
        /// Reading and executing are left to the ordinary file permissions.
        pub(super) fn for_workdir(workdir: &Path) -> std::result::Result<Ruleset, String> {
            let abi = abi()?;
            let mut writes = WRITE_FILE
                | REMOVE_DIR
                | REMOVE_FILE
                | MAKE_CHAR
                | MAKE_DIR
                | MAKE_REG
                | MAKE_SOCK
                | MAKE_FIFO
                | MAKE_BLOCK
                | MAKE_SYM;
            if abi >= 2 {
                writes |= REFER;
            }
            if abi >= 3 {
                writes |= TRUNCATE;
            }
            let attr = RulesetAttr {
                handled_access_fs: writes,
                handled_access_net: if abi >= 4 { BIND_TCP | CONNECT_TCP } else { 0 },
                scoped: if abi >= 6 {
                    SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
                } else {
                    0
                },
            };
            // Older kernels read only the fields they know; the size tells them which.
            let size = match abi {
                1..=3 => 8,
                4 | 5 => 16,
                _ => std::mem::size_of::<RulesetAttr>(),
            };
            // SAFETY: a valid attribute of `size` bytes; the result is a new descriptor or -1.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_landlock_create_ruleset,
                    &attr as *const RulesetAttr,
                    size,
                    0u32,
                )
            };
            if fd < 0 {
                return Err(format!("landlock_create_ruleset: {}", io::Error::last_os_error()));
            }
            let ruleset = Ruleset {
                fd: fd_above_stdio(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }).map_err(|e| e.to_string())?,
            };
            ruleset.allow(workdir, writes)?;
            ruleset.allow(Path::new("/dev/null"), writes & (WRITE_FILE | TRUNCATE))?;
            Ok(ruleset)
        }

        fn allow(&self, path: &Path, access: u64) -> std::result::Result<(), String> {
            let file = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let rule = PathBeneathAttr {
                allowed_access: access,
                parent_fd: file.as_raw_fd(),
            };
            // SAFETY: a valid rule for a ruleset descriptor we own.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_landlock_add_rule,
                    self.fd.as_raw_fd(),
                    RULE_PATH_BENEATH,
                    &rule as *const PathBeneathAttr,
                    0u32,
                )
            };
            if r != 0 {
                return Err(format!(
                    "landlock_add_rule({}): {}",
                    path.display(),
                    io::Error::last_os_error()
                ));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humaneval_program_is_the_reference_formula() {
        assert_eq!(
            humaneval_program(
                "def f():\n",
                "    return 1\n",
                "def check(c):\n    assert c() == 1\n",
                "f"
            ),
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
    fn capture_keeps_head_and_tail() {
        let mut c = Capture::new(4, 3);
        c.push(b"abcdef");
        c.push(b"gh");
        assert_eq!(c.head, b"abcd");
        assert_eq!(c.tail(), b"fgh");
        assert!(c.truncated());
        assert_eq!(
            last_line(b"Traceback\n  x\nAssertionError: no\n\n"),
            "AssertionError: no"
        );
    }

    #[test]
    fn setup_header_round_trip() {
        let h = SetupHeader::parse(&SetupHeader::encode(0, true, 0)).unwrap();
        assert!(h.netns && h.no_new_privs && h.landlock && h.netns_errno.is_none());
        let h = SetupHeader::parse(&SetupHeader::encode(libc::EPERM, false, -1)).unwrap();
        assert!(!h.netns && h.netns_errno == Some(libc::EPERM) && !h.landlock && h.landlock_errno.is_none());
        assert!(SetupHeader::parse(b"E\x01\x01\x00").is_none());
    }

    #[test]
    fn bad_config_is_rejected() {
        let c = SandboxConfig {
            timeout: Duration::ZERO,
            ..SandboxConfig::default()
        };
        assert!(matches!(Sandbox::new(c), Err(CoreError::Config(_))));
        let c = SandboxConfig {
            python: Some("/nonexistent/python3".into()),
            ..SandboxConfig::default()
        };
        assert!(matches!(Sandbox::new(c), Err(CoreError::Config(_))));
    }
}
