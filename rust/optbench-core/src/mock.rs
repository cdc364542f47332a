//! A small OpenAI-compatible streaming server with known timing and injectable faults.
//!
//! It answers `POST /v1/completions` and `POST /v1/chat/completions` with SSE: it waits `ttft`
//! after reading the request, then sends `tokens` one-token chunks `gap` apart on absolute
//! deadlines (so the truth is known to the microsecond), then `usage` and `[DONE]`. Faults
//! replace parts of that script. `POST /tokenize` is missing (404), counts words, or hangs
//! ([`MockTokenize`]). It speaks just enough HTTP/1.1 for clients (keep-alive with
//! chunked streaming bodies, so pooled connections are reused as with real servers) and binds
//! where it is told (tests use `127.0.0.1:0`).
//!
//! **Capacity model.** With `slots = Some(s)`, at most `s` requests are *active* (decoded) at
//! once; the others wait, after their response headers, in a first-in first-out queue. A
//! request's first token is due `ttft` after it gets its slot, so its TTFT is its queue wait plus
//! `ttft`. After each token the next one is due `gap × (1 + gap_growth × (active − 1))` later,
//! `active` being the number of requests holding a slot at that moment (itself included);
//! deadlines are chained, so a late write does not delay the next one. With `slots = None` every
//! request is active as soon as it is read, and `gap_growth` applies to all of them.
//!
//! **Text.** Token `i` is ` tokD`, `D` a digit from a hash of the request's prompt (the JSON of
//! `prompt`, or of `messages` for chat) and `i`: the same prompt always gets the same answer,
//! different prompts (almost always) different ones. With `diverge = Some(d)`, when token
//! `d.at` is due and more than `d.above` requests are active, that token and every later one of
//! the request come from another sequence, each differing from the token it replaces: the answer
//! changes under load from token `d.at` on, as with a batching bug.
//!
//! **Tokens per chunk.** With `tokens_per_chunk = k`, each chunk carries `k` tokens (the last
//! one what is left), chunks `gap` apart, as vLLM does under load. When the request asks for
//! `stream_options.continuous_usage_stats`, every chunk carries the cumulative `usage`
//! (as vLLM sends it); otherwise only the final usage chunk does. Faults count chunks.
//!
//! **Reasoning.** With `reasoning_tokens = k`, the chat endpoint sends the first `k` tokens
//! (` thinkD`) as `delta.reasoning_content` and the rest as `delta.content`, as vLLM with a
//! reasoning parser does (a chunk that straddles the boundary carries both fields). When the
//! request asks for `stream_options.include_usage`, its usage (the final one and the cumulative
//! ones) carries `completion_tokens_details.reasoning_tokens`; otherwise the usage has no details
//! (as vLLM's). The completions endpoint has no split: all tokens are `text`. The log says when
//! the first answer token was written.
//!
//! **Prefix cache.** With `prefix_cache = Some(n)`, the server remembers the last `n` prompts it
//! read, as whitespace-separated words (the words of `prompt`, or of the messages' contents for
//! chat). A prompt's tokens are a BOS and its words (what `/tokenize` counts with `add_special`);
//! its cached tokens are its longest leading run of words shared with any remembered prompt plus
//! the BOS when that run is not empty, at most all tokens but one (a server always computes the
//! last prompt token). Its `usage` then says `prompt_tokens` and
//! `prompt_tokens_details.cached_tokens`, and its `ttft` shrinks to `ttft × uncached / total`.
//! A prompt is remembered when it is read, so the truth does not depend on answer timing.
//! Without it, `usage.prompt_tokens` is always 7.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the server does wrong, if anything.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Streams normally.
    None,
    /// Answers with this HTTP status and a JSON error body.
    Status(u16),
    /// Resets the TCP connection (RST) after this many token chunks.
    ResetAfter(usize),
    /// Sends a chunk that is not JSON after this many token chunks.
    MalformedAfter(usize),
    /// Closes the stream cleanly without `data: [DONE]`.
    NoDone,
    /// Waits this long before sending the response headers.
    SlowHeaders(Duration),
    /// Leaves out the `usage` chunk (and the usage of every chunk).
    NoUsage,
    /// Answers with this redirect status (3xx) and `Location` header, without a body.
    Redirect(u16, String),
}

/// How the server answers `POST /tokenize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockTokenize {
    /// 404, as servers without the endpoint answer.
    Missing,
    /// `{"tokens": [...]}` with one token per whitespace-separated word of `content`/`prompt`,
    /// plus one for `add_special`.
    Words,
    /// Reads the request and never answers (a stuck server).
    Hang,
}

/// How the server waits for a token's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockTimer {
    /// Sleeps to 1 ms before the deadline, then yields until it: sub-millisecond sends, but each
    /// waiting stream spins for up to 1 ms, so it suits tests with a few streams.
    Precise,
    /// tokio's timer alone: sends up to ~1 ms after the deadline, with no spinning, so hundreds
    /// of streams fit on one core. The log records when each token was actually written.
    Coarse,
}

/// Answers that change under load: see the module's documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Diverge {
    /// The answer changes when more than this many requests are active.
    pub above: usize,
    /// The first token that changes (counted from 0).
    pub at: usize,
}

/// How the server answers.
#[derive(Debug, Clone)]
pub struct MockBehavior {
    /// Delay from reading the request to the first token chunk.
    pub ttft: Duration,
    /// Gap between token chunks (0 = as fast as possible).
    pub gap: Duration,
    /// Token chunks per response (overridden by a smaller `max_tokens` in the request).
    pub tokens: usize,
    /// The fault to inject.
    pub fault: Fault,
    /// How deadlines are waited for.
    pub timer: MockTimer,
    /// The model name `/v1/models` lists.
    pub model: String,
    /// How `POST /tokenize` is answered.
    pub tokenize: MockTokenize,
    /// Requests decoded at once (None: no limit); the others wait in a FIFO queue.
    pub slots: Option<usize>,
    /// How the gap grows with the active requests: `gap × (1 + gap_growth × (active − 1))`.
    pub gap_growth: f64,
    /// Answers that change under load (None: never).
    pub diverge: Option<Diverge>,
    /// Tokens in each chunk (at least 1).
    pub tokens_per_chunk: usize,
    /// The first this many tokens of a chat answer are reasoning (0: none).
    pub reasoning_tokens: usize,
    /// Remember this many prompts and serve their common prefixes from a cache (None: no cache);
    /// see the module's documentation.
    pub prefix_cache: Option<usize>,
}

impl Default for MockBehavior {
    fn default() -> Self {
        MockBehavior {
            ttft: Duration::from_millis(20),
            gap: Duration::from_millis(5),
            tokens: 16,
            fault: Fault::None,
            timer: MockTimer::Precise,
            model: "optbench-mock".to_string(),
            tokenize: MockTokenize::Missing,
            slots: None,
            gap_growth: 0.0,
            diverge: None,
            tokens_per_chunk: 1,
            reasoning_tokens: 0,
            prefix_cache: None,
        }
    }
}

/// Server-side truth about one answered request.
#[derive(Debug, Clone)]
pub struct MockRequestLog {
    /// Arrival order, from 0, never reused (also not after `clear_log`).
    pub id: u64,
    /// When the request was fully read, relative to the server's start.
    pub received: Duration,
    /// When the first token chunk was written (if it was).
    pub first_token_sent: Option<Duration>,
    /// When the last token chunk was written (if any was).
    pub last_token_sent: Option<Duration>,
    /// When the first chunk carrying answer tokens (not reasoning) was written (if it was).
    pub first_answer_token_sent: Option<Duration>,
    /// Tokens written (reasoning and answer).
    pub tokens_sent: usize,
    /// Of those, reasoning tokens.
    pub reasoning_tokens_sent: usize,
    /// Requests in flight when this one arrived (itself included).
    pub concurrent_at_arrival: usize,
    /// When it got its slot (the end of its queue wait; with no slot limit, when it was read).
    pub slot_acquired: Option<Duration>,
    /// Whether its answer changed under load (see [`Diverge`]).
    pub diverged: bool,
    /// The `messages` a chat request carried (what a multi-turn client sent as history).
    pub messages: Option<serde_json::Value>,
    /// The TCP connection it came on, numbered from 0 in the order they were accepted.
    pub connection: usize,
    /// Requests of any kind (`GET`s too) read on that connection before this one: 0 when the
    /// request opened its connection (and its client paid the handshake).
    pub earlier_on_connection: usize,
}

struct State {
    behavior: MockBehavior,
    started: Instant,
    in_flight: AtomicUsize,
    active: AtomicUsize,
    queue: Option<tokio::sync::Semaphore>,
    connections: AtomicUsize,
    next_id: AtomicU64,
    log: Mutex<Vec<MockRequestLog>>,
    /// The prompts the prefix cache remembers (as words), oldest first.
    seen: Mutex<VecDeque<Vec<String>>>,
}

/// A running mock server; stops when dropped.
pub struct MockServer {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((socket, _)) = accepted else { continue };
        let connection = state.connections.fetch_add(1, Ordering::SeqCst);
        let _ = socket.set_nodelay(true);
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = serve(socket, &state, connection) => {}
            }
        });
    }
}

impl MockServer {
    fn new_state(behavior: MockBehavior) -> Arc<State> {
        Arc::new(State {
            behavior: behavior.clone(),
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            // tokio's semaphore is fair: waiters get permits in the order they asked.
            queue: behavior.slots.map(tokio::sync::Semaphore::new),
            connections: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            seen: Mutex::new(VecDeque::new()),
        })
    }

    /// Starts on `bind` (e.g. `127.0.0.1:0`) on the current tokio runtime.
    pub async fn start(bind: &str, behavior: MockBehavior) -> std::io::Result<MockServer> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let state = Self::new_state(behavior);
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, state.clone(), stop.clone()));
        Ok(MockServer { addr, state, stop, thread: None })
    }

    /// Starts on `bind` on a thread of its own with its own single-threaded runtime, so its
    /// timing does not share worker threads with the client under test (as a real server's
    /// would not).
    pub fn start_dedicated(bind: &str, behavior: MockBehavior) -> std::io::Result<MockServer> {
        let std_listener = std::net::TcpListener::bind(bind)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let state = Self::new_state(behavior);
        let stop = CancellationToken::new();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (thread_state, thread_stop) = (state.clone(), stop.clone());
        let thread = std::thread::Builder::new().name("optbench-mock".into()).spawn(move || {
            runtime.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener on runtime");
                accept_loop(listener, thread_state, thread_stop).await;
            });
        })?;
        Ok(MockServer { addr, state, stop, thread: Some(thread) })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server-side log of every request answered so far.
    pub fn log(&self) -> Vec<MockRequestLog> {
        self.state.log.lock().expect("mock log").clone()
    }

    /// TCP connections accepted so far (a client that reuses connections opens few).
    pub fn connections_accepted(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Empties the log (between benchmark runs against one server).
    pub fn clear_log(&self) {
        self.state.log.lock().expect("mock log").clear();
    }

    /// Stops accepting connections and cuts answers in progress.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One parsed HTTP request.
struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

/// Reads one HTTP request. Bytes past it stay in `buf` for the next.
async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<Request>> {
    let mut tmp = [0u8; 8192];
    let header_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = socket.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or("GET").to_string();
    let path = words.next().unwrap_or("/").to_string();
    let content_length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buf.len() < header_end + content_length {
        let n = socket.read(&mut tmp).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let end = (header_end + content_length).min(buf.len());
    let body = buf[header_end..end].to_vec();
    buf.drain(..end);
    Ok(Some(Request { method, path, body }))
}

struct InFlight<'a>(&'a AtomicUsize);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(mut socket: TcpStream, state: &State, connection: usize) -> std::io::Result<()> {
    let mut pending = Vec::new();
    let mut earlier = 0;
    while let Some(request) = read_request(&mut socket, &mut pending).await? {
        earlier += 1;
        let path = request.path.split('?').next().unwrap_or("/");
        if request.method == "POST" && path == "/tokenize" {
            answer_tokenize(&mut socket, state.behavior.tokenize, &request.body).await?;
            continue;
        }
        if request.method == "GET" || path.starts_with("/mock/") {
            answer_other(&mut socket, state, &request.method, path).await?;
            continue;
        }
        if !answer(&mut socket, state, path, &request.body, (connection, earlier - 1)).await? {
            break;
        }
    }
    Ok(())
}

/// Writes one chunk of a chunked body.
async fn chunk(socket: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
    framed.extend_from_slice(data);
    framed.extend_from_slice(b"\r\n");
    socket.write_all(&framed).await
}

/// Writes a complete JSON response on a kept-alive connection.
async fn json_response(socket: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(body.as_bytes()).await
}

/// The log as JSON: one object per request, times in seconds since the server started.
pub fn log_json(log: &[MockRequestLog]) -> String {
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    let rows: Vec<serde_json::Value> = log
        .iter()
        .map(|l| {
            serde_json::json!({
                "id": l.id,
                "received_s": l.received.as_secs_f64(),
                "first_token_sent_s": secs(l.first_token_sent),
                "last_token_sent_s": secs(l.last_token_sent),
                "first_answer_token_sent_s": secs(l.first_answer_token_sent),
                "tokens_sent": l.tokens_sent,
                "reasoning_tokens_sent": l.reasoning_tokens_sent,
                "concurrent_at_arrival": l.concurrent_at_arrival,
                "slot_acquired_s": secs(l.slot_acquired),
                "diverged": l.diverged,
                "messages": l.messages,
                "connection": l.connection,
                "earlier_on_connection": l.earlier_on_connection,
            })
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

/// `POST /tokenize` as `how` says.
async fn answer_tokenize(socket: &mut TcpStream, how: MockTokenize, body: &[u8]) -> std::io::Result<()> {
    match how {
        MockTokenize::Missing => json_response(socket, "404 Not Found", "{\"error\":\"not found\"}").await,
        // Until the server stops (which ends every connection's task).
        MockTokenize::Hang => std::future::pending().await,
        MockTokenize::Words => {
            let request: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let text = request["content"].as_str().or(request["prompt"].as_str()).unwrap_or("");
            let special = usize::from(request["add_special"].as_bool().unwrap_or(false));
            let tokens: Vec<usize> = (0..text.split_whitespace().count() + special).collect();
            json_response(socket, "200 OK", &serde_json::json!({ "tokens": tokens }).to_string()).await
        }
    }
}

/// Health, model list and the truth log: what clients and benchmarks ask besides completions.
async fn answer_other(socket: &mut TcpStream, state: &State, method: &str, path: &str) -> std::io::Result<()> {
    match (method, path) {
        ("GET", "/health") => json_response(socket, "200 OK", "{\"status\":\"ok\"}").await,
        ("GET", "/v1/models") => {
            let body = serde_json::json!({
                "object": "list",
                "data": [{"id": state.behavior.model, "object": "model", "owned_by": "optbench"}],
            });
            json_response(socket, "200 OK", &body.to_string()).await
        }
        ("GET", "/mock/log") => {
            let body = log_json(&state.log.lock().expect("mock log"));
            json_response(socket, "200 OK", &body).await
        }
        ("GET", "/mock/clock") => {
            let body = serde_json::json!({
                "now_s": state.started.elapsed().as_secs_f64(),
                "connections_accepted": state.connections.load(Ordering::SeqCst),
            });
            json_response(socket, "200 OK", &body.to_string()).await
        }
        ("POST", "/mock/reset") => {
            state.log.lock().expect("mock log").clear();
            json_response(socket, "200 OK", "{\"status\":\"ok\"}").await
        }
        _ => json_response(socket, "404 Not Found", "{\"error\":\"not found\"}").await,
    }
}

/// Updates request `id`'s log entry. The log may have been cleared (between benchmark runs)
/// while the request streamed; requests are logged in id order, so a binary search finds it if
/// it is still there.
fn update_log(state: &State, id: u64, f: impl FnOnce(&mut MockRequestLog)) {
    let mut log = state.log.lock().expect("mock log");
    if let Ok(at) = log.binary_search_by_key(&id, |l| l.id) {
        f(&mut log[at]);
    }
}

/// FNV-1a over the JSON text of the request's prompt (`messages` for chat): the answer's seed.
fn prompt_hash(request: &serde_json::Value, chat: bool) -> u64 {
    let prompt = if chat { &request["messages"] } else { &request["prompt"] };
    prompt.to_string().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The words of a request's prompt: of `prompt`, or of each message's `content` for chat.
fn prompt_words(request: &serde_json::Value, chat: bool) -> Vec<String> {
    let texts: Vec<&str> = if chat {
        request["messages"].as_array().map_or(Vec::new(), |m| m.iter().filter_map(|m| m["content"].as_str()).collect())
    } else {
        request["prompt"].as_str().into_iter().collect()
    };
    texts.iter().flat_map(|t| t.split_whitespace()).map(str::to_string).collect()
}

/// The prefix cache's answer for a prompt of `words`: `(prompt tokens, cached tokens)`, a BOS
/// included (see the module's documentation), the prompt then remembered (the oldest forgotten beyond `capacity`).
fn prefix_cache_lookup(seen: &Mutex<VecDeque<Vec<String>>>, capacity: usize, words: Vec<String>) -> (usize, usize) {
    let mut seen = seen.lock().expect("mock prefix cache");
    let common = |other: &Vec<String>| words.iter().zip(other).take_while(|(a, b)| a == b).count();
    let longest = seen.iter().map(common).max().unwrap_or(0);
    // The BOS counts as a token, and as cached with a shared run of words.
    let total = words.len() + 1;
    let cached = if longest > 0 { (longest + 1).min(total - 1) } else { 0 };
    if capacity > 0 {
        if seen.len() >= capacity {
            seen.pop_front();
        }
        seen.push_back(words);
    }
    (total, cached)
}

/// splitmix64's finaliser: spreads the bits of `x`.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The digit of token `i` of an answer with `seed`; a diverged token is always another digit.
pub fn token_digit(seed: u64, i: usize, diverged: bool) -> u64 {
    let digit = mix(seed ^ mix(i as u64 + 1)) % 10;
    if diverged {
        (digit + 1 + mix(seed.rotate_left(17) ^ mix(i as u64 + 1)) % 9) % 10
    } else {
        digit
    }
}

/// Answers one request; returns whether the connection can be reused.
/// Answers a completion request; `(connection, earlier)`: the connection it came on and the
/// requests read on it before (for the log).
async fn answer(
    socket: &mut TcpStream,
    state: &State,
    path: &str,
    body: &[u8],
    (connection, earlier_on_connection): (usize, usize),
) -> std::io::Result<bool> {
    let received_at = Instant::now();
    let concurrent = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let _guard = InFlight(&state.in_flight);
    // The id is taken under the log's lock so the log stays sorted by id.
    let id = {
        let mut log = state.log.lock().expect("mock log");
        let id = state.next_id.fetch_add(1, Ordering::SeqCst);
        log.push(MockRequestLog {
            id,
            received: received_at - state.started,
            first_token_sent: None,
            last_token_sent: None,
            first_answer_token_sent: None,
            tokens_sent: 0,
            reasoning_tokens_sent: 0,
            concurrent_at_arrival: concurrent,
            slot_acquired: None,
            diverged: false,
            messages: None,
            connection,
            earlier_on_connection,
        });
        id
    };
    let b = &state.behavior;
    let request: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let chat = path.ends_with("/chat/completions");
    if chat {
        update_log(state, id, |entry| entry.messages = Some(request["messages"].clone()));
    }
    if !(chat || path.ends_with("/completions")) {
        let msg = b"{\"error\":\"not found\"}";
        let head = format!(
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            msg.len()
        );
        socket.write_all(head.as_bytes()).await?;
        socket.write_all(msg).await?;
        socket.shutdown().await?;
        return Ok(false);
    }
    let tokens = request["max_tokens"].as_u64().map_or(b.tokens, |m| (m as usize).min(b.tokens));
    // The prefix cache: (prompt tokens, cached tokens), and the TTFT it leaves.
    let cache = b.prefix_cache.map(|n| prefix_cache_lookup(&state.seen, n, prompt_words(&request, chat)));
    let ttft = match cache {
        Some((total, cached)) => b.ttft.mul_f64((total - cached) as f64 / total as f64),
        None => b.ttft,
    };
    let prompt_usage = match cache {
        Some((total, cached)) => (total, format!(",\"prompt_tokens_details\":{{\"cached_tokens\":{cached}}}")),
        None => (7, String::new()),
    };
    match &b.fault {
        Fault::Status(code) => {
            let msg = format!("{{\"error\":{{\"message\":\"injected status {code}\"}}}}");
            let head = format!(
                "HTTP/1.1 {code} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                msg.len()
            );
            socket.write_all(head.as_bytes()).await?;
            socket.write_all(msg.as_bytes()).await?;
            socket.shutdown().await?;
            return Ok(false);
        }
        Fault::Redirect(code, location) => {
            let head = format!(
                "HTTP/1.1 {code} Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            socket.write_all(head.as_bytes()).await?;
            socket.shutdown().await?;
            return Ok(false);
        }
        Fault::SlowHeaders(d) => tokio::time::sleep(*d).await,
        _ => {}
    }
    socket
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await?;
    // The fields real servers put in every chunk; some clients insist on them.
    let model = request["model"].as_str().unwrap_or(&b.model);
    let model = serde_json::to_string(model).unwrap_or_else(|_| "\"\"".into());
    let object = if chat { "chat.completion.chunk" } else { "text_completion" };
    let head = format!("\"id\":\"cmpl-{id}\",\"object\":\"{object}\",\"created\":0,\"model\":{model}");
    if chat {
        let role = format!(
            "data: {{{head},\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}}}}]}}\n\n"
        );
        chunk(socket, role.as_bytes()).await?;
    }
    // The queue: wait for a slot (FIFO), then count as active until the answer ends.
    let _permit = match &state.queue {
        Some(queue) => Some(queue.acquire().await.expect("the mock's queue is never closed")),
        None => None,
    };
    let slot_at = Instant::now();
    state.active.fetch_add(1, Ordering::SeqCst);
    let _active = InFlight(&state.active);
    update_log(state, id, |entry| entry.slot_acquired = Some(slot_at - state.started));
    let seed = prompt_hash(&request, chat);
    let mut diverged = false;
    let mut due = if b.slots.is_some() { slot_at + ttft } else { received_at + ttft };
    let per_chunk = b.tokens_per_chunk.max(1);
    let continuous_usage =
        request["stream_options"]["continuous_usage_stats"].as_bool() == Some(true) && b.fault != Fault::NoUsage;
    // Reasoning: chat only; its count in the usage when the request asks for usage.
    let thinking = if chat { b.reasoning_tokens.min(tokens) } else { 0 };
    let usage_details = |done: usize| {
        if thinking > 0 && request["stream_options"]["include_usage"].as_bool() == Some(true) {
            format!(",\"completion_tokens_details\":{{\"reasoning_tokens\":{}}}", done.min(thinking))
        } else {
            String::new()
        }
    };
    for (i, first) in (0..tokens).step_by(per_chunk).enumerate() {
        if i > 0 {
            let active = state.active.load(Ordering::SeqCst).max(1);
            due += if b.gap_growth == 0.0 {
                b.gap
            } else {
                b.gap.mul_f64((1.0 + b.gap_growth * (active - 1) as f64).max(0.0))
            };
        }
        match b.timer {
            MockTimer::Precise => crate::schedule::precise_sleep_until(due).await,
            MockTimer::Coarse => tokio::time::sleep_until(due).await,
        }
        let end = (first + per_chunk).min(tokens);
        if let Some(d) = b.diverge {
            if (first..end).contains(&d.at) && state.active.load(Ordering::SeqCst) > d.above {
                diverged = true;
                update_log(state, id, |entry| entry.diverged = true);
            }
        }
        match &b.fault {
            Fault::ResetAfter(n) if i == *n => {
                // SO_LINGER 0 makes the close send RST instead of FIN.
                socket.set_zero_linger()?;
                return Ok(false); // dropping the socket sends the RST
            }
            Fault::MalformedAfter(n) if i == *n => {
                chunk(socket, b"data: {\"choices\": [{\"text\": \"oops\"\n\n").await?;
                continue;
            }
            _ => {}
        }
        let words = |range: std::ops::Range<usize>, word: &str| -> String {
            range
                .map(|j| {
                    // Tokens before the divergence point keep their digits.
                    let digit = token_digit(seed, j, diverged && b.diverge.is_some_and(|d| j >= d.at));
                    format!(" {word}{digit}")
                })
                .collect()
        };
        let text = words(first.max(thinking)..end, "tok");
        let reasoning = words(first.min(thinking)..end.min(thinking), "think");
        let usage = if continuous_usage {
            let (p, details) = &prompt_usage;
            format!(
                ",\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":{end},\"total_tokens\":{}{details}{}}}",
                end + p,
                usage_details(end)
            )
        } else {
            String::new()
        };
        let event = if chat {
            let delta = match (reasoning.is_empty(), text.is_empty()) {
                (true, _) => format!("{{\"content\":\"{text}\"}}"),
                (false, true) => format!("{{\"reasoning_content\":\"{reasoning}\"}}"),
                (false, false) => format!("{{\"reasoning_content\":\"{reasoning}\",\"content\":\"{text}\"}}"),
            };
            format!(
                "data: {{{head},\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":null}}]{usage}}}\n\n"
            )
        } else {
            format!(
                "data: {{{head},\"choices\":[{{\"index\":0,\"text\":\"{text}\",\"finish_reason\":null}}]{usage}}}\n\n"
            )
        };
        chunk(socket, event.as_bytes()).await?;
        let sent = Instant::now() - state.started;
        update_log(state, id, |entry| {
            if i == 0 {
                entry.first_token_sent = Some(sent);
            }
            entry.last_token_sent = Some(sent);
            if end > thinking && entry.first_answer_token_sent.is_none() {
                entry.first_answer_token_sent = Some(sent);
            }
            entry.tokens_sent = end;
            entry.reasoning_tokens_sent = end.min(thinking);
        });
    }
    let finish = if chat {
        format!("data: {{{head},\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"length\"}}]}}\n\n")
    } else {
        format!("data: {{{head},\"choices\":[{{\"index\":0,\"text\":\"\",\"finish_reason\":\"length\"}}]}}\n\n")
    };
    chunk(socket, finish.as_bytes()).await?;
    if b.fault != Fault::NoUsage {
        let (p, details) = &prompt_usage;
        let usage = format!(
            "data: {{{head},\"choices\":[],\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":{tokens},\"total_tokens\":{}{details}{}}}}}\n\n",
            tokens + p,
            usage_details(tokens)
        );
        chunk(socket, usage.as_bytes()).await?;
    }
    if b.fault != Fault::NoDone {
        chunk(socket, b"data: [DONE]\n\n").await?;
    }
    socket.write_all(b"0\r\n\r\n").await?;
    Ok(true)
}

#[cfg(test)]
mod prefix_cache_tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn cached_tokens_are_the_longest_remembered_prefix_with_the_bos() {
        let seen = Mutex::new(VecDeque::new());
        // (prompt tokens = words + BOS, cached tokens)
        assert_eq!(prefix_cache_lookup(&seen, 2, words("a b c d")), (5, 0));
        assert_eq!(prefix_cache_lookup(&seen, 2, words("a b x y z")), (6, 3));
        assert_eq!(prefix_cache_lookup(&seen, 2, words("q r")), (3, 0));
        // The same prompt again: all tokens but the last one.
        assert_eq!(prefix_cache_lookup(&seen, 2, words("q r")), (3, 2));
        // Capacity 2: "a b c d" and "a b x y z" are forgotten by now.
        assert_eq!(prefix_cache_lookup(&seen, 2, words("a b c d")), (5, 0));
    }
}
