//! The sandbox's settings and the resource limits derived from them.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use super::is_root;
use crate::{CoreError, Result};

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
    /// `RLIMIT_AS`: address space in bytes, per process. Default 1 GiB. Where the run has a
    /// cgroup, also the memory of the whole program (plus `max_disk_bytes`, see there).
    pub memory_bytes: u64,
    /// `RLIMIT_NPROC`: processes and threads of the sandbox uid. Applied only when the parent
    /// is root and programs run under a uid of their own (the limit counts every process of a
    /// uid, so it would be meaningless, or harmful, on a shared one). Also the run's cgroup
    /// `pids.max` where it has one. Default 64.
    pub max_processes: u64,
    /// `RLIMIT_FSIZE`: the largest file a program may write, in bytes. Default 16 MiB.
    pub max_file_size_bytes: u64,
    /// `RLIMIT_NOFILE`: open file descriptors. Default 64.
    pub max_open_files: u64,
    /// The total size of the work directory (a tmpfs of its own, where the run has a mount
    /// namespace: as root). Default 256 MiB. Its pages count as memory in the run's cgroup,
    /// whose memory limit is `memory_bytes + max_disk_bytes`.
    pub max_disk_bytes: u64,
    /// The most files and directories in the work directory (its tmpfs's inodes). Default 10000.
    pub max_disk_files: u64,
    /// Bytes of stdout and of stderr kept (each); the rest is read and discarded. Default 64 KiB.
    pub max_output_bytes: usize,
    /// When the parent is root, each run leases one uid of this range for itself (gid = uid),
    /// locked across processes. `None` keeps root's identity: `RLIMIT_NPROC` is then not
    /// applied and the sandbox is much weaker. Default `60000..61000` (the range the `isolate`
    /// sandbox uses; these ids need no `/etc/passwd` entry).
    pub uids: Option<Range<u32>>,
    /// Run programs through a fork server per worker (see the module documentation): a
    /// pre-started interpreter that forks one child per program, which gets the same setup a
    /// freshly started interpreter gets. Where the fork server cannot start or run the probe,
    /// programs start a fresh interpreter each and the isolation report says why. Default
    /// true; false starts a fresh interpreter per program.
    pub fork_server: bool,
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
            max_disk_bytes: 256 << 20,
            max_disk_files: 10_000,
            max_output_bytes: 64 << 10,
            uids: Some(60000..61000),
            fork_server: true,
        }
    }
}

impl SandboxConfig {
    /// Checks the values; the error says what to fix.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(CoreError::config(msg));
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(24 * 3600) {
            return bad(format!("sandbox timeout must be in (0 s, 24 h], got {:?}", self.timeout));
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
        if self.max_disk_bytes < 1 << 20 || self.max_disk_files < 16 {
            return bad(format!(
                "sandbox max_disk_bytes must be at least 1 MiB and max_disk_files at least 16, got {} and {}",
                self.max_disk_bytes, self.max_disk_files
            ));
        }
        if let Some(uids) = &self.uids {
            if uids.is_empty() || uids.start == 0 {
                return bad(format!("sandbox uids must be a non-empty range of non-root uids, got {uids:?}"));
            }
        }
        Ok(())
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
    /// The memory of the whole program (all its processes, its tmpfs work directory included):
    /// the run's cgroup's limit; `None` without a cgroup.
    pub program_memory_bytes: Option<u64>,
    /// The processes and threads of the whole program: the run's cgroup's `pids.max`.
    pub program_processes: Option<u64>,
}

/// The limits for `config`, clamped to the parent's hard limits (which an unprivileged parent
/// cannot raise). `RLIMIT_NPROC` only with a uid of its own.
pub(super) fn applied_limits(config: &SandboxConfig, own_uid: bool) -> AppliedLimits {
    let clamp = |resource, want: u64| -> u64 {
        let mut current = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
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
        program_memory_bytes: None,
        program_processes: None,
    }
}
