//! Leasing an unprivileged uid for one run, and killing everything of that uid afterwards.

use std::fs::{self, File};
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{errno, io_err};
use crate::{CoreError, Result};

/// A uid from [`SandboxConfig::uids`] held by this run alone: an exclusive `flock` on
/// `<lock dir>/uid-N.lock` (so other processes using the same range skip it), released on
/// drop. The lock file's one byte says whether the last holder killed everything of the uid
/// at its end ("c", clean); if not (a crashed holder), the lease starts by doing so, so
/// leftovers cannot count against `RLIMIT_NPROC`.
pub(super) struct UidLease {
    pub(super) uid: u32,
    lock: File,
}

impl UidLease {
    /// Kills everything still running under the uid, then removes the SysV IPC objects it
    /// made in our IPC namespace (there are none where the run had an IPC namespace of its own).
    pub(super) fn kill_leftovers(&self) {
        kill_all_processes_of(self.uid);
        remove_ipc_objects_of(self.uid);
    }

    /// Marks the uid clean: nothing of its run is left (called once the work directory is gone).
    pub(super) fn mark_clean(&self) {
        let _ = self.lock.write_at(b"c", 0);
    }

    pub(super) fn acquire(range: &Range<u32>) -> Result<UidLease> {
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
                        remove_work_directories_of(uid);
                    }
                    file.write_at(b"d", 0).map_err(|e| io_err(&path, e))?;
                    return Ok(UidLease { uid, lock: file });
                }
            }
            if Instant::now() > give_up {
                return Err(CoreError::config(format!("all sandbox uids {range:?} are in use; give a larger range")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Removes the SysV shared memory segments, semaphore sets and message queues owned or made by
/// `uid`, as listed in `/proc/sysvipc` (shared memory outlives the processes that made it).
fn remove_ipc_objects_of(uid: u32) {
    for (kind, remove) in [
        (
            "shm",
            (|id| {
                // SAFETY: IPC_RMID takes no buffer.
                unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
            }) as fn(i32),
        ),
        ("sem", |id| {
            // SAFETY: IPC_RMID ignores the semaphore number and takes no argument.
            unsafe { libc::semctl(id, 0, libc::IPC_RMID) };
        }),
        ("msg", |id| {
            // SAFETY: IPC_RMID takes no buffer.
            unsafe { libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
        }),
    ] {
        let Ok(table) = fs::read_to_string(format!("/proc/sysvipc/{kind}")) else { continue };
        let mut lines = table.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
        let column = |name: &str| header.iter().position(|h| *h == name);
        let (Some(id_at), Some(uid_at), Some(cuid_at)) =
            (column(&format!("{kind}id")).or(column("msqid")), column("uid"), column("cuid"))
        else {
            continue;
        };
        for line in lines {
            let f: Vec<&str> = line.split_whitespace().collect();
            let owned = |at: usize| f.get(at).and_then(|v| v.parse::<u32>().ok()) == Some(uid);
            if owned(uid_at) || owned(cuid_at) {
                if let Some(id) = f.get(id_at).and_then(|v| v.parse::<i32>().ok()) {
                    remove(id);
                }
            }
        }
    }
}

/// Removes the work directories a crashed run of `uid` left in the temporary directory (its
/// host died before its cleanup; the uid's lease, held now, says no run of `uid` is going on).
fn remove_work_directories_of(uid: u32) {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let ours = entry.file_name().to_string_lossy().starts_with("optbench-sandbox-")
            && entry.metadata().is_ok_and(|m| m.is_dir() && m.uid() == uid);
        if ours {
            let _ = super::workdir::remove_tree(&entry.path());
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
            return Err(format!("{} must be a directory owned by root and writable by root alone", dir.display()));
        }
        Ok(dir)
    });
    dir.as_deref().map_err(|e| CoreError::config(format!("sandbox uid locks: {e}")))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Shared memory segments of `uid` in our IPC namespace.
    fn segments_of(uid: u32) -> usize {
        let table = fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
        table.lines().skip(1).filter(|l| l.split_whitespace().nth(7) == Some(&uid.to_string())).count()
    }

    #[test]
    fn ipc_objects_of_a_uid_are_removed() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return; // making a segment as another uid needs root
        }
        let uid = 61_999;
        // SAFETY: the child only makes system calls, then leaves with _exit.
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                if libc::setgid(uid) == 0 && libc::setuid(uid) == 0 {
                    libc::shmget(libc::IPC_PRIVATE, 1 << 16, 0o600);
                }
                libc::_exit(0);
            }
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        assert_eq!(segments_of(uid), 1);
        remove_ipc_objects_of(uid);
        assert_eq!(segments_of(uid), 0);
    }
}
