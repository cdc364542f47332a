//! What a run reports: its status, the isolation it got and its outcome.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::config::applied_limits;
use super::{AppliedLimits, SandboxConfig};

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
    /// A new IPC namespace: SysV IPC objects and POSIX message queues die with the run.
    pub ipc_namespace: bool,
    /// A new PID namespace whose first process is the program: everything it starts dies
    /// with it, and with the host.
    pub pid_namespace: bool,
    /// `/proc` of the PID namespace: no other process, nor its command line, is visible.
    pub private_proc: bool,
    /// The total disk cap: the work directory is a tmpfs of this many bytes, gone with the
    /// run. `None`: a directory of the host's temporary folder, capped per file only.
    pub disk_bytes: Option<u64>,
    /// `/run` is an empty read-only tmpfs (the host's sockets there are out of sight).
    pub host_run_hidden: bool,
    /// The run's cgroup: "v2" or "v1"; `None`: limits per process only.
    pub cgroup: Option<String>,
    /// The memory and process limits hold for the whole program (a cgroup), not per process.
    pub memory_limit_whole_program: bool,
    /// The seccomp filter (no namespaces, keyrings, io_uring, BPF, ptrace, mounts, Unix or
    /// other non-IP sockets) is installed.
    pub seccomp: bool,
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
    /// The program's process was forked from its worker's fork server (a pre-started
    /// interpreter) rather than started as a fresh interpreter; its setup is the same.
    pub fork_server: bool,
    /// Why something above is missing, one line each.
    pub notes: Vec<String>,
}

impl Isolation {
    /// A report that claims nothing, for a sandbox not yet probed.
    pub(super) fn unknown(python: &Path, config: &SandboxConfig) -> Isolation {
        Isolation {
            python: python.to_path_buf(),
            dropped_to_uid: None,
            network_namespace: false,
            ipc_namespace: false,
            pid_namespace: false,
            private_proc: false,
            disk_bytes: None,
            host_run_hidden: false,
            cgroup: None,
            memory_limit_whole_program: false,
            seccomp: false,
            landlock_abi: None,
            filesystem_writes_confined: false,
            tcp_denied: false,
            signals_scoped: false,
            no_new_privs: false,
            limits: applied_limits(config, false),
            wall_timeout: config.timeout,
            fork_server: false,
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
            ipc_namespace: self.ipc_namespace && other.ipc_namespace,
            pid_namespace: self.pid_namespace && other.pid_namespace,
            private_proc: self.private_proc && other.private_proc,
            disk_bytes: self.disk_bytes.zip(other.disk_bytes).map(|(a, b)| a.max(b)),
            host_run_hidden: self.host_run_hidden && other.host_run_hidden,
            cgroup: if self.cgroup == other.cgroup { self.cgroup.clone() } else { None },
            memory_limit_whole_program: self.memory_limit_whole_program && other.memory_limit_whole_program,
            seccomp: self.seccomp && other.seccomp,
            landlock_abi: self.landlock_abi.zip(other.landlock_abi).map(|(a, b)| a.min(b)),
            filesystem_writes_confined: self.filesystem_writes_confined && other.filesystem_writes_confined,
            tcp_denied: self.tcp_denied && other.tcp_denied,
            signals_scoped: self.signals_scoped && other.signals_scoped,
            no_new_privs: self.no_new_privs && other.no_new_privs,
            limits: AppliedLimits {
                processes: self.limits.processes.and(other.limits.processes),
                program_memory_bytes: self.limits.program_memory_bytes.and(other.limits.program_memory_bytes),
                program_processes: self.limits.program_processes.and(other.limits.program_processes),
                ..self.limits.clone()
            },
            wall_timeout: self.wall_timeout.max(other.wall_timeout),
            fork_server: self.fork_server && other.fork_server,
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
