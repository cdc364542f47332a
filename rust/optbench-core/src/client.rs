//! One streamed request against an OpenAI-compatible server, measured byte by byte.

use std::borrow::Cow;
use std::ops::ControlFlow;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::error::{CoreError, Result};
use crate::record::{ErrorKind, RequestRecord, TokenCountSource};
#[cfg(test)]
use crate::sse::SseEvent;
use crate::sse::SseParser;

/// Which OpenAI-compatible endpoint requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/completions` with a `prompt`.
    Completions,
    /// `/v1/chat/completions` with `messages`.
    Chat,
}

impl Endpoint {
    /// Parses `completions` or `chat`.
    pub fn parse(name: &str) -> Result<Endpoint> {
        match name {
            "completions" => Ok(Endpoint::Completions),
            "chat" | "chat_completions" => Ok(Endpoint::Chat),
            other => Err(CoreError::config(format!("endpoint must be 'completions' or 'chat', got {other:?}"))),
        }
    }

    fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
        }
    }
}

/// A prompt as the endpoint takes it.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Plain text (sent as `prompt`, or as one user message to the chat endpoint).
    Text(String),
    /// A chat conversation: a JSON array of `{"role", "content"}` objects.
    Messages(serde_json::Value),
}

/// One request of a batch whose requests differ: its prompt, optionally its own endpoint, and
/// JSON fields that override the shared body (e.g. `max_tokens`, `stop`). Evaluation runs use
/// this to send every category with its own settings in one run.
#[derive(Debug, Clone)]
pub struct RequestInput {
    /// The prompt or conversation.
    pub prompt: Prompt,
    /// This request's endpoint; `None` uses the run's.
    pub endpoint: Option<Endpoint>,
    /// Fields merged into the body after the shared ones.
    pub body: serde_json::Map<String, serde_json::Value>,
}

impl From<Prompt> for RequestInput {
    fn from(prompt: Prompt) -> Self {
        RequestInput { prompt, endpoint: None, body: Default::default() }
    }
}

/// What every request of a run shares.
#[derive(Debug, Clone)]
pub struct RequestSettings {
    /// Server root, e.g. `http://127.0.0.1:8000` (a trailing `/v1` is accepted and dropped; see
    /// [`server_root`] for what is refused).
    pub base_url: String,
    /// The `model` field of each request.
    pub model: String,
    /// Completions or chat.
    pub endpoint: Endpoint,
    /// Sent as `Authorization: Bearer <key>` when set (checked by [`check_api_key`]).
    pub api_key: Option<String>,
    /// `max_tokens` of each request.
    pub max_tokens: u32,
    /// Sampling temperature (the reference load test uses 0).
    pub temperature: f64,
    /// Sends `ignore_eos: true` so every request generates exactly `max_tokens`.
    pub ignore_eos: bool,
    /// Extra JSON fields merged into every request body (they override the defaults).
    pub extra_body: serde_json::Map<String, serde_json::Value>,
    /// Per-request deadline, from sending to the end of the stream. `None` waits forever.
    pub request_timeout: Option<Duration>,
}

/// Normalises a user's base URL to the server root (no trailing `/` or `/v1`), or says what is
/// wrong with it as a [`CoreError::Config`] before any request is sent.
///
/// Accepted: an `http://` or `https://` URL with a host, an optional port and an optional path
/// prefix (a proxy's), with surrounding whitespace, a trailing `/` and a trailing `/v1`
/// dropped. Refused: any other scheme; whitespace or control characters inside the URL; a
/// port outside 1-65535 or any other URL syntax error; a query (`?...`) or fragment (`#...`);
/// and a URL that already names an endpoint, i.e. whose path ends in `/completions`
/// (`.../v1/completions`, `.../v1/chat/completions`). Such a URL is refused rather than
/// stripped: the endpoint is chosen with `endpoint`, and silently dropping the path could send
/// chat requests to the completions endpoint (or the reverse).
pub fn server_root(base_url: &str) -> Result<String> {
    let bad = |why: String| Err(CoreError::config(format!("base_url {base_url:?} {why}")));
    let trimmed = base_url.trim().trim_end_matches('/');
    let lower = trimmed.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return bad("must start with http:// or https://, e.g. http://127.0.0.1:8000".into());
    }
    if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("contains a space or a control character".into());
    }
    let url = match reqwest::Url::parse(trimmed) {
        Ok(url) => url,
        Err(e) => return bad(format!("is not a valid URL: {e}")),
    };
    if url.host_str().is_none_or(str::is_empty) {
        return bad("has no host".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return bad("must not have a query (?...) or a fragment (#...)".into());
    }
    if url.path().trim_end_matches('/').ends_with("/completions") {
        return bad("names an endpoint: give the server root (e.g. http://127.0.0.1:8000 or \
             http://127.0.0.1:8000/v1) and choose the endpoint with endpoint='completions' or 'chat'"
            .into());
    }
    let root = trimmed.strip_suffix("/v1").unwrap_or(trimmed);
    Ok(root.to_string())
}

/// Checks that `key` can be sent as an `Authorization: Bearer` header: printable ASCII only
/// (a key read from a file or variable with its trailing newline cannot be). The message does
/// not repeat the key.
pub fn check_api_key(key: &str) -> Result<()> {
    match reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")) {
        Ok(_) => Ok(()),
        Err(_) => Err(CoreError::config(
            "api_key contains a character that an HTTP header cannot carry (a newline, another \
             control character or a non-ASCII character); check where the key was read from",
        )),
    }
}

/// Idle keep-alive connections are dropped after this long: servers close theirs after about
/// 5 s (llama.cpp's cpp-httplib, uvicorn under vLLM and SGLang), and reusing one they just closed
/// fails the request.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// Builds the shared HTTP client: keep-alive pooling, no total timeout (long generations must
/// not be cut; the per-request deadline is separate), Nagle off, and redirects not followed: a
/// redirect is an answer of its own (the `http_3xx` kind, naming its `Location`), never a
/// silent hop to another host that would drop the `Authorization` header and time the wrong
/// server.
pub fn build_http_client(pool_size: usize) -> Result<reqwest::Client> {
    http_client_builder(pool_size).build().map_err(|e| CoreError::Http(format!("cannot build the HTTP client: {e}")))
}

/// [`build_http_client`] whose connections are counted by `counter` (a load test's, for its
/// preconnect report).
pub fn build_counted_http_client(
    pool_size: usize,
    counter: &crate::preconnect::ConnectionCounter,
) -> Result<reqwest::Client> {
    http_client_builder(pool_size)
        .connector_layer(counter.clone())
        .build()
        .map_err(|e| CoreError::Http(format!("cannot build the HTTP client: {e}")))
}

fn http_client_builder(pool_size: usize) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(pool_size.max(1))
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(30))
}

/// A failed HTTP exchange that a run depends on (not a measured request) as the error of its
/// kind: [`CoreError::Timeout`] past its deadline, [`CoreError::Connection`] when the server
/// could not be reached or dropped the connection, else [`CoreError::Http`]. `context` starts
/// the message (usually the URL).
pub fn exchange_error(context: &str, e: &reqwest::Error) -> CoreError {
    let message = format!("{context}: {e}");
    if e.is_timeout() {
        return CoreError::Timeout(message);
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                TimedOut => return CoreError::Timeout(message),
                ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | BrokenPipe | UnexpectedEof => {
                    return CoreError::Connection(message)
                }
                _ => {}
            }
        }
        source = cause.source();
    }
    if e.is_connect() {
        CoreError::Connection(message)
    } else {
        CoreError::Http(message)
    }
}

/// A request whose body is serialised before the run, so sending costs no JSON work.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    /// Full URL of the endpoint.
    pub url: String,
    /// The JSON body.
    pub body: Bytes,
}

impl RequestSettings {
    /// Checks the target (base URL and API key) and returns the server root; every failure is a
    /// [`CoreError::Config`] saying what to fix.
    pub fn check_target(&self) -> Result<String> {
        if let Some(key) = &self.api_key {
            check_api_key(key)?;
        }
        server_root(&self.base_url)
    }

    /// Serialises the request body for `prompt`.
    pub fn prepare(&self, prompt: &Prompt) -> Result<PreparedRequest> {
        self.prepare_input(&RequestInput::from(prompt.clone()))
    }

    /// Serialises the request body for one input, its overrides applied last. Fails on a bad
    /// target too ([`RequestSettings::check_target`]).
    pub fn prepare_input(&self, input: &RequestInput) -> Result<PreparedRequest> {
        let root = self.check_target()?;
        let endpoint = input.endpoint.unwrap_or(self.endpoint);
        let mut body = serde_json::Map::new();
        body.insert("model".into(), self.model.clone().into());
        match (endpoint, &input.prompt) {
            (Endpoint::Completions, Prompt::Text(t)) => {
                body.insert("prompt".into(), t.clone().into());
            }
            (Endpoint::Completions, Prompt::Messages(_)) => {
                return Err(CoreError::config("a chat conversation (messages) needs endpoint='chat'"))
            }
            (Endpoint::Chat, Prompt::Text(t)) => {
                body.insert("messages".into(), serde_json::json!([{ "role": "user", "content": t }]));
            }
            (Endpoint::Chat, Prompt::Messages(m)) => {
                body.insert("messages".into(), m.clone());
            }
        }
        body.insert("max_tokens".into(), self.max_tokens.into());
        body.insert("temperature".into(), self.temperature.into());
        body.insert("stream".into(), true.into());
        // `continuous_usage_stats` (vLLM) puts the cumulative usage in every chunk, which gives
        // the tokens of each chunk; servers without it ignore it and send usage at the end.
        body.insert(
            "stream_options".into(),
            serde_json::json!({ "include_usage": true, "continuous_usage_stats": true }),
        );
        if self.ignore_eos {
            body.insert("ignore_eos".into(), true.into());
        }
        for (k, v) in self.extra_body.iter().chain(&input.body) {
            body.insert(k.clone(), v.clone());
        }
        Ok(PreparedRequest {
            url: format!("{root}{}", endpoint.path()),
            body: Bytes::from(serde_json::to_vec(&body).expect("a JSON map serialises")),
        })
    }
}

#[derive(Deserialize)]
struct StreamChunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<Choice<'a>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default, borrow)]
    timings: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    /// The thinking of a reasoning model: `reasoning_content` (vLLM before 0.10, SGLang,
    /// llama.cpp's `--reasoning-format`) or `reasoning` (newer vLLM).
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    completion_tokens: Option<u32>,
    #[serde(default)]
    prompt_tokens: Option<u32>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionTokensDetails>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Deserialize)]
struct CompletionTokensDetails {
    #[serde(default)]
    reasoning_tokens: Option<u32>,
}

/// `usage.prompt_tokens_details` (OpenAI's; vLLM with `--enable-prompt-tokens-details`).
#[derive(Deserialize)]
struct PromptTokensDetails {
    #[serde(default)]
    cached_tokens: Option<u32>,
}

/// What the stream said at the end of an event.
enum Step {
    Continue,
    Done,
}

pub(crate) type Failure = (ErrorKind, String);

/// Cuts a body or chunk to a readable snippet.
pub(crate) fn snippet(text: &str, max_chars: usize) -> String {
    let mut s: String = text.chars().take(max_chars).collect();
    if text.chars().count() > max_chars {
        s.push('…');
    }
    s
}

/// The error and its causes on one line (reqwest hides the useful part in `source()`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// hyper's "connection closed before message completed": the server closed a keep-alive
/// connection as the request went out on it.
fn is_stale_connection(e: &reqwest::Error) -> bool {
    error_chain(e).contains("connection closed before message completed")
}

/// How long to wait for the end of a body after `data: [DONE]` before giving the connection up.
pub(crate) const DRAIN_AFTER_DONE: Duration = Duration::from_millis(200);

/// How much of an error answer's body is read for its `error_message` (the rest is dropped).
pub(crate) const ERROR_BODY_BYTES: usize = 8 * 1024;

/// How long reading an error answer's body may take.
pub(crate) const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// The first [`ERROR_BODY_BYTES`] of an error answer's body, as text (whatever arrived within
/// [`ERROR_BODY_TIMEOUT`]): a server that answers 500 with an endless body is not buffered.
async fn error_body(response: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    let read = async {
        while let Some(Ok(bytes)) = stream.next().await {
            let room = ERROR_BODY_BYTES - body.len();
            body.extend_from_slice(&bytes[..bytes.len().min(room)]);
            if body.len() >= ERROR_BODY_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(ERROR_BODY_TIMEOUT, read).await;
    String::from_utf8_lossy(&body).into_owned()
}

/// The message of a redirect: its status and where it pointed.
pub(crate) fn redirect_message(status: reqwest::StatusCode, headers: &reqwest::header::HeaderMap) -> String {
    let location = headers.get(reqwest::header::LOCATION).map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned());
    redirect_text(status.as_u16(), location.as_deref())
}

/// The message of a redirect with `status` to `location`.
pub(crate) fn redirect_text(status: u16, location: Option<&str>) -> String {
    let location = match location {
        Some(l) => format!("to {}", snippet(l, 300)),
        None => "without a Location header".to_string(),
    };
    format!(
        "HTTP {status}: redirected {location}; redirects are not followed: give the base_url of the server \
         that answers"
    )
}

pub(crate) fn elapsed_ns(t0: Instant) -> i64 {
    t0.elapsed().as_nanos() as i64
}

/// Sends one request and streams its answer into `rec`. Returns the failure, if any; `rec`
/// keeps everything measured up to that point either way. `rec.scheduled_ns` must be set.
pub async fn stream_request(
    client: &reqwest::Client,
    request: &PreparedRequest,
    api_key: Option<&str>,
    t0: Instant,
    rec: &mut RequestRecord,
) -> Result<(), Failure> {
    let outcome = stream_into(client, request, api_key, t0, rec).await;
    settle_reasoning_counts(rec);
    outcome
}

async fn stream_into(
    client: &reqwest::Client,
    request: &PreparedRequest,
    api_key: Option<&str>,
    t0: Instant,
    rec: &mut RequestRecord,
) -> Result<(), Failure> {
    let build = || {
        let builder = client
            .post(&request.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .body(request.body.clone());
        match api_key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    };
    rec.sent_ns = Some(elapsed_ns(t0));
    let mut attempt = 0;
    let response = loop {
        match build().send().await {
            Ok(r) => break r,
            // A pooled connection that the server closed while it sat idle: the request never
            // reached the server, so it is sent again on another connection. Its sent time stays
            // the first attempt's, so any delay this costs is inside its TTFT.
            Err(e) if attempt < 2 && !e.is_connect() && is_stale_connection(&e) => attempt += 1,
            Err(e) => {
                let kind = if e.is_connect() { ErrorKind::Connect } else { ErrorKind::ConnectionReset };
                return Err((kind, error_chain(&e)));
            }
        }
    };
    rec.first_byte_ns = Some(elapsed_ns(t0));
    let status = response.status();
    rec.http_status = Some(status.as_u16());
    if status.is_redirection() {
        return Err((ErrorKind::Http3xx, redirect_message(status, response.headers())));
    }
    if !status.is_success() {
        let kind = if status.is_client_error() { ErrorKind::Http4xx } else { ErrorKind::Http5xx };
        let body = error_body(response).await;
        return Err((kind, format!("HTTP {}: {}", status.as_u16(), snippet(&body, 500))));
    }

    let mut stream = response.bytes_stream();
    let mut reader = StreamReader::new();
    while let Some(item) = stream.next().await {
        // Timestamp on arrival, before any parsing.
        let arrived = elapsed_ns(t0);
        let bytes = item.map_err(|e| (ErrorKind::StreamReset, error_chain(&e)))?;
        if let Some(done) = reader.feed(&bytes, arrived, rec)? {
            drain_to_end(&mut stream).await;
            return done;
        }
    }
    rec.done_ns = Some(elapsed_ns(t0));
    Err(reader.missing_done())
}

/// Turns a response body's bytes, as they arrive, into the request's record: SSE events, then
/// each event's chunk. Shared by both transports.
pub(crate) struct StreamReader {
    parser: SseParser,
}

impl StreamReader {
    pub(crate) fn new() -> StreamReader {
        StreamReader { parser: SseParser::new() }
    }

    /// Takes bytes that arrived at `arrived`. `Some` once the stream said `data: [DONE]` (with
    /// the request's outcome; `rec.done_ns` is set), `None` while it goes on; a failure when
    /// an event was malformed, an error or too large (events completed before an oversized one
    /// still count).
    pub(crate) fn feed(
        &mut self,
        bytes: &[u8],
        arrived: i64,
        rec: &mut RequestRecord,
    ) -> Result<Option<Result<(), Failure>>, Failure> {
        let fed = self.parser.feed_with(bytes, |event, data| match handle_data(event, data, arrived, rec) {
            Ok(Step::Continue) => ControlFlow::Continue(()),
            Ok(Step::Done) => ControlFlow::Break(Ok(())),
            Err(failure) => ControlFlow::Break(Err(failure)),
        });
        match fed {
            Ok(None) => Ok(None),
            Ok(Some(Ok(()))) => {
                rec.done_ns = Some(arrived);
                Ok(Some(finish(rec)))
            }
            Ok(Some(Err(failure))) => Err(failure),
            Err(too_large) => {
                rec.done_ns = Some(arrived);
                Err((ErrorKind::MalformedChunk, too_large.to_string()))
            }
        }
    }

    /// The failure of a stream that ended without `data: [DONE]`.
    pub(crate) fn missing_done(&self) -> Failure {
        let partial = if self.parser.has_partial_event() { " (the last event was cut off)" } else { "" };
        (ErrorKind::MissingDone, format!("the stream ended without data: [DONE]{partial}"))
    }
}

/// Reads what follows `data: [DONE]` (the chunked body's last, empty chunk) so the connection
/// goes back to the pool: a body dropped before its end closes the connection, and the next
/// request would pay a new TCP handshake and an accept on the server, inside its TTFT. Bounded,
/// for servers that keep a stream open after `[DONE]`; the request's timings are already taken.
async fn drain_to_end<S>(stream: &mut S)
where
    S: futures_util::Stream + Unpin,
{
    let _ = tokio::time::timeout(DRAIN_AFTER_DONE, async { while stream.next().await.is_some() {} }).await;
}

#[cfg(test)]
fn handle_event(event: &SseEvent, arrived: i64, rec: &mut RequestRecord) -> Result<Step, Failure> {
    handle_data(event.event.as_deref(), &event.data, arrived, rec)
}

/// One event's data (and its `event:` name) into the record.
fn handle_data(event: Option<&str>, data: &str, arrived: i64, rec: &mut RequestRecord) -> Result<Step, Failure> {
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(Step::Done);
    }
    if data.is_empty() {
        return Ok(Step::Continue);
    }
    let chunk: StreamChunk = serde_json::from_str(data)
        .map_err(|e| (ErrorKind::MalformedChunk, format!("{e} in chunk {:?}", snippet(data, 200))))?;
    if let Some(err) = chunk.error {
        return Err((ErrorKind::StreamError, snippet(err.get(), 500)));
    }
    if event == Some("error") {
        return Err((ErrorKind::StreamError, snippet(data, 500)));
    }
    let usage_reasoning =
        chunk.usage.as_ref().and_then(|u| u.completion_tokens_details.as_ref()).and_then(|d| d.reasoning_tokens);
    if let Some(choice) = chunk.choices.first() {
        // Completions' `text` is all answer (no split there); chat splits the thinking off.
        let (answer, reasoning) = match (&choice.text, &choice.delta) {
            (Some(text), _) => (Some(text.as_ref()), None),
            (None, Some(d)) => (d.content.as_deref(), d.reasoning_content.as_deref().or(d.reasoning.as_deref())),
            (None, None) => (None, None),
        };
        let answer = answer.filter(|t| !t.is_empty());
        let reasoning = reasoning.filter(|t| !t.is_empty());
        if answer.is_some() || reasoning.is_some() {
            if rec.first_token_ns.is_none() {
                rec.first_token_ns = Some(arrived);
            }
            rec.last_token_ns = Some(arrived);
            rec.chunk_times_ns.push(arrived);
            rec.chunk_text_bytes.push((answer.map_or(0, str::len) + reasoning.map_or(0, str::len)) as u32);
            // The chunk's tokens: the rise of the cumulative count since the last token-carrying
            // chunk (tokens of chunks without text count in the next one), at least 1.
            let tokens = match chunk.usage.as_ref().and_then(|u| u.completion_tokens) {
                Some(n) => {
                    let counted: u32 = rec.chunk_tokens.iter().sum();
                    rec.chunk_tokens_source = Some(TokenCountSource::Usage);
                    n.saturating_sub(counted).max(1)
                }
                None => {
                    rec.chunk_tokens_source.get_or_insert(TokenCountSource::Chunks);
                    1
                }
            };
            rec.chunk_tokens.push(tokens);
            if let Some(text) = reasoning {
                rec.reasoning_text.push_str(text);
                rec.first_reasoning_token_ns.get_or_insert(arrived);
                rec.last_reasoning_token_ns = Some(arrived);
                // Counted per chunk until the usage says; a chunk carrying both counts as answer.
                if rec.reasoning_token_source != Some(TokenCountSource::Usage) {
                    let per_chunk = if answer.is_some() { 0 } else { tokens };
                    rec.reasoning_tokens = Some(rec.reasoning_tokens.unwrap_or(0) + per_chunk);
                    rec.reasoning_token_source = Some(TokenCountSource::Chunks);
                }
            }
            if let Some(text) = answer {
                rec.output_text.push_str(text);
                rec.first_answer_token_ns.get_or_insert(arrived);
                rec.answer_tokens = Some(rec.answer_tokens.unwrap_or(0) + tokens);
            }
        }
        if let Some(reason) = &choice.finish_reason {
            rec.finish_reason = Some(reason.to_string());
        }
    }
    if let Some(usage) = chunk.usage {
        if let Some(n) = usage.completion_tokens {
            rec.output_tokens = Some(n);
            rec.token_count_source = Some(TokenCountSource::Usage);
        }
        rec.prompt_tokens = usage.prompt_tokens.or(rec.prompt_tokens);
        rec.cached_tokens = usage.prompt_tokens_details.and_then(|d| d.cached_tokens).or(rec.cached_tokens);
    }
    // `reasoning_tokens: 0` is what servers send for models that do not reason: no reasoning.
    if let Some(n) = usage_reasoning.filter(|&n| n > 0 || rec.first_reasoning_token_ns.is_some()) {
        rec.reasoning_tokens = Some(n);
        rec.reasoning_token_source = Some(TokenCountSource::Usage);
    }
    if let Some(t) = chunk.timings {
        rec.server_timings = Some(t.get().to_string());
    }
    Ok(Step::Continue)
}

/// Settles a record's answer count once its stream ended (whatever way): a request without
/// reasoning has no reasoning or answer counts (its answer is all of `output_tokens`); with the
/// reasoning count from the usage, the answer is `output_tokens − reasoning_tokens`; otherwise
/// it stays the tokens of the answer-carrying chunks.
pub(crate) fn settle_reasoning_counts(rec: &mut RequestRecord) {
    let Some(reasoning) = rec.reasoning_tokens else {
        rec.answer_tokens = None;
        return;
    };
    match (rec.reasoning_token_source, rec.output_tokens, rec.token_count_source) {
        (Some(TokenCountSource::Usage), Some(out), Some(TokenCountSource::Usage)) => {
            rec.answer_tokens = Some(out.saturating_sub(reasoning));
        }
        _ => rec.answer_tokens = Some(rec.answer_tokens.unwrap_or(0)),
    }
}

fn finish(rec: &mut RequestRecord) -> Result<(), Failure> {
    if rec.first_token_ns.is_none() {
        return Err((ErrorKind::EmptyOutput, "the stream completed without any generated text".to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(endpoint: Endpoint) -> RequestSettings {
        RequestSettings {
            base_url: "http://127.0.0.1:8000/v1/".into(),
            model: "m".into(),
            endpoint,
            api_key: None,
            max_tokens: 16,
            temperature: 0.0,
            ignore_eos: true,
            extra_body: serde_json::Map::new(),
            request_timeout: None,
        }
    }

    #[test]
    fn bodies_always_ask_for_usage_and_pass_ignore_eos() {
        let p = settings(Endpoint::Completions).prepare(&Prompt::Text("hi".into())).unwrap();
        assert_eq!(p.url, "http://127.0.0.1:8000/v1/completions");
        let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["continuous_usage_stats"], true);
        assert_eq!(v["stream"], true);
        assert_eq!(v["ignore_eos"], true);
        assert_eq!(v["prompt"], "hi");
        let p = settings(Endpoint::Chat).prepare(&Prompt::Text("hi".into())).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v["messages"][0]["content"], "hi");
        assert!(p.url.ends_with("/v1/chat/completions"));
    }

    #[test]
    fn per_request_endpoint_and_overrides() {
        let mut body = serde_json::Map::new();
        body.insert("max_tokens".into(), 3.into());
        body.insert("stop".into(), serde_json::json!(["\n"]));
        let input = RequestInput {
            prompt: Prompt::Messages(serde_json::json!([{"role": "user", "content": "x"}])),
            endpoint: Some(Endpoint::Chat),
            body,
        };
        let p = settings(Endpoint::Completions).prepare_input(&input).unwrap();
        assert!(p.url.ends_with("/v1/chat/completions"));
        let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v["max_tokens"], 3);
        assert_eq!(v["stop"][0], "\n");
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn messages_need_the_chat_endpoint_and_urls_need_a_scheme() {
        let m = Prompt::Messages(serde_json::json!([{"role": "user", "content": "x"}]));
        assert!(settings(Endpoint::Completions).prepare(&m).is_err());
        assert!(server_root("localhost:8000").is_err());
    }

    fn ev(data: &str) -> SseEvent {
        SseEvent { event: None, data: data.into() }
    }

    #[test]
    fn role_only_and_empty_chunks_are_not_tokens() {
        let mut rec = RequestRecord::default();
        handle_event(&ev(r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#), 5, &mut rec).ok().unwrap();
        assert!(rec.first_token_ns.is_none());
        handle_event(&ev(r#"{"choices":[{"delta":{"content":"Hi"}}]}"#), 7, &mut rec).ok().unwrap();
        handle_event(&ev(r#"{"choices":[{"delta":{"reasoning_content":"hm"}}]}"#), 9, &mut rec).ok().unwrap();
        handle_event(&ev(r#"{"choices":[],"usage":{"completion_tokens":3,"prompt_tokens":4}}"#), 11, &mut rec)
            .ok()
            .unwrap();
        assert_eq!(rec.first_token_ns, Some(7));
        assert_eq!(rec.last_token_ns, Some(9));
        assert_eq!(rec.output_text, "Hi");
        assert_eq!(rec.reasoning_text, "hm");
        assert_eq!(rec.output_tokens, Some(3));
        assert_eq!(rec.prompt_tokens, Some(4));
        assert_eq!(rec.cached_tokens, None);
        let details = r#"{"choices":[],"usage":{"completion_tokens":3,"prompt_tokens":4,"prompt_tokens_details":{"cached_tokens":2}}}"#;
        handle_event(&ev(details), 12, &mut rec).ok().unwrap();
        assert_eq!(rec.cached_tokens, Some(2));
        assert_eq!(rec.token_count_source, Some(TokenCountSource::Usage));
    }

    fn chat(delta: &str) -> String {
        format!(r#"{{"choices":[{{"index":0,"delta":{delta}}}]}}"#)
    }

    #[test]
    fn reasoning_and_reasoning_content_are_both_thinking_and_kept_apart_from_the_answer() {
        for field in ["reasoning_content", "reasoning"] {
            let mut rec = RequestRecord { sent_ns: Some(0), ..Default::default() };
            let think = |t: &str| chat(&format!(r#"{{"{field}":"{t}"}}"#));
            handle_event(&ev(&chat(r#"{"role":"assistant","content":""}"#)), 1, &mut rec).ok().unwrap();
            handle_event(&ev(&think("Let me")), 2_000_000, &mut rec).ok().unwrap();
            // Servers put `"content": null` beside the thinking, and the other name as null.
            handle_event(&ev(&chat(&format!(r#"{{"content":null,"{field}":" think"}}"#))), 3_000_000, &mut rec)
                .ok()
                .unwrap();
            handle_event(
                &ev(&chat(r#"{"content":"42","reasoning_content":null,"reasoning":null}"#)),
                5_000_000,
                &mut rec,
            )
            .ok()
            .unwrap();
            handle_event(&ev(&chat(r#"{"content":"."}"#)), 7_000_000, &mut rec).ok().unwrap();
            settle_reasoning_counts(&mut rec);
            assert_eq!(rec.reasoning_text, "Let me think", "{field}");
            assert_eq!(rec.output_text, "42.", "{field}");
            assert_eq!(rec.first_token_ns, Some(2_000_000), "TTFT is the first token of any kind");
            assert_eq!(rec.ttft_reasoning_ms(), Some(2.0));
            assert_eq!(rec.ttft_answer_ms(), Some(5.0));
            assert_eq!(rec.last_reasoning_token_ns, Some(3_000_000));
            // No usage: one token per chunk, each chunk on its side.
            assert_eq!((rec.reasoning_tokens, rec.answer_tokens), (Some(2), Some(2)));
            assert_eq!(rec.reasoning_token_source, Some(TokenCountSource::Chunks));
            assert_eq!(rec.chunk_text_bytes.iter().sum::<u32>() as usize, "Let me think42.".len());
            // 2 tokens over the 1 ms between the reasoning chunks; 2 answer tokens over 2 ms.
            assert_eq!(rec.reasoning_tokens_per_s(), Some(2000.0));
            assert_eq!(rec.answer_tokens_per_s(), Some(1000.0));
        }
    }

    #[test]
    fn reasoning_counts_come_from_usage_details_when_the_server_sends_them() {
        let mut rec = RequestRecord::default();
        let usage = |delta: &str, n: u32, details: &str| {
            format!(r#"{{"choices":[{{"delta":{delta}}}],"usage":{{"completion_tokens":{n}{details}}}}}"#)
        };
        // Cumulative usage per chunk: the rise gives each chunk's tokens.
        handle_event(&ev(&usage(r#"{"reasoning_content":"a b"}"#, 2, "")), 1, &mut rec).ok().unwrap();
        handle_event(&ev(&usage(r#"{"reasoning_content":"c d e"}"#, 5, "")), 2, &mut rec).ok().unwrap();
        handle_event(&ev(&usage(r#"{"content":"x y"}"#, 7, "")), 3, &mut rec).ok().unwrap();
        assert_eq!((rec.reasoning_tokens, rec.answer_tokens), (Some(5), Some(2)));
        assert_eq!(rec.reasoning_token_source, Some(TokenCountSource::Chunks));
        // The final usage's details win over the chunk sums (here they disagree, on purpose).
        let last =
            r#"{"choices":[],"usage":{"completion_tokens":9,"completion_tokens_details":{"reasoning_tokens":6}}}"#;
        handle_event(&ev(last), 4, &mut rec).ok().unwrap();
        settle_reasoning_counts(&mut rec);
        assert_eq!(rec.output_tokens, Some(9));
        assert_eq!((rec.reasoning_tokens, rec.answer_tokens), (Some(6), Some(3)));
        assert_eq!(rec.reasoning_token_source, Some(TokenCountSource::Usage));
    }

    #[test]
    fn a_request_without_reasoning_has_no_reasoning_or_answer_counts() {
        let mut rec = RequestRecord { sent_ns: Some(0), ..Default::default() };
        handle_event(&ev(&chat(r#"{"content":"Hi"}"#)), 4, &mut rec).ok().unwrap();
        handle_event(&ev(&chat(r#"{"content":" there"}"#)), 6, &mut rec).ok().unwrap();
        // `reasoning_tokens: 0`, as servers report it for models that do not reason.
        let usage =
            r#"{"choices":[],"usage":{"completion_tokens":2,"completion_tokens_details":{"reasoning_tokens":0}}}"#;
        handle_event(&ev(usage), 7, &mut rec).ok().unwrap();
        settle_reasoning_counts(&mut rec);
        assert_eq!(rec.output_text, "Hi there");
        assert!(rec.reasoning_text.is_empty());
        assert_eq!((rec.reasoning_tokens, rec.answer_tokens, rec.reasoning_token_source), (None, None, None));
        assert_eq!((rec.first_reasoning_token_ns, rec.reasoning_tokens_per_s()), (None, None));
        assert_eq!(rec.first_answer_token_ns, rec.first_token_ns);
        // Completions' text is answer, whatever the model.
        let mut rec = RequestRecord::default();
        handle_event(&ev(r#"{"choices":[{"text":"<think>hm</think>1"}]}"#), 3, &mut rec).ok().unwrap();
        settle_reasoning_counts(&mut rec);
        assert_eq!((rec.output_text.as_str(), rec.reasoning_tokens), ("<think>hm</think>1", None));
    }

    #[test]
    fn chunk_tokens_come_from_the_rise_of_cumulative_usage() {
        let mut rec = RequestRecord::default();
        let usage =
            |text: &str, n: u32| format!(r#"{{"choices":[{{"text":"{text}"}}],"usage":{{"completion_tokens":{n}}}}}"#);
        // A chunk without usage first: one token, counted so until a chunk carries usage.
        let mut plain = RequestRecord::default();
        handle_event(&ev(r#"{"choices":[{"text":"x"}]}"#), 1, &mut plain).ok().unwrap();
        assert_eq!((plain.chunk_tokens.clone(), plain.chunk_tokens_source), (vec![1], Some(TokenCountSource::Chunks)));
        handle_event(&ev(&usage("a b", 2)), 1, &mut rec).ok().unwrap();
        handle_event(&ev(&usage("c", 3)), 2, &mut rec).ok().unwrap();
        // Tokens of a chunk without text count in the next chunk with text.
        handle_event(&ev(&usage("", 4)), 3, &mut rec).ok().unwrap();
        handle_event(&ev(&usage("d e", 6)), 4, &mut rec).ok().unwrap();
        // No rise (text held back by the server, then sent): still one token.
        handle_event(&ev(&usage("f", 6)), 5, &mut rec).ok().unwrap();
        // No usage in the chunk: one token.
        handle_event(&ev(r#"{"choices":[{"text":"g"}]}"#), 6, &mut rec).ok().unwrap();
        assert_eq!(rec.chunk_tokens, vec![2, 1, 3, 1, 1]);
        assert_eq!(rec.chunk_times_ns, vec![1, 2, 4, 5, 6]);
        assert_eq!(rec.chunk_tokens_source, Some(TokenCountSource::Usage));
    }

    #[test]
    fn malformed_and_error_chunks_fail() {
        let mut rec = RequestRecord::default();
        let e = handle_event(&ev("{not json"), 1, &mut rec).err().unwrap();
        assert_eq!(e.0, ErrorKind::MalformedChunk);
        let e = handle_event(&ev(r#"{"error":{"message":"overloaded"}}"#), 1, &mut rec).err().unwrap();
        assert_eq!(e.0, ErrorKind::StreamError);
        assert!(e.1.contains("overloaded"));
    }

    #[tokio::test]
    async fn exchange_errors_keep_their_kind() {
        let client = build_http_client(1).unwrap();
        // Refused: a port that was just free.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}/tokenize");
        let e = client.post(&url).send().await.unwrap_err();
        assert!(matches!(exchange_error(&url, &e), CoreError::Connection(m) if m.starts_with(&url)));
        // Timed out: a server that accepts and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/tokenize", silent.local_addr().unwrap());
        let e = client.post(&url).timeout(Duration::from_millis(100)).send().await.unwrap_err();
        assert!(matches!(exchange_error(&url, &e), CoreError::Timeout(_)));
    }

    #[test]
    fn bad_targets_are_config_errors_before_any_request() {
        let refused = |url: &str| {
            let e = server_root(url).unwrap_err();
            assert!(matches!(e, CoreError::Config(_)), "{url}: {e}");
            e.to_string()
        };
        assert!(refused("http://127.0.0.1:99999").contains("invalid port"));
        assert!(refused("http://127.0.0.1:8000/ v1").contains("space"));
        assert!(refused("http://exa mple:8000").contains("space"));
        assert!(refused("ftp://127.0.0.1:8000").contains("http://"));
        assert!(refused("127.0.0.1:8000").contains("http://"));
        assert!(refused("http://127.0.0.1:8000?key=1").contains("query"));
        assert!(refused("http://").contains("base_url"));
        for url in ["http://h:8000/v1/completions", "http://h:8000/v1/chat/completions/", "http://h/p/v1/completions"] {
            assert!(refused(url).contains("endpoint='completions' or 'chat'"), "{url}");
        }
        // What is accepted, normalised.
        assert_eq!(server_root(" http://h:8000/v1/ ").unwrap(), "http://h:8000");
        assert_eq!(server_root("https://h/proxy/v1").unwrap(), "https://h/proxy");
        assert_eq!(server_root("HTTP://H:8000").unwrap(), "HTTP://H:8000");

        let mut s = settings(Endpoint::Completions);
        s.api_key = Some("sk-abc\n".into());
        let e = s.prepare(&Prompt::Text("hi".into())).unwrap_err();
        assert!(matches!(&e, CoreError::Config(m) if m.contains("api_key") && !m.contains("sk-abc")), "{e}");
        s.api_key = Some("sk-\u{7}abc".into());
        assert!(s.check_target().is_err());
        s.api_key = Some("sk-abc.DEF_123".into());
        assert_eq!(s.check_target().unwrap(), "http://127.0.0.1:8000");
    }

    #[test]
    fn a_redirect_names_its_location() {
        let mut headers = reqwest::header::HeaderMap::new();
        let status = reqwest::StatusCode::TEMPORARY_REDIRECT;
        assert!(redirect_message(status, &headers).contains("without a Location"));
        headers.insert(reqwest::header::LOCATION, "http://elsewhere:9000/v1/completions".parse().unwrap());
        let m = redirect_message(status, &headers);
        assert!(m.starts_with("HTTP 307: redirected to http://elsewhere:9000/v1/completions"), "{m}");
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::super::*;
        use crate::sse::SseParser;

        /// JSON values shaped like stream chunks often enough to reach every field: objects with
        /// the protocol's keys (and others), holding any JSON.
        fn json() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<u64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(serde_json::Value::from),
                ".{0,12}".prop_map(serde_json::Value::from),
            ];
            let key = prop_oneof![
                Just("choices"),
                Just("usage"),
                Just("error"),
                Just("timings"),
                Just("text"),
                Just("delta"),
                Just("content"),
                Just("reasoning_content"),
                Just("reasoning"),
                Just("completion_tokens_details"),
                Just("reasoning_tokens"),
                Just("finish_reason"),
                Just("completion_tokens"),
                Just("prompt_tokens"),
                Just("x"),
            ];
            leaf.prop_recursive(4, 48, 6, move |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                    proptest::collection::btree_map(key.clone().prop_map(str::to_string), inner, 0..5)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            // A fixed seed: CI replays the same 512 cases (and proptest-regressions/ first) on
            // every run, so a landing never hangs on a random draw; PROPTEST_RNG_SEED does not
            // apply here, change the seed to search elsewhere.
            #![proptest_config(ProptestConfig {
                cases: 512,
                rng_seed: proptest::test_runner::RngSeed::Fixed(0x0b7e_5eed),
                ..ProptestConfig::default()
            })]

            /// Any JSON value as a `data:` payload, with or without `event: error`: a step or a
            /// failure of a chunk kind, never a panic; a failure names its kind's reason.
            #[test]
            fn any_json_chunk_is_handled(value in json(), error_event in any::<bool>()) {
                let mut rec = RequestRecord::default();
                let event = SseEvent {
                    event: error_event.then(|| "error".to_string()),
                    data: value.to_string(),
                };
                match handle_event(&event, 1, &mut rec) {
                    Ok(_) => prop_assert!(rec.chunk_times_ns.len() == rec.chunk_text_bytes.len()),
                    Err((kind, message)) => {
                        prop_assert!(matches!(kind, ErrorKind::MalformedChunk | ErrorKind::StreamError));
                        prop_assert!(!message.is_empty());
                    }
                }
            }

            /// Any bytes through the parser and the chunk handling, as `stream_request` feeds
            /// them: no panic, and the text kept is exactly the sum of the chunks' lengths.
            #[test]
            fn any_bytes_through_parser_and_chunks(
                bytes in proptest::collection::vec(any::<u8>(), 0..512),
                prefix_json in json(),
            ) {
                let mut stream = format!("data: {prefix_json}\n\n").into_bytes();
                stream.extend_from_slice(&bytes);
                let mut parser = SseParser::with_max_event_bytes(256);
                let mut events = Vec::new();
                let _ = parser.feed(&stream, &mut events);
                let mut rec = RequestRecord::default();
                for event in &events {
                    if handle_event(event, 1, &mut rec).is_err() {
                        break;
                    }
                }
                let kept: u64 = rec.chunk_text_bytes.iter().map(|&n| u64::from(n)).sum();
                prop_assert_eq!(kept, (rec.output_text.len() + rec.reasoning_text.len()) as u64);
            }
        }
    }
}
