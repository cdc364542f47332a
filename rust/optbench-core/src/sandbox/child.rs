//! What the child process does between `fork` and `exec`, and how it reports it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::{errno, is_root, AppliedLimits};

/// A close-on-exec pipe whose descriptors are above 2 (so that the child's stdio `dup2`s can
/// never clobber them, even if the parent runs with stdin closed): `(read, write)`.
pub(super) fn pipe_above_stdio() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills `fds` with two new descriptors that we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
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
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// The steps of the child's setup, as reported on the control pipe when one fails.
const SETUP_STEPS: [&str; 6] = ["setsid", "setrlimit", "setgroups", "setgid", "setuid", "fcntl"];

/// Everything the child does between `fork` and `exec`, prepared before the fork.
#[derive(Clone, Copy)]
pub(super) struct ChildSetup {
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
    pub(super) fn new(limits: &AppliedLimits, run_as: Option<u32>, landlock_fd: Option<RawFd>, control_fd: RawFd) -> ChildSetup {
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
    pub(super) fn apply(&self) -> io::Result<()> {
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
pub(super) struct SetupHeader {
    pub(super) netns: bool,
    pub(super) netns_errno: Option<i32>,
    pub(super) no_new_privs: bool,
    pub(super) landlock: bool,
    pub(super) landlock_errno: Option<i32>,
}

pub(super) const HEADER_LEN: usize = 4;

impl SetupHeader {
    fn encode(netns_errno: i32, no_new_privs: bool, landlock_errno: i32) -> [u8; HEADER_LEN] {
        let byte = |e: i32| if e < 0 { 255 } else { e.min(254) as u8 };
        [b'O', byte(netns_errno), no_new_privs as u8, byte(landlock_errno)]
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
        let h = SetupHeader::parse(&SetupHeader::encode(0, true, 0)).unwrap();
        assert!(h.netns && h.no_new_privs && h.landlock && h.netns_errno.is_none());
        let h = SetupHeader::parse(&SetupHeader::encode(libc::EPERM, false, -1)).unwrap();
        assert!(!h.netns && h.netns_errno == Some(libc::EPERM) && !h.landlock && h.landlock_errno.is_none());
        assert!(SetupHeader::parse(b"E\x01\x01\x00").is_none());
    }
}
