//! Supervising a running program: reading its output, enforcing the wall-clock timeout,
//! killing its process group, and classifying how it ended.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::child::{set_nonblocking, HEADER_LEN};
use super::fork_server::ForkServer;
use super::uid_lease::UidLease;
use super::{errno, SandboxConfig, Status, Stop, END_MARKER};

/// Bytes of stderr's end kept apart from the capped capture, to read the failure reason from.
const STDERR_TAIL_BYTES: usize = 4096;
/// After the program ended and its group was killed, how long to wait for the pipes to close.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Output kept from one pipe: the first `cap` bytes, the last `tail_cap` bytes, and the total.
pub(super) struct Capture {
    pub(super) head: Vec<u8>,
    cap: usize,
    tail: Vec<u8>,
    tail_cap: usize,
    total: u64,
}

impl Capture {
    fn new(cap: usize, tail_cap: usize) -> Capture {
        Capture { head: Vec::new(), cap, tail: Vec::new(), tail_cap, total: 0 }
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

    pub(super) fn truncated(&self) -> bool {
        self.total > self.head.len() as u64
    }

    fn tail(&self) -> &[u8] {
        &self.tail[self.tail.len().saturating_sub(self.tail_cap)..]
    }
}

/// What [`supervise`] saw.
pub(super) struct Supervised {
    pub(super) timed_out: bool,
    /// The exit status could not be collected (the process was reaped elsewhere).
    pub(super) status_lost: bool,
    pub(super) exit_code: Option<i32>,
    pub(super) signal: Option<i32>,
    pub(super) duration: Duration,
    pub(super) cpu_time: Duration,
    pub(super) stdout: Capture,
    pub(super) stderr: Capture,
    pub(super) control: Capture,
}

/// The process a run started, which leads its process group.
pub(super) enum Leader<'a> {
    /// Our own child (spawned, then `exec`).
    Spawned(libc::pid_t),
    /// A child of the fork server, which reaps it when asked.
    Forked(libc::pid_t, &'a mut ForkServer),
}

impl Leader<'_> {
    fn pid(&self) -> libc::pid_t {
        match self {
            Leader::Spawned(pid) | Leader::Forked(pid, _) => *pid,
        }
    }
}

/// Reads the pipes while waiting for the program to end, the timeout or `stop`; then kills the
/// process group (and, with a uid of its own, everything of that uid), drains the pipes and
/// reaps the process (itself, or through the fork server). `None` when stopped.
pub(super) fn supervise(
    leader: Leader<'_>,
    fds: [OwnedFd; 3],
    timeout: Duration,
    max_output: usize,
    lease: Option<&UidLease>,
    stop: &dyn Stop,
) -> Option<Supervised> {
    let pid = leader.pid();
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
    let pidfd = (pidfd >= 0).then(|| {
        // SAFETY: a non-negative result is the open pidfd just made; nothing else owns it.
        unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) }
    });
    let tick = if pidfd.is_some() { Duration::from_millis(50) } else { Duration::from_millis(5) };
    let mut buf = vec![0u8; 64 << 10];

    let mut timed_out = false;
    let mut stopped = false;
    let exited = || match &leader {
        Leader::Spawned(pid) => leader_exited(*pid),
        Leader::Forked(pid, _) => forked_exited(*pid, pidfd.as_ref()),
    };
    loop {
        if exited() {
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
        poll_and_read(&mut open, &mut captures, pidfd.as_ref().map(|f| f.as_raw_fd()), wait, &mut buf);
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

    let (reaped, status, cpu_time) = reap(leader);
    drop(fds);
    if stopped {
        return None;
    }
    let [stdout, stderr, control] = captures;
    Some(Supervised {
        timed_out,
        status_lost: !reaped,
        exit_code: (reaped && libc::WIFEXITED(status)).then(|| libc::WEXITSTATUS(status)),
        signal: (reaped && libc::WIFSIGNALED(status)).then(|| libc::WTERMSIG(status)),
        duration,
        cpu_time,
        stdout,
        stderr,
        control,
    })
}

/// Reaps the leader: whether its status could be collected, the status and its CPU time (its
/// own and that of the children it waited for).
fn reap(leader: Leader<'_>) -> (bool, libc::c_int, Duration) {
    match leader {
        Leader::Spawned(pid) => {
            let mut status = 0;
            // SAFETY: an all-zero rusage is valid; wait4 fills it and `status`.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            let reaped = loop {
                // SAFETY: wait4 on our own child, writing into `status` and `usage`, which we own.
                match unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } {
                    r if r < 0 && errno() == libc::EINTR => continue,
                    r => break r == pid,
                }
            };
            let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
            (reaped, status, tv(usage.ru_utime) + tv(usage.ru_stime))
        }
        Leader::Forked(pid, server) => match server.reap(pid) {
            Ok(Some(r)) => (true, r.status, r.cpu_time),
            _ => (false, 0, Duration::ZERO),
        },
    }
}

/// Whether a child of the fork server has exited (it stays a zombie until the fork server
/// reaps it, so its pid and pgid stay reserved): its pidfd is readable, or, without one, its
/// `/proc` entry says so or is gone.
fn forked_exited(pid: libc::pid_t, pidfd: Option<&OwnedFd>) -> bool {
    if let Some(fd) = pidfd {
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one pollfd we own, without waiting.
        return unsafe { libc::poll(&mut pfd, 1, 0) } > 0;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        Err(_) => true,
    }
}

/// Whether the process has exited, without reaping it (so its pid and pgid stay reserved).
/// Also true if it is no longer our child to wait for (ECHILD: something else in this process,
/// such as a `waitpid(-1)` SIGCHLD handler, reaped it).
fn leader_exited(pid: libc::pid_t) -> bool {
    // SAFETY: waitid with WNOWAIT only inspects our child.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT);
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
    let mut pfds: Vec<libc::pollfd> =
        open.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    pfds.push(libc::pollfd { fd: pidfd.unwrap_or(-1), events: libc::POLLIN, revents: 0 });
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
pub(super) fn classify(s: &Supervised, config: &SandboxConfig) -> Status {
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
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_head_and_tail() {
        let mut c = Capture::new(4, 3);
        c.push(b"abcdef");
        c.push(b"gh");
        assert_eq!(c.head, b"abcd");
        assert_eq!(c.tail(), b"fgh");
        assert!(c.truncated());
        assert_eq!(last_line(b"Traceback\n  x\nAssertionError: no\n\n"), "AssertionError: no");
    }
}
