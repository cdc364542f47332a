//! The fork server: one pre-started Python interpreter per worker that forks a child per run.
//!
//! Starting `python3 -I -B` for every program costs tens of milliseconds (the interpreter's
//! start-up and the driver's imports) and is most of a short test's time. A fork server
//! (`fork_server.py`, started with the same interpreter, flags and empty environment as a
//! program) imports the modules test programs commonly use once, then waits on a Unix socket.
//! For each run the sandbox sends it the run's parameters (uid, work directory, limits) and
//! descriptors (the task, the control pipe, stdout, stderr, the run's cgroup, the Landlock
//! ruleset); it forks a child, which makes the same setup as a spawned child does between fork
//! and exec (session, cgroup, namespaces, tmpfs work directory, limits, uid, Landlock,
//! seccomp), writes the same setup header on the control pipe, and runs the driver.
//!
//! The fork server never reads a program or a test, and each child is a fork of it, so nothing
//! a program does (to its memory, its modules, its environment) reaches the next one. It runs
//! with the sandbox's own privileges (root: each child leaves them as a spawned child does), as
//! its own session, not dumpable, and ends when its socket closes (the sandbox is dropped or
//! its process died); its children die with it. The sandbox supervises each child as it does
//! a spawned one (its pipes, a pidfd for its end, the timeout, `killpg`, the uid's leftovers);
//! the fork server reaps it on request, once the sandbox has killed what was left, and passes
//! on its wait status and CPU time.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::child::set_nonblocking;
use super::{errno, seccomp, DRIVER};

/// The fork server's source (see the file's comments).
const FORK_SERVER: &str = include_str!("fork_server.py");
/// How long a reply of the fork server may take (its start-up included).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running fork server.
pub(super) struct ForkServer {
    process: Child,
    socket: OwnedFd,
    stderr: OwnedFd,
    /// A request or reply failed: not to be used again.
    pub(super) broken: bool,
}

impl std::fmt::Debug for ForkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkServer").field("pid", &self.process.id()).field("broken", &self.broken).finish()
    }
}

/// How a child of the fork server ended: its wait status and CPU time.
pub(super) struct Reaped {
    pub(super) status: libc::c_int,
    pub(super) cpu_time: Duration,
}

impl ForkServer {
    /// Starts a fork server with `python`; it is ready once it answers its first request.
    pub(super) fn start(python: &Path) -> io::Result<ForkServer> {
        let mut fds = [-1; 2];
        // SAFETY: socketpair fills `fds` with two new descriptors that we then own.
        if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) }
            != 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nothing else.
        let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let theirs_fd = theirs.as_raw_fd();
        let mut command = Command::new(python);
        command
            .args(["-I", "-B", "-c", FORK_SERVER, &theirs_fd.to_string(), DRIVER, &constants()])
            .env_clear()
            .env("HOME", "/")
            .env("TMPDIR", "/")
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: setsid and fcntl are async-signal-safe system calls.
        unsafe {
            command.pre_exec(move || {
                // Its own session: a terminal's Ctrl-C is for the sandbox, which then ends it.
                if libc::setsid() < 0 || libc::fcntl(theirs_fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut process = command.spawn()?;
        drop(theirs);
        let stderr = OwnedFd::from(process.stderr.take().expect("piped stderr"));
        set_nonblocking(stderr.as_raw_fd());
        Ok(ForkServer { process, socket: ours, stderr, broken: false })
    }

    /// Forks a child for one run: `request` is the run's parameters (JSON), `fds` its
    /// descriptors, which the request names by their index. Returns the child's pid.
    pub(super) fn fork(&mut self, request: &[u8], fds: &[RawFd]) -> io::Result<libc::pid_t> {
        let pid = self.fork_inner(request, fds);
        self.broken |= pid.is_err();
        pid
    }

    fn fork_inner(&mut self, request: &[u8], fds: &[RawFd]) -> io::Result<libc::pid_t> {
        let mut message = Vec::with_capacity(request.len() + 1);
        message.push(b'R');
        message.extend_from_slice(request);
        send_with_fds(self.socket.as_raw_fd(), &message, fds)?;
        let reply = self.reply()?;
        match reply.as_slice() {
            [b'P', pid @ ..] if pid.len() == 4 => Ok(i32::from_le_bytes(pid.try_into().expect("4 bytes"))),
            _ => Err(io::Error::other("a malformed reply from the fork server")),
        }
    }

    /// Has the fork server reap its child `pid` (which has ended or been killed).
    pub(super) fn reap(&mut self, pid: libc::pid_t) -> io::Result<Option<Reaped>> {
        let reaped = self.reap_inner(pid);
        self.broken |= reaped.is_err();
        reaped
    }

    fn reap_inner(&mut self, pid: libc::pid_t) -> io::Result<Option<Reaped>> {
        let mut message = vec![b'W'];
        message.extend_from_slice(&pid.to_le_bytes());
        send_with_fds(self.socket.as_raw_fd(), &message, &[])?;
        let reply = self.reply()?;
        match reply.as_slice() {
            [b'L'] => Ok(None),
            [b'S', rest @ ..] if rest.len() == 20 => {
                let status = i32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
                let user = i64::from_le_bytes(rest[4..12].try_into().expect("8 bytes"));
                let system = i64::from_le_bytes(rest[12..].try_into().expect("8 bytes"));
                let us = |v: i64| Duration::from_micros(v.max(0) as u64);
                Ok(Some(Reaped { status, cpu_time: us(user) + us(system) }))
            }
            _ => Err(io::Error::other("a malformed reply from the fork server")),
        }
    }

    /// The next message from the fork server; an error if it ended or did not answer in time.
    fn reply(&mut self) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let fd = self.socket.as_raw_fd();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "the fork server did not answer"));
            }
            let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: poll on one pollfd we own.
            let ready = unsafe { libc::poll(&mut pfd, 1, left.as_millis().clamp(1, 60_000) as libc::c_int) };
            if ready < 0 && errno() != libc::EINTR {
                return Err(io::Error::last_os_error());
            }
            if ready <= 0 {
                continue;
            }
            let mut buf = [0u8; 64];
            // SAFETY: recv into a stack buffer from a socket we own.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n > 0 {
                return Ok(buf[..n as usize].to_vec());
            }
            if n == 0 {
                return Err(io::Error::other(format!("the fork server ended{}", self.last_words())));
            }
            if errno() != libc::EINTR && errno() != libc::EAGAIN {
                return Err(io::Error::last_os_error());
            }
        }
    }

    /// ": <the end of its stderr>" when it wrote any.
    fn last_words(&mut self) -> String {
        let mut text = Vec::new();
        // SAFETY: a borrowed view of our descriptor, forgotten (not closed) afterwards.
        let mut file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(self.stderr.as_raw_fd()) });
        let _ = file.read_to_end(&mut text);
        let text = String::from_utf8_lossy(&text);
        let last = text.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
        if last.is_empty() {
            String::new()
        } else {
            format!(": {last}")
        }
    }
}

impl Drop for ForkServer {
    fn drop(&mut self) {
        // Closing the socket ends it; it has no child left by then (each run is reaped).
        // SAFETY: shutdown of a socket we own (the descriptor itself is closed with `self`).
        unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR) };
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The fork server's constants: the seccomp filters (hex, in order; none where this machine
/// has no filter, which the setup header then reports) and the Landlock system call numbers.
fn constants() -> String {
    let filters: Vec<String> = seccomp::filters()
        .map(|filters| {
            filters
                .iter()
                .map(|f| {
                    f.iter()
                        .flat_map(|i| {
                            let mut b = Vec::with_capacity(8);
                            b.extend_from_slice(&i.code.to_ne_bytes());
                            b.push(i.jt);
                            b.push(i.jf);
                            b.extend_from_slice(&i.k.to_ne_bytes());
                            b
                        })
                        .map(|b| format!("{b:02x}"))
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!({
        "seccomp": filters,
        "sys_landlock_add_rule": libc::SYS_landlock_add_rule,
        "sys_landlock_restrict_self": libc::SYS_landlock_restrict_self,
    })
    .to_string()
}

/// Sends one message with `fds` attached (`SCM_RIGHTS`).
fn send_with_fds(socket: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    let payload = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    // u64s: the control buffer must be aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer holds one header and `payload` bytes of data.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), fds.len());
        }
    }
    loop {
        // SAFETY: sendmsg of a message whose buffers are alive for the call.
        let n = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        if errno() != libc::EINTR {
            return Err(io::Error::last_os_error());
        }
    }
}
