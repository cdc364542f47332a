//! What the child process does between `fork` and `exec`, and how it reports it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use seccompiler::BpfProgram;

use super::{errno, is_root, landlock, seccomp, AppliedLimits};

/// A close-on-exec pipe whose descriptors are above 2 (so that the child's stdio `dup2`s can
/// never clobber them, even if the parent runs with stdin closed): `(read, write)`.
pub(super) fn pipe_above_stdio() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills `fds` with two new descriptors that we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((fd_above_stdio(r)?, fd_above_stdio(w)?))
}

pub(super) fn fd_above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor that we own.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` was just returned by fcntl and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// The steps of the child's setup, as reported on the control pipe when one fails.
pub(super) const SETUP_STEPS: [&str; 8] =
    ["setsid", "setrlimit", "setgroups", "setgid", "setuid", "fcntl", "fork into the PID namespace", "chdir"];

/// Namespaces and mounts the child got, as bits of the setup header.
pub(super) mod got {
    pub(crate) const IPC_NAMESPACE: u8 = 1;
    pub(crate) const MOUNT_NAMESPACE: u8 = 1 << 1;
    pub(crate) const PID_NAMESPACE: u8 = 1 << 2;
    pub(crate) const PRIVATE_WORKDIR: u8 = 1 << 3;
    pub(crate) const PRIVATE_PROC: u8 = 1 << 4;
    pub(crate) const CGROUP: u8 = 1 << 5;
    pub(crate) const HOST_RUN_HIDDEN: u8 = 1 << 6;
}

/// Everything the child does between `fork` and `exec`, prepared before the fork (the child of
/// a multi-threaded process may not allocate).
#[derive(Clone)]
pub(super) struct ChildSetup {
    rlimits: [(RlimitResource, libc::rlim_t, libc::rlim_t); 6],
    rlimit_count: usize,
    run_as: Option<u32>,
    /// Not root: a network namespace needs a user namespace around it.
    new_user_namespace: bool,
    /// The Landlock ruleset and the rights to grant beneath the work directory.
    landlock: Option<(RawFd, u64)>,
    control_fd: RawFd,
    source_fd: RawFd,
    workdir: CString,
    /// Mount options of the work directory's tmpfs (its size cap).
    tmpfs_options: CString,
    /// `cgroup.procs` of the run's cgroup(s), -1 for none.
    cgroup_procs: [RawFd; 2],
    seccomp: Option<&'static [BpfProgram]>,
}

#[cfg(target_env = "gnu")]
type RlimitResource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type RlimitResource = libc::c_int;

/// The descriptors and paths a child is set up with.
pub(super) struct ChildFds<'a> {
    pub(super) control: RawFd,
    pub(super) source: RawFd,
    pub(super) landlock: Option<(RawFd, u64)>,
    pub(super) cgroup_procs: [RawFd; 2],
    pub(super) workdir: &'a std::path::Path,
    pub(super) disk_bytes: u64,
    pub(super) disk_files: u64,
}

impl ChildSetup {
    pub(super) fn new(limits: &AppliedLimits, run_as: Option<u32>, fds: ChildFds<'_>) -> io::Result<ChildSetup> {
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
        let owner = run_as.unwrap_or(0);
        let cstring = |s: String| CString::new(s).map_err(|_| io::Error::other("a NUL byte in a sandbox path"));
        Ok(ChildSetup {
            rlimits,
            rlimit_count: n,
            run_as,
            new_user_namespace: !is_root(),
            landlock: fds.landlock,
            control_fd: fds.control,
            source_fd: fds.source,
            workdir: cstring(fds.workdir.display().to_string())?,
            tmpfs_options: cstring(format!(
                "size={},nr_inodes={},mode=0700,uid={owner},gid={owner}",
                fds.disk_bytes, fds.disk_files
            ))?,
            cgroup_procs: fds.cgroup_procs,
            seccomp: seccomp::filters().ok(),
        })
    }

    /// The same setup for a child of the fork server: the run's parameters as the JSON object
    /// `fork_server.py` reads, and the descriptors it names by index (the child's stdout and
    /// stderr are `stdout` and `stderr`).
    pub(super) fn fork_server_request(&self, mode: &str, stdout: RawFd, stderr: RawFd) -> (Vec<u8>, Vec<RawFd>) {
        let mut fds = vec![self.control_fd, self.source_fd, stdout, stderr];
        let landlock = self.landlock.map(|(fd, _)| {
            fds.push(fd);
            fds.len() - 1
        });
        let mut cgroup_procs = Vec::new();
        for fd in self.cgroup_procs.into_iter().filter(|&fd| fd >= 0) {
            fds.push(fd);
            cgroup_procs.push(fds.len() - 1);
        }
        let rlimits: Vec<(i64, libc::rlim_t, libc::rlim_t)> = self.rlimits[..self.rlimit_count]
            .iter()
            .map(|&(resource, soft, hard)| (resource as i64, soft, hard))
            .collect();
        let request = serde_json::json!({
            "mode": mode,
            "control": 0,
            "source": 1,
            "stdout": 2,
            "stderr": 3,
            "landlock": landlock,
            "landlock_access": self.landlock.map_or(0, |(_, access)| access),
            "cgroup_procs": cgroup_procs,
            "new_user_namespace": self.new_user_namespace,
            "rlimits": rlimits,
            "run_as": self.run_as,
            "workdir": self.workdir.to_string_lossy(),
            "tmpfs_options": self.tmpfs_options.to_string_lossy(),
        });
        (request.to_string().into_bytes(), fds)
    }

    /// Runs in the child after `fork`: only async-signal-safe system calls. Mandatory steps
    /// (session, limits, uid) fail the spawn; best-effort ones (namespaces, mounts, cgroup,
    /// Landlock, seccomp) are reported in the header written to the control pipe.
    ///
    /// As root, the child makes new network, IPC, mount and PID namespaces and forks: its
    /// child, the first process of the PID namespace, becomes the program (so that everything
    /// the program starts dies with it, and with us), while it stays behind to pass on the
    /// program's exit status and to die with its parent.
    pub(super) fn apply(&self) -> io::Result<()> {
        let mut got = 0u8;
        // SAFETY: plain system calls on values prepared before the fork.
        unsafe {
            if libc::setsid() < 0 {
                return self.fail(0);
            }
            // Join the run's cgroup before anything is forked.
            let mut joined = false;
            for fd in self.cgroup_procs.into_iter().filter(|&fd| fd >= 0) {
                joined = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                if !joined {
                    break;
                }
            }
            if joined {
                got |= got::CGROUP;
            }
            let attempts: &[libc::c_int] = if self.new_user_namespace {
                &[
                    libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::CLONE_NEWIPC,
                    libc::CLONE_NEWUSER | libc::CLONE_NEWNET,
                ]
            } else {
                &[
                    libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWNS | libc::CLONE_NEWPID,
                    libc::CLONE_NEWNET | libc::CLONE_NEWIPC,
                    libc::CLONE_NEWNET,
                ]
            };
            let mut netns_errno = 0;
            let mut flags = 0;
            for &attempt in attempts {
                if libc::unshare(attempt) == 0 {
                    flags = attempt;
                    netns_errno = 0;
                    break;
                }
                netns_errno = errno();
            }
            if flags & libc::CLONE_NEWIPC != 0 {
                got |= got::IPC_NAMESPACE;
            }
            if flags & libc::CLONE_NEWPID != 0 {
                self.fork_into_pid_namespace()?;
                got |= got::PID_NAMESPACE;
            }
            if flags & libc::CLONE_NEWNS != 0 {
                got |= self.mount_private_views(flags & libc::CLONE_NEWPID != 0)?;
            }
            // Limits after the forks above (the host may hold more descriptors than the
            // program may), before the uid changes (RLIMIT_NPROC is checked then).
            for &(resource, soft, hard) in &self.rlimits[..self.rlimit_count] {
                let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
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
            let landlock_errno = match self.landlock {
                Some((fd, access)) if no_new_privs => {
                    // The rule names the work directory as this namespace sees it (its tmpfs).
                    let dir = libc::open(self.workdir.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
                    let applied = dir >= 0
                        && landlock::add_path_rule(fd, dir, access) == 0
                        && libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) == 0;
                    let e = if applied { 0 } else { errno().max(1) };
                    if dir >= 0 {
                        libc::close(dir);
                    }
                    e
                }
                Some(_) => libc::EPERM,
                None => -1,
            };
            let seccomp_errno = match self.seccomp {
                Some(filters) if no_new_privs => seccomp::install(filters),
                Some(_) => libc::EPERM,
                None => -1,
            };
            let header = SetupHeader::encode(netns_errno, no_new_privs, landlock_errno, got, seccomp_errno);
            libc::write(self.control_fd, header.as_ptr().cast(), header.len());
            // Descriptors the parent leaked without close-on-exec must not reach the program
            // (marked close-on-exec rather than closed: std reports exec errors through one);
            // the control pipe and the program's source alone stay open, at the numbers the
            // driver gets as arguments.
            libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC);
            if libc::fcntl(self.control_fd, libc::F_SETFD, 0) != 0 || libc::fcntl(self.source_fd, libc::F_SETFD, 0) != 0
            {
                return self.fail(5);
            }
        }
        Ok(())
    }

    /// After `unshare(CLONE_NEWPID)`: forks the namespace's first process, which forks the
    /// program's process and returns in it. The two processes left behind never return: each
    /// waits for its child and passes its end on (the first process of a PID namespace cannot
    /// die by most signals, so it sends the program's wait status up a pipe, and the outer one
    /// ends the same way: exit code or signal). If our parent dies, the outer process gets
    /// SIGKILL (parent-death signal), then so does the namespace's first process, and the
    /// kernel kills every process of the namespace with it.
    fn fork_into_pid_namespace(&self) -> io::Result<()> {
        // SAFETY: pipe2 and fork, then only async-signal-safe calls in every process.
        unsafe {
            let mut status_pipe = [-1; 2];
            if libc::pipe2(status_pipe.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                return self.fail(6);
            }
            let [status_read, status_write] = status_pipe;
            let init = libc::fork();
            if init < 0 {
                return self.fail(6);
            }
            if init > 0 {
                wait_and_pass_on(init, status_read, false);
            }
            let program = libc::fork();
            if program < 0 {
                return self.fail(6);
            }
            if program > 0 {
                wait_and_pass_on(program, status_write, true);
            }
            libc::close(status_read);
            libc::close(status_write);
        }
        Ok(())
    }

    /// In the new mount namespace: the work directory becomes a tmpfs of its own (its size is
    /// the disk cap, and it vanishes with the namespace), `/dev/shm` the same tmpfs, `/run`
    /// an empty read-only one (host sockets out of sight), and `/proc` the PID namespace's own.
    fn mount_private_views(&self, pid_namespace: bool) -> io::Result<u8> {
        let mut got = got::MOUNT_NAMESPACE;
        // SAFETY: mount calls on NUL-terminated strings prepared before the fork.
        unsafe {
            let none = std::ptr::null::<libc::c_char>();
            // Nothing mounted below may propagate back to the host's namespace.
            if libc::mount(none, c"/".as_ptr(), none, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
                return Ok(got);
            }
            let tmpfs = c"tmpfs".as_ptr();
            if libc::mount(
                tmpfs,
                self.workdir.as_ptr(),
                tmpfs,
                libc::MS_NOSUID | libc::MS_NODEV,
                self.tmpfs_options.as_ptr().cast(),
            ) == 0
            {
                got |= got::PRIVATE_WORKDIR;
                // The current directory was set before the mount: enter the tmpfs.
                if libc::chdir(self.workdir.as_ptr()) != 0 {
                    return self.fail(7).map(|()| got);
                }
                libc::mount(self.workdir.as_ptr(), c"/dev/shm".as_ptr(), none, libc::MS_BIND, std::ptr::null());
            }
            let quiet = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            if libc::mount(
                tmpfs,
                c"/run".as_ptr(),
                tmpfs,
                quiet | libc::MS_RDONLY,
                c"size=4k,mode=0755".as_ptr().cast(),
            ) == 0
            {
                got |= got::HOST_RUN_HIDDEN;
            }
            if pid_namespace
                && libc::mount(c"proc".as_ptr(), c"/proc".as_ptr(), c"proc".as_ptr(), quiet, std::ptr::null()) == 0
            {
                got |= got::PRIVATE_PROC;
            }
        }
        Ok(got)
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

/// In a process left behind by [`ChildSetup::fork_into_pid_namespace`]: holds no descriptor
/// but `status_fd` (the parent's pipes must end when the program's side closes them), dies with
/// its parent, reaps every child until `child` ends, then passes `child`'s wait status on:
/// written to `status_fd` (`send`), or read from it if there (else its own child's), and ended
/// the same way.
///
/// # Safety
/// Only in a forked child of the sandbox's setup; never returns.
unsafe fn wait_and_pass_on(child: libc::pid_t, status_fd: RawFd, send: bool) -> ! {
    // SAFETY: async-signal-safe system calls on our own descriptors and memory.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
        let fd = status_fd as libc::c_uint;
        if fd > 0 {
            libc::syscall(libc::SYS_close_range, 0 as libc::c_uint, fd - 1, 0 as libc::c_uint);
        }
        libc::syscall(libc::SYS_close_range, fd + 1, libc::c_uint::MAX, 0 as libc::c_uint);
        let mut status: libc::c_int = 0;
        loop {
            let r = libc::waitpid(-1, &mut status, 0);
            if r == child {
                break;
            }
            if r < 0 && errno() != libc::EINTR {
                libc::_exit(125);
            }
        }
        if send {
            libc::write(status_fd, (&status as *const libc::c_int).cast(), size_of::<libc::c_int>());
            libc::_exit(0);
        }
        let mut passed: libc::c_int = 0;
        let n = libc::read(status_fd, (&mut passed as *mut libc::c_int).cast(), size_of::<libc::c_int>());
        if n == size_of::<libc::c_int>() as isize {
            status = passed;
        }
        if libc::WIFSIGNALED(status) {
            let signal = libc::WTERMSIG(status);
            let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::signal(signal, libc::SIG_DFL);
            libc::kill(libc::getpid(), signal);
            libc::_exit(128 + signal);
        }
        libc::_exit(libc::WEXITSTATUS(status));
    }
}

/// The fixed-size header the child writes before `exec`: `b'O'`, then the network namespace's
/// errno (0: created), whether `no_new_privs` is set, the Landlock errno (0: applied, 255: not
/// attempted), the [`got`] bits and the seccomp errno (0: installed, 255: no filter). Written
/// before the program exists, so the program cannot forge it.
#[derive(Debug, Default)]
pub(super) struct SetupHeader {
    pub(super) netns: bool,
    pub(super) netns_errno: Option<i32>,
    pub(super) no_new_privs: bool,
    pub(super) landlock: bool,
    pub(super) landlock_errno: Option<i32>,
    pub(super) got: u8,
    pub(super) seccomp: bool,
    pub(super) seccomp_errno: Option<i32>,
}

pub(super) const HEADER_LEN: usize = 6;

impl SetupHeader {
    fn encode(
        netns_errno: i32,
        no_new_privs: bool,
        landlock_errno: i32,
        got: u8,
        seccomp_errno: i32,
    ) -> [u8; HEADER_LEN] {
        let byte = |e: i32| if e < 0 { 255 } else { e.min(254) as u8 };
        [b'O', byte(netns_errno), no_new_privs as u8, byte(landlock_errno), got, byte(seccomp_errno)]
    }

    pub(super) fn parse(head: &[u8]) -> Option<SetupHeader> {
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
            got: h[4],
            seccomp: h[5] == 0,
            seccomp_errno: errno(h[5]),
        })
    }
}

/// After a failed spawn: " (<step> failed)" from the child's report, if it wrote one.
pub(super) fn read_setup_failure(control: &OwnedFd) -> Option<String> {
    let mut buf = [0u8; 64];
    set_nonblocking(control.as_raw_fd());
    // SAFETY: read into a stack buffer from a descriptor we own.
    let n = unsafe { libc::read(control.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    let got = buf.get(..usize::try_from(n).ok()?)?;
    let at = got.iter().position(|&b| b == b'E')?;
    let step = SETUP_STEPS.get(*got.get(at + 1)? as usize)?;
    Some(format!(" ({step} failed in the child)"))
}

pub(super) fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl flag changes on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_header_round_trip() {
        let h = SetupHeader::parse(&SetupHeader::encode(0, true, 0, got::PID_NAMESPACE, 0)).unwrap();
        assert!(h.netns && h.no_new_privs && h.landlock && h.netns_errno.is_none() && h.seccomp);
        assert_eq!(h.got, got::PID_NAMESPACE);
        let h = SetupHeader::parse(&SetupHeader::encode(libc::EPERM, false, -1, 0, -1)).unwrap();
        assert!(!h.netns && h.netns_errno == Some(libc::EPERM) && !h.landlock && h.landlock_errno.is_none());
        assert!(!h.seccomp && h.seccomp_errno.is_none());
        assert!(SetupHeader::parse(b"E\x01\x01\x00\x00\x00").is_none());
    }
}
