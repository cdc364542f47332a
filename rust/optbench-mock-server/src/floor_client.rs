//! `optbench-floor-client`: the least work a client can do to read the truth server's streams,
//! so a benchmark can say what this machine's kernel and loopback cost per token and hold a
//! real client to it (`benches/floor.py`).
//!
//! It opens `--concurrency` plain TCP connections before its clock starts, then runs a closed
//! loop of `--num-requests` over them: each request is the same pre-built bytes (a
//! `POST /v1/completions` with the body optbench sends: `--input-tokens` words, `max_tokens`,
//! `stream`, `stream_options` with `continuous_usage_stats`, `ignore_eos`), written with one
//! `write`. One thread waits on all sockets with `epoll` (level-triggered) and does one `read`
//! per ready socket; there is no HTTP or JSON parsing beyond finding the end of the response
//! headers (and checking the status is 200), counting SSE events (`\n\n`) and spotting the
//! chunked body's end (`\r\n0\r\n\r\n`). Time is read once per `epoll_wait` wake-up.
//!
//! The truth server writes each answer as its tokens (one event each), a finish event, a usage
//! event and `data: [DONE]`: a request's tokens are its events minus 3, its TTFT the time from
//! writing it to the read that completed its first event, its ITL the time from that to the read
//! that completed its last token event, over tokens − 1.
//!
//! Output (`--out`): `{"client", "wall_s", "cpu_s", "tokens", "cpu_s_per_1k_tokens",
//! "requests": [{"ttft_ms", "itl_ms", "tokens", "error"}]}`, CPU from `getrusage` (user +
//! system) between the first write and the last answer's end.
#![deny(clippy::undocumented_unsafe_blocks)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;

/// The least-work streaming client: the CPU floor of reading the truth server's tokens.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// The truth server, `http://HOST:PORT` (plain HTTP only).
    #[arg(long)]
    url: String,
    /// The `model` field of each request.
    #[arg(long, default_value = "optbench-mock")]
    model: String,
    /// Connections, each with one request in flight (a closed loop).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 1)]
    num_requests: usize,
    /// Words of the prompt.
    #[arg(long, default_value_t = 256)]
    input_tokens: usize,
    /// `max_tokens` of each request.
    #[arg(long, default_value_t = 256)]
    output_tokens: usize,
    /// Where to write the results (JSON).
    #[arg(long)]
    out: PathBuf,
}

/// Events after the last token: finish, usage, `[DONE]`.
const TRAILING_EVENTS: usize = 3;

/// One connection's current request.
struct Conn {
    stream: TcpStream,
    in_headers: bool,
    head: Vec<u8>,
    /// Whether the last byte read was `\n` (an event ends at `\n\n`, possibly across reads).
    after_newline: bool,
    /// The last 7 bytes read, for the chunked body's end.
    tail: [u8; 7],
    events: usize,
    sent: Instant,
    first_event: Option<Instant>,
    /// When each of the last `TRAILING_EVENTS + 1` events completed, by event number modulo that.
    recent: [Option<Instant>; TRAILING_EVENTS + 1],
}

impl Conn {
    fn start(&mut self, request: &[u8]) {
        self.in_headers = true;
        self.head.clear();
        self.after_newline = false;
        self.tail = [0; 7];
        self.events = 0;
        self.first_event = None;
        self.recent = [None; TRAILING_EVENTS + 1];
        self.sent = Instant::now();
        // A request of a few kB fits in an empty socket buffer: one write.
        let n = self.stream.write(request).unwrap_or_else(|e| fail(&format!("write: {e}")));
        if n != request.len() {
            fail(&format!("short write: {n} of {} bytes", request.len()));
        }
    }

    /// Takes the bytes of one read; returns the finished request's row when its body ended.
    fn feed(&mut self, bytes: &[u8], now: Instant) -> Option<serde_json::Value> {
        if self.in_headers {
            self.head.extend_from_slice(bytes);
            let end = self.head.windows(4).position(|w| w == b"\r\n\r\n")?;
            if !self.head.starts_with(b"HTTP/1.1 200") {
                let line = String::from_utf8_lossy(&self.head[..self.head.len().min(80)]).into_owned();
                fail(&format!("the server answered {line:?}"));
            }
            self.in_headers = false;
            let body = self.head.split_off(end + 4);
            return self.body(&body, now);
        }
        self.body(bytes, now)
    }

    fn body(&mut self, bytes: &[u8], now: Instant) -> Option<serde_json::Value> {
        for &b in bytes {
            // An event ends at "\n\n"; the chunked framing between events ("\r\n1f4\r\n")
            // never holds two newlines in a row.
            if b != b'\n' {
                self.after_newline = false;
            } else if self.after_newline {
                self.events += 1;
                self.first_event.get_or_insert(now);
                self.recent[self.events % (TRAILING_EVENTS + 1)] = Some(now);
                self.after_newline = false;
            } else {
                self.after_newline = true;
            }
        }
        let keep = bytes.len().min(7);
        self.tail.rotate_left(keep);
        self.tail[7 - keep..].copy_from_slice(&bytes[bytes.len() - keep..]);
        if &self.tail != b"\r\n0\r\n\r\n" {
            return None;
        }
        let tokens = self.events.saturating_sub(TRAILING_EVENTS);
        let ms = |a: Instant, b: Instant| a.duration_since(b).as_secs_f64() * 1e3;
        let first = self.first_event?;
        let last_token = self.recent[tokens % (TRAILING_EVENTS + 1)].unwrap_or(first);
        Some(serde_json::json!({
            "ttft_ms": ms(first, self.sent),
            "itl_ms": if tokens > 1 { Some(ms(last_token, first) / (tokens - 1) as f64) } else { None },
            "tokens": tokens,
            "error": null,
        }))
    }
}

fn fail(message: &str) -> ! {
    eprintln!("optbench-floor-client: {message}");
    std::process::exit(1);
}

/// User plus system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer it is given, which points to
    // one; RUSAGE_SELF is always valid.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            fail("getrusage failed");
        }
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn request_bytes(args: &Args, host: &str) -> Vec<u8> {
    let prompt: Vec<String> = (0..args.input_tokens).map(|i| format!("w{}", i % 2000)).collect();
    let body = serde_json::json!({
        "model": args.model,
        "prompt": prompt.join(" "),
        "max_tokens": args.output_tokens,
        "temperature": 0.0,
        "stream": true,
        "stream_options": {"include_usage": true, "continuous_usage_stats": true},
        "ignore_eos": true,
    })
    .to_string();
    let mut request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Accept: text/event-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body.as_bytes());
    request
}

fn main() {
    let args = Args::parse();
    let Some(host) = args.url.strip_prefix("http://").map(|h| h.trim_end_matches('/')) else {
        fail("--url must be http://HOST:PORT");
    };
    if args.concurrency == 0 || args.num_requests == 0 {
        fail("--concurrency and --num-requests must be at least 1");
    }
    let request = request_bytes(&args, host);
    let n_conns = args.concurrency.min(args.num_requests);

    // SAFETY: epoll_create1 takes flags and returns a new descriptor or -1.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        fail("epoll_create1 failed");
    }
    // The connections, before the clock starts.
    let mut conns: Vec<Conn> = (0..n_conns)
        .map(|i| {
            let stream = TcpStream::connect(host).unwrap_or_else(|e| fail(&format!("connect to {host}: {e}")));
            stream.set_nodelay(true).unwrap_or_else(|e| fail(&format!("TCP_NODELAY: {e}")));
            stream.set_nonblocking(true).unwrap_or_else(|e| fail(&format!("non-blocking: {e}")));
            let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: i as u64 };
            // SAFETY: both descriptors are open and `event` is a valid epoll_event.
            if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, stream.as_raw_fd(), &mut event) } != 0 {
                fail("epoll_ctl failed");
            }
            Conn {
                stream,
                in_headers: true,
                head: Vec::with_capacity(512),
                after_newline: false,
                tail: [0; 7],
                events: 0,
                sent: Instant::now(),
                first_event: None,
                recent: [None; TRAILING_EVENTS + 1],
            }
        })
        .collect();

    let cpu_start = cpu_seconds();
    let started = Instant::now();
    let mut sent = 0;
    for conn in &mut conns {
        conn.start(&request);
        sent += 1;
    }
    let mut rows = Vec::with_capacity(args.num_requests);
    let mut buf = vec![0u8; 64 * 1024];
    let mut ready = vec![libc::epoll_event { events: 0, u64: 0 }; n_conns.max(1)];
    while rows.len() < args.num_requests {
        // SAFETY: `ready` holds `ready.len()` epoll_event slots for the kernel to fill.
        let n = unsafe { libc::epoll_wait(epoll, ready.as_mut_ptr(), ready.len() as i32, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            fail(&format!("epoll_wait: {e}"));
        }
        let now = Instant::now();
        for event in &ready[..n as usize] {
            let conn = &mut conns[event.u64 as usize];
            let got = match conn.stream.read(&mut buf) {
                Ok(0) => fail("the server closed a connection"),
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => fail(&format!("read: {e}")),
            };
            if let Some(row) = conn.feed(&buf[..got], now) {
                rows.push(row);
                if sent < args.num_requests {
                    conn.start(&request);
                    sent += 1;
                }
            }
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds() - cpu_start;
    let tokens: u64 = rows.iter().map(|r| r["tokens"].as_u64().unwrap_or(0)).sum();
    let out = serde_json::json!({
        "client": "floor",
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "tokens": tokens,
        "cpu_s_per_1k_tokens": if tokens > 0 { Some(cpu_s / (tokens as f64 / 1e3)) } else { None },
        "requests": rows,
    });
    if let Err(e) = std::fs::write(&args.out, out.to_string()) {
        fail(&format!("cannot write {}: {e}", args.out.display()));
    }
}
