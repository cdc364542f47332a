//! A control group per run, so that memory and process limits hold for the whole program
//! (every process it forks) rather than per process.
//!
//! cgroup v2 where this process's cgroup can delegate the `memory` and `pids` controllers to a
//! child; otherwise the v1 `memory` and `pids` hierarchies where they are mounted (as on hosts
//! that still run the hybrid layout). The run's cgroup is made under this process's own cgroup,
//! so that it stays inside whatever limits the host put on us. The child joins it before it
//! forks anything (by writing `0`, "myself", to descriptors opened here), and it is removed
//! after the run.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where the run cgroups of this process are made: v2 or v1.
#[derive(Debug, Clone)]
enum Layout {
    /// The cgroup2 directory of this process, where children with `memory` and `pids` can be made.
    V2(PathBuf),
    /// The v1 `memory` and `pids` directories of this process.
    V1 { memory: PathBuf, pids: PathBuf },
}

/// The layout of this machine, or why no run cgroup can be made.
fn layout() -> Result<&'static Layout, String> {
    static LAYOUT: OnceLock<Result<Layout, String>> = OnceLock::new();
    LAYOUT.get_or_init(find_layout).as_ref().map_err(Clone::clone)
}

fn find_layout() -> Result<Layout, String> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let own = fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    // mountinfo: "id parent major:minor root mountpoint options ... - fstype source superoptions"
    let mount_of = |want_type: &str, want_option: Option<&str>| -> Option<PathBuf> {
        mounts.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mut r = right.split_whitespace();
            let fstype = r.next()?;
            let options = r.nth(1).unwrap_or("");
            let point = left.split_whitespace().nth(4)?;
            let option_ok = want_option.is_none_or(|o| options.split(',').any(|x| x == o));
            (fstype == want_type && option_ok).then(|| PathBuf::from(point))
        })
    };
    let own_path = |controller: &str| -> Option<String> {
        own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let matches = if controller.is_empty() {
                controllers.is_empty()
            } else {
                controllers.split(',').any(|c| c == controller)
            };
            matches.then(|| path.trim_start_matches('/').to_string())
        })
    };
    let mut why = Vec::new();
    if let (Some(mount), Some(path)) = (mount_of("cgroup2", None), own_path("")) {
        let dir = mount.join(path);
        match delegate_v2(&dir) {
            Ok(()) => return Ok(Layout::V2(dir)),
            Err(e) => why.push(format!("cgroup v2 at {}: {e}", dir.display())),
        }
    } else {
        why.push("no cgroup v2".to_string());
    }
    let v1 = |c: &str| Some(mount_of("cgroup", Some(c))?.join(own_path(c)?));
    match (v1("memory"), v1("pids")) {
        (Some(memory), Some(pids)) => {
            let writable = |d: &Path| nix_access(d).map_err(|e| format!("cgroup v1 {}: {e}", d.display()));
            match writable(&memory).and_then(|()| writable(&pids)) {
                Ok(()) => return Ok(Layout::V1 { memory, pids }),
                Err(e) => why.push(e),
            }
        }
        _ => why.push("no cgroup v1 memory and pids hierarchies".to_string()),
    }
    Err(why.join("; "))
}

/// Whether we may make directories in `dir`.
fn nix_access(dir: &Path) -> io::Result<()> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: access on a NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes `memory` and `pids` available to children of `dir` (cgroup v2).
fn delegate_v2(dir: &Path) -> Result<(), String> {
    let available = fs::read_to_string(dir.join("cgroup.controllers")).map_err(|e| e.to_string())?;
    for c in ["memory", "pids"] {
        if !available.split_whitespace().any(|x| x == c) {
            return Err(format!("the {c} controller is not available (controllers: {})", available.trim()));
        }
    }
    let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).map_err(|e| e.to_string())?;
    if ["memory", "pids"].iter().all(|c| enabled.split_whitespace().any(|x| x == *c)) {
        return Ok(());
    }
    // Fails (EBUSY) when the cgroup has processes of its own and is not the root.
    fs::write(dir.join("cgroup.subtree_control"), "+memory +pids")
        .map_err(|e| format!("cannot enable memory and pids for children: {e}"))
}

/// The cgroup(s) of one run, removed on drop.
pub(super) struct RunCgroup {
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` of each directory, open for writing: the child writes `0` to join.
    procs: Vec<File>,
    /// "v2" or "v1".
    pub(super) version: &'static str,
    memory_events: PathBuf,
}

impl RunCgroup {
    /// A cgroup named `name` (unique among concurrent runs) limited to `memory_bytes` of memory
    /// (swap included where the kernel accounts it) and `processes` tasks.
    pub(super) fn create(name: &str, memory_bytes: u64, processes: u64) -> Result<RunCgroup, String> {
        let layout = layout()?;
        let made = match layout {
            Layout::V2(parent) => {
                let dir = parent.join(name);
                make_dir(&dir)?;
                let run = RunCgroup {
                    procs: vec![open_procs(&dir)?],
                    memory_events: dir.join("memory.events"),
                    dirs: vec![dir.clone()],
                    version: "v2",
                };
                write(&dir.join("memory.max"), memory_bytes)?;
                if dir.join("memory.swap.max").exists() {
                    write(&dir.join("memory.swap.max"), 0)?;
                }
                write(&dir.join("pids.max"), processes)?;
                run
            }
            Layout::V1 { memory, pids } => {
                let (m, p) = (memory.join(name), pids.join(name));
                make_dir(&m)?;
                make_dir(&p)?;
                let run = RunCgroup {
                    procs: vec![open_procs(&m)?, open_procs(&p)?],
                    memory_events: m.join("memory.oom_control"),
                    dirs: vec![m.clone(), p.clone()],
                    version: "v1",
                };
                // memsw (memory + swap) must stay >= the memory limit: lower it first if set.
                let memsw = m.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    let _ = write(&memsw, u64::MAX >> 2);
                }
                write(&m.join("memory.limit_in_bytes"), memory_bytes)?;
                if memsw.exists() {
                    write(&memsw, memory_bytes)?;
                }
                write(&p.join("pids.max"), processes)?;
                run
            }
        };
        Ok(made)
    }

    /// The descriptors the child writes `0` to, to join.
    pub(super) fn procs_fds(&self) -> [RawFd; 2] {
        let mut fds = [-1; 2];
        for (slot, f) in fds.iter_mut().zip(&self.procs) {
            *slot = f.as_raw_fd();
        }
        fds
    }

    /// Whether the kernel killed a process of the run for memory.
    pub(super) fn oom_killed(&self) -> bool {
        fs::read_to_string(&self.memory_events).is_ok_and(|t| {
            t.lines().any(|l| l.strip_prefix("oom_kill ").is_some_and(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0)))
        })
    }

    /// Kills whatever is left in the cgroup (v2 `cgroup.kill`, else each listed process).
    fn kill_all(&self) {
        for dir in &self.dirs {
            if fs::write(dir.join("cgroup.kill"), "1").is_ok() {
                continue;
            }
            if let Ok(list) = fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in list.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: signalling a process of the run's cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        self.procs.clear();
        // The processes were killed; their exit may take a moment to leave the cgroup.
        let until = Instant::now() + Duration::from_secs(2);
        for dir in &self.dirs {
            while fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < until {
                self.kill_all();
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

fn make_dir(dir: &Path) -> Result<(), String> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        // Left by a run of a process that crashed: reuse it (it is emptied before use).
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot make cgroup {}: {e}", dir.display())),
    }
}

fn open_procs(dir: &Path) -> Result<File, String> {
    let path = dir.join("cgroup.procs");
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn write(path: &Path, value: u64) -> Result<(), String> {
    let mut f = OpenOptions::new().write(true).open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(value.to_string().as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}
