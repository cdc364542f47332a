//! The load generator's own HTTP/1.1 transport for `http://` targets: each measured request
//! owns its connection for its whole exchange and reads the socket in its own task.
//!
//! A general HTTP client (reqwest over hyper) drives each connection on a task of its own and
//! hands the body to the request's task through a channel, one `Bytes` per read: every streamed
//! token costs two task wake-ups, a channel hand-off and buffer splitting, about half of the
//! client's CPU per token at concurrency 256 (`benches/floor.py`). Here the request's task
//! writes the request, reads the response head (parsed by `httparse`), decodes the body
//! (`Content-Length`, chunked, or to the close) and feeds the SSE parser straight from one
//! read buffer, timestamping each read as it returns. Connections are kept alive in [`H1Pool`]
//! (per `host:port`, idle for at most [`crate::client::POOL_IDLE_TIMEOUT`]) and opened before
//! the clock by [`H1Pool::preconnect`].
//!
//! `https://` targets, and any target while an HTTP proxy is configured in the environment, go
//! through reqwest instead (TLS and proxies are its job): [`proxy_configured`] and [`serves`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::client::{
    elapsed_ns, redirect_text, settle_reasoning_counts, snippet, Failure, PreparedRequest, StreamReader,
    DRAIN_AFTER_DONE, ERROR_BODY_BYTES, ERROR_BODY_TIMEOUT, POOL_IDLE_TIMEOUT,
};
use crate::preconnect::ConnectionCounter;
use crate::record::{ErrorKind, RequestRecord};

/// The most bytes a response head may take.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most headers a response head may have.
const MAX_HEADERS: usize = 96;
/// The read buffer's size: a read takes at most this much of what the socket holds.
const READ_BYTES: usize = 16 * 1024;
/// How long opening one TCP connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment variables that configure an HTTP proxy (reqwest's system proxy reads them).
const PROXY_VARIABLES: [&str; 4] = ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"];

/// Whether an HTTP proxy is configured in the environment (then every request goes through
/// reqwest, which honours it).
pub fn proxy_configured() -> bool {
    PROXY_VARIABLES.iter().any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// Whether this transport can take requests to `url` (plain `http://`).
pub fn serves(url: &str) -> bool {
    url.starts_with("http://")
}

/// Where a request goes: the socket address (`host:port`) and the request's first lines.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port`, the pool's key and what is connected to.
    pub authority: String,
    /// The request line and headers up to (without) `Content-Length`.
    head: String,
}

impl Target {
    /// The target of a `POST` to `url` (an `http://` URL). Fails on a URL without a host.
    pub fn post(url: &str, api_key: Option<&str>) -> Result<Target, String> {
        Self::new("POST", url, api_key, "Content-Type: application/json\r\nAccept: text/event-stream\r\n")
    }

    fn new(method: &str, url: &str, api_key: Option<&str>, extra: &str) -> Result<Target, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
        let host = parsed.host_str().ok_or_else(|| format!("{url}: no host"))?;
        let port = parsed.port_or_known_default().unwrap_or(80);
        let authority = format!("{host}:{port}");
        let host_header = match parsed.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let mut path = parsed.path().to_string();
        if let Some(q) = parsed.query() {
            path.push('?');
            path.push_str(q);
        }
        let auth = api_key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
        let head = format!("{method} {path} HTTP/1.1\r\nHost: {host_header}\r\n{extra}{auth}");
        Ok(Target { authority, head })
    }

    /// The whole request: head, `Content-Length` and body.
    fn request_bytes(&self, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head.len() + body.len() + 32);
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        out.extend_from_slice(body);
        out
    }
}

struct Idle {
    stream: TcpStream,
    since: Instant,
}

/// Kept-alive connections per `host:port`, and a count of every connection opened.
#[derive(Default)]
pub struct H1Pool {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
    opened: ConnectionCounter,
}

impl H1Pool {
    /// An empty pool that counts the connections it opens in `opened`.
    pub fn new(opened: ConnectionCounter) -> H1Pool {
        H1Pool { idle: Mutex::default(), opened }
    }

    /// An idle connection to `authority` that is still open, if any (the most recently used).
    fn take(&self, authority: &str) -> Option<TcpStream> {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.get_mut(authority)?;
        while let Some(conn) = list.pop() {
            if conn.since.elapsed() < POOL_IDLE_TIMEOUT && is_open(&conn.stream) {
                return Some(conn.stream);
            }
        }
        None
    }

    fn put(&self, authority: &str, stream: TcpStream) {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = match idle.get_mut(authority) {
            Some(list) => list,
            None => idle.entry(authority.to_string()).or_default(),
        };
        // Oldest first (`take` pops the newest): the ones idle too long are closed here, not
        // kept open to the run's end.
        let expired = list.partition_point(|c| c.since.elapsed() >= POOL_IDLE_TIMEOUT);
        list.drain(..expired);
        list.push(Idle { stream, since: Instant::now() });
    }

    async fn connect(&self, authority: &str) -> std::io::Result<TcpStream> {
        self.opened.add_one();
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority)).await {
            Ok(s) => s?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
                ))
            }
        };
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Opens `n` connections to `authority` and answers one `GET path` on each (so the server
    /// has accepted and served it), reading each answer to its end, then keeps them all idle.
    /// Returns the first failure, if any; the connections that worked stay in the pool.
    pub async fn preconnect(&self, url: String, n: usize, api_key: Option<&str>) -> Result<(), String> {
        let target = Target::new("GET", &url, api_key, "")?;
        let request = target.request_bytes(b"");
        let opened = futures_util::future::join_all((0..n).map(|_| async {
            let mut conn = Conn::new(self.connect(&target.authority).await.map_err(|e| format!("connect: {e}"))?);
            conn.stream.write_all(&request).await.map_err(|e| format!("write: {e}"))?;
            let head = conn.read_head().await.map_err(|(_, e)| e)?;
            let mut framing = head.framing();
            let ended = conn.read_body(&mut framing, &mut |_| {}, usize::MAX).await.map_err(|(_, e)| e)?;
            Ok::<_, String>(if ended && head.keep_alive { Some(conn.stream) } else { None })
        }))
        .await;
        let mut first_error = None;
        for result in opened {
            match result {
                Ok(Some(stream)) => self.put(&target.authority, stream),
                Ok(None) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Whether a kept-alive connection is still open: no EOF, error or unexpected bytes waiting.
fn is_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// A response head's facts that matter here.
struct Head {
    status: u16,
    location: Option<String>,
    content_length: Option<u64>,
    chunked: bool,
    keep_alive: bool,
}

impl Head {
    fn framing(&self) -> Framing {
        if self.status == 204 || self.status == 304 {
            Framing::Length(0)
        } else if self.chunked {
            Framing::Chunked(Chunked::Size { value: 0, digits: 0 })
        } else if let Some(n) = self.content_length {
            Framing::Length(n)
        } else {
            Framing::Close
        }
    }
}

/// How the body ends.
enum Framing {
    /// After this many more bytes.
    Length(u64),
    /// With the chunked encoding's last chunk.
    Chunked(Chunked),
    /// When the server closes the connection.
    Close,
}

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunked {
    /// Reading a chunk's size in hex.
    Size { value: u64, digits: u32 },
    /// Skipping a chunk extension up to the size line's end.
    Extension { value: u64 },
    /// Expecting the `\n` of the size line (`value` is the size).
    SizeLf { value: u64 },
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the `\r` after a chunk's data.
    DataCr,
    /// Expecting the `\n` after a chunk's data.
    DataLf,
    /// After the last chunk: reading trailer lines; `empty` while the current line is empty.
    Trailer { empty: bool },
    /// The body ended.
    End,
}

/// The chunked encoding's framing was broken.
fn bad_chunk(what: &str) -> Failure {
    (ErrorKind::StreamReset, format!("the chunked body is malformed: {what}"))
}

impl Framing {
    /// Decodes `input`, handing each piece of body data to `data`; returns how many bytes of
    /// `input` belong to the body (the rest, if any, is past its end) and whether it ended.
    fn decode(&mut self, input: &[u8], data: &mut dyn FnMut(&[u8])) -> Result<(usize, bool), Failure> {
        match self {
            Framing::Close => {
                data(input);
                Ok((input.len(), false))
            }
            Framing::Length(left) => {
                let take = (*left).min(input.len() as u64) as usize;
                data(&input[..take]);
                *left -= take as u64;
                Ok((take, *left == 0))
            }
            Framing::Chunked(state) => {
                let mut i = 0;
                while i < input.len() {
                    let b = input[i];
                    *state = match *state {
                        Chunked::Size { value, digits } => match (b as char).to_digit(16) {
                            Some(d) if digits < 15 => {
                                Chunked::Size { value: value * 16 + d as u64, digits: digits + 1 }
                            }
                            Some(_) => return Err(bad_chunk("a chunk size of more than 15 hex digits")),
                            None if digits == 0 => return Err(bad_chunk("a chunk size line without a size")),
                            None if b == b'\r' => Chunked::SizeLf { value },
                            None if b == b';' || b == b' ' || b == b'\t' => Chunked::Extension { value },
                            None => return Err(bad_chunk("a chunk size is not hexadecimal")),
                        },
                        Chunked::Extension { value } => match b {
                            b'\r' => Chunked::SizeLf { value },
                            b'\n' => return Err(bad_chunk("a bare LF ends a chunk size line")),
                            _ => Chunked::Extension { value },
                        },
                        Chunked::SizeLf { value } => match b {
                            b'\n' if value == 0 => Chunked::Trailer { empty: true },
                            b'\n' => Chunked::Data(value),
                            _ => return Err(bad_chunk("a chunk size line does not end in CRLF")),
                        },
                        Chunked::Data(left) => {
                            let take = left.min((input.len() - i) as u64) as usize;
                            data(&input[i..i + take]);
                            i += take;
                            *state =
                                if left == take as u64 { Chunked::DataCr } else { Chunked::Data(left - take as u64) };
                            continue;
                        }
                        Chunked::DataCr if b == b'\r' => Chunked::DataLf,
                        Chunked::DataLf if b == b'\n' => Chunked::Size { value: 0, digits: 0 },
                        Chunked::DataCr | Chunked::DataLf => {
                            return Err(bad_chunk("a chunk's data is not followed by CRLF"))
                        }
                        Chunked::Trailer { empty } => match b {
                            b'\n' if empty => {
                                *state = Chunked::End;
                                return Ok((i + 1, true));
                            }
                            b'\n' => Chunked::Trailer { empty: true },
                            b'\r' => Chunked::Trailer { empty },
                            _ => Chunked::Trailer { empty: false },
                        },
                        Chunked::End => return Ok((i, true)),
                    };
                    i += 1;
                }
                Ok((i, *state == Chunked::End))
            }
        }
    }
}

/// A connection and the bytes read from it that were not used yet (`buf[start..]`).
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn { stream, buf: Vec::with_capacity(READ_BYTES), start: 0 }
    }

    /// Reads once more into the buffer; returns the byte count (0 at the end of the stream).
    async fn read_more(&mut self) -> std::io::Result<usize> {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 && self.buf.capacity() - self.buf.len() < READ_BYTES / 4 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.capacity() - self.buf.len() < READ_BYTES / 4 {
            self.buf.reserve(READ_BYTES);
        }
        self.stream.read_buf(&mut self.buf).await
    }

    /// Reads and parses the response head (skipping any `1xx`).
    async fn read_head(&mut self) -> Result<Head, Failure> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf[self.start..]) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = response.code.unwrap_or(0);
                    let mut head = Head {
                        status,
                        location: None,
                        content_length: None,
                        chunked: false,
                        keep_alive: response.version == Some(1),
                    };
                    for h in response.headers.iter() {
                        let value = String::from_utf8_lossy(h.value);
                        let value = value.trim();
                        if h.name.eq_ignore_ascii_case("content-length") {
                            head.content_length = Some(value.parse().map_err(|_| {
                                (
                                    ErrorKind::StreamReset,
                                    format!("the response's Content-Length is not a number: {value:?}"),
                                )
                            })?);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            head.chunked = value.to_ascii_lowercase().split(',').any(|t| t.trim() == "chunked");
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            let value = value.to_ascii_lowercase();
                            if value.split(',').any(|t| t.trim() == "close") {
                                head.keep_alive = false;
                            } else if value.split(',').any(|t| t.trim() == "keep-alive") {
                                head.keep_alive = true;
                            }
                        } else if h.name.eq_ignore_ascii_case("location") {
                            head.location = Some(value.to_string());
                        }
                    }
                    self.start += len;
                    if (100..200).contains(&status) {
                        continue;
                    }
                    if head.chunked {
                        head.content_length = None;
                    }
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => {
                    let got = snippet(&String::from_utf8_lossy(&self.buf[self.start..]), 200);
                    return Err((
                        ErrorKind::ConnectionReset,
                        format!("the response head is not HTTP/1.x ({e}): {got:?}"),
                    ));
                }
            }
            if self.buf.len() - self.start > MAX_HEAD_BYTES {
                return Err((
                    ErrorKind::ConnectionReset,
                    format!("the response head is longer than {MAX_HEAD_BYTES} bytes"),
                ));
            }
            match self.read_more().await {
                Ok(0) => {
                    let kind = ErrorKind::ConnectionReset;
                    return Err((kind, "the server closed the connection before it answered".to_string()));
                }
                Ok(_) => {}
                Err(e) => return Err((ErrorKind::ConnectionReset, format!("reading the response: {e}"))),
            }
        }
    }

    /// Reads the body to its end, handing its data to `data`, until it ended (true) or `limit`
    /// bytes were handed over (false). A body that ends with the connection ended too.
    async fn read_body(
        &mut self,
        framing: &mut Framing,
        data: &mut (dyn FnMut(&[u8]) + Send),
        limit: usize,
    ) -> Result<bool, Failure> {
        let mut handed = 0usize;
        loop {
            let (used, ended) = framing.decode(&self.buf[self.start..], &mut |d| {
                handed += d.len();
                data(d)
            })?;
            self.start += used;
            if ended {
                return Ok(true);
            }
            if handed >= limit {
                return Ok(false);
            }
            match self.read_more().await {
                Ok(0) => {
                    return match framing {
                        Framing::Close => Ok(true),
                        _ => Err((ErrorKind::StreamReset, "the server closed the connection inside the body".into())),
                    }
                }
                Ok(_) => {}
                Err(e) => return Err((ErrorKind::StreamReset, format!("reading the body: {e}"))),
            }
        }
    }
}

/// Sends one request over `pool` and streams its answer into `rec`, as
/// [`crate::client::stream_request`] does over reqwest.
pub async fn stream_request(
    pool: &H1Pool,
    request: &PreparedRequest,
    api_key: Option<&str>,
    t0: Instant,
    rec: &mut RequestRecord,
) -> Result<(), Failure> {
    let outcome = stream_into(pool, request, api_key, t0, rec).await;
    settle_reasoning_counts(rec);
    outcome
}

async fn stream_into(
    pool: &H1Pool,
    request: &PreparedRequest,
    api_key: Option<&str>,
    t0: Instant,
    rec: &mut RequestRecord,
) -> Result<(), Failure> {
    let target = Target::post(&request.url, api_key).map_err(|e| (ErrorKind::Connect, e))?;
    let bytes = target.request_bytes(&request.body);
    rec.sent_ns = Some(elapsed_ns(t0));
    // A kept-alive connection the server closed while it sat idle fails before any answer:
    // the request is sent again on another connection (at most twice). Its sent time stays
    // the first attempt's, so any delay this costs is inside its TTFT.
    let mut attempt = 0;
    let (mut conn, head) = loop {
        let (stream, reused) = match pool.take(&target.authority) {
            Some(s) => (s, true),
            None => match pool.connect(&target.authority).await {
                Ok(s) => (s, false),
                Err(e) => return Err((ErrorKind::Connect, format!("connecting to {}: {e}", target.authority))),
            },
        };
        let mut conn = Conn::new(stream);
        let sent = conn.stream.write_all(&bytes).await;
        let answer = match sent {
            Ok(()) => conn.read_head().await,
            Err(e) => Err((ErrorKind::ConnectionReset, format!("sending the request: {e}"))),
        };
        match answer {
            Ok(head) => break (conn, head),
            Err(_) if reused && attempt < 2 && conn.buf.is_empty() => attempt += 1,
            Err(e) => return Err(e),
        }
    };
    rec.first_byte_ns = Some(elapsed_ns(t0));
    rec.http_status = Some(head.status);
    if (300..400).contains(&head.status) {
        return Err((ErrorKind::Http3xx, redirect_text(head.status, head.location.as_deref())));
    }
    if !(200..300).contains(&head.status) {
        let kind = if head.status < 500 { ErrorKind::Http4xx } else { ErrorKind::Http5xx };
        let mut body = Vec::new();
        let mut framing = head.framing();
        let mut keep = |d: &[u8]| body.extend_from_slice(&d[..d.len().min(ERROR_BODY_BYTES - body.len())]);
        let read = conn.read_body(&mut framing, &mut keep, ERROR_BODY_BYTES);
        let _ = tokio::time::timeout(ERROR_BODY_TIMEOUT, read).await;
        let body = String::from_utf8_lossy(&body);
        return Err((kind, format!("HTTP {}: {}", head.status, snippet(&body, 500))));
    }

    let mut framing = head.framing();
    let mut reader = StreamReader::new();
    loop {
        let arrived = elapsed_ns(t0);
        let mut outcome = Ok(None);
        let (used, ended) = framing.decode(&conn.buf[conn.start..], &mut |d| {
            if matches!(outcome, Ok(None)) {
                outcome = reader.feed(d, arrived, rec);
            }
        })?;
        conn.start += used;
        match outcome {
            Err(e) => return Err(e),
            Ok(Some(done)) => {
                // Read the body's end so the connection can be kept (bounded; the request's
                // timings are taken).
                let drained = tokio::time::timeout(DRAIN_AFTER_DONE, async {
                    if ended {
                        return true;
                    }
                    matches!(conn.read_body(&mut framing, &mut |_| {}, usize::MAX).await, Ok(true))
                })
                .await;
                if drained == Ok(true)
                    && head.keep_alive
                    && !matches!(framing, Framing::Close)
                    && conn.start == conn.buf.len()
                {
                    pool.put(&target.authority, conn.stream);
                }
                return done;
            }
            Ok(None) => {}
        }
        if ended {
            if head.keep_alive && conn.start == conn.buf.len() {
                pool.put(&target.authority, conn.stream);
            }
            rec.done_ns = Some(arrived);
            return Err(reader.missing_done());
        }
        match conn.read_more().await {
            Ok(0) => {
                rec.done_ns = Some(elapsed_ns(t0));
                return Err(match framing {
                    Framing::Close => reader.missing_done(),
                    _ => (ErrorKind::StreamReset, "the server closed the connection inside the body".into()),
                });
            }
            Ok(_) => {}
            Err(e) => {
                rec.done_ns = Some(elapsed_ns(t0));
                return Err((ErrorKind::StreamReset, format!("reading the body: {e}")));
            }
        }
    }
}
