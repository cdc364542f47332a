//! Runs a whole load test: warm-up, then the measured requests on their schedule, collecting
//! one record per request whatever happens to it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{
    build_counted_http_client, stream_request, PreparedRequest, Prompt, RequestInput, RequestSettings,
};
use crate::error::{CoreError, Result};
use crate::h1::{self, H1Pool};
use crate::journal::JournalWriter;
use crate::preconnect::{self, ConnectionCounter, PreconnectReport};
use crate::record::{ErrorKind, RequestRecord, TokenCountSource};
use crate::routing::{Lease, Router, Routing};
use crate::schedule::Schedule;
use crate::tokens::{tokenize_timeout, TokenCounter};

/// Everything a run needs besides its prompts.
#[derive(Debug, Clone)]
pub struct LoadTestConfig {
    /// Shared request settings.
    pub request: RequestSettings,
    /// Closed or open loop.
    pub schedule: Schedule,
    /// Measured requests.
    pub num_requests: usize,
    /// Warm-up requests sent before the measured ones and excluded from metrics.
    pub warmup: usize,
    /// Stop sending after this long (measured phase); requests still in flight then are
    /// cancelled and recorded as `cancelled`.
    pub time_limit: Option<Duration>,
    /// Appends every finished record to this JSON-lines file as it finishes (see
    /// [`crate::journal`]), so a killed run leaves its finished requests on disk.
    pub journal: Option<PathBuf>,
    /// The base URLs of several replicas of one deployment, spread over by `routing`; empty:
    /// `request.base_url` alone.
    pub base_urls: Vec<String>,
    /// How requests are spread over `base_urls`.
    pub routing: Routing,
    /// Multi-turn conversations instead of independent prompts (chat endpoint, closed loop).
    pub sessions: Option<Sessions>,
    /// Opens as many connections as the load shape holds in flight before the clock starts
    /// (see [`crate::preconnect`]), so no measured request pays a handshake.
    pub preconnect: bool,
    /// Which HTTP client sends the requests.
    pub http_transport: HttpTransport,
}

/// Which HTTP client a load test's requests go through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HttpTransport {
    /// The own HTTP/1.1 transport ([`crate::h1`]) for `http://` targets when no HTTP proxy is
    /// configured in the environment; reqwest otherwise.
    #[default]
    Auto,
    /// reqwest for every request (the general client; for comparison and as a fallback).
    Reqwest,
}

impl HttpTransport {
    /// Parses `auto` or `reqwest` (the `OPTBENCH_HTTP_TRANSPORT` environment variable's values).
    pub fn parse(name: &str) -> Result<HttpTransport> {
        match name {
            "" | "auto" => Ok(HttpTransport::Auto),
            "reqwest" => Ok(HttpTransport::Reqwest),
            other => {
                Err(CoreError::config(format!("OPTBENCH_HTTP_TRANSPORT must be 'auto' or 'reqwest', got {other:?}")))
            }
        }
    }
}

/// Multi-turn sessions: each session sends its user turns one after the other, each turn's
/// request holding the whole conversation so far (the earlier user turns and the answers the
/// server actually gave). A closed loop of sessions: `concurrency` sessions at once, the next
/// one starting when one ends. A failed turn ends its session (the next turn would lack its
/// answer); its later turns are not sent. A session's turns all go to the base URL its first
/// turn was routed to (where its prefix is cached).
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    /// Each session's user turns, in order.
    pub turns: Vec<Vec<String>>,
    /// The pause after a turn's answer before the session's next turn is sent.
    pub think_time: Duration,
}

impl Sessions {
    /// Requests of all sessions when every turn is sent.
    pub fn num_turns(&self) -> usize {
        self.turns.iter().map(Vec::len).sum()
    }
}

impl LoadTestConfig {
    /// Checks every parameter and says what to fix.
    pub fn validate(&self, num_prompts: usize) -> Result<()> {
        self.schedule.validate()?;
        if self.num_requests == 0 {
            return Err(CoreError::config("num_requests must be at least 1"));
        }
        if let Schedule::Trace { offsets_ns, .. } = &self.schedule {
            if offsets_ns.len() < self.num_requests {
                return Err(CoreError::config(format!(
                    "the trace has {} start offsets for {} requests",
                    offsets_ns.len(),
                    self.num_requests
                )));
            }
        }
        if let Some(sessions) = &self.sessions {
            self.validate_sessions(sessions)?;
        } else if num_prompts == 0 {
            return Err(CoreError::config("no prompts: pass at least one prompt"));
        }
        if self.request.max_tokens == 0 {
            return Err(CoreError::config("output_tokens (max_tokens) must be at least 1"));
        }
        if let Some(d) = self.request.request_timeout {
            if d.is_zero() {
                return Err(CoreError::config("timeout_s must be positive (or None)"));
            }
        }
        if self.request.model.is_empty() {
            return Err(CoreError::config("model must not be empty"));
        }
        for (i, url) in self.base_urls.iter().enumerate() {
            crate::client::server_root(url).map_err(|e| CoreError::config(format!("base_url[{i}]: {e}")))?;
        }
        Ok(())
    }

    fn validate_sessions(&self, sessions: &Sessions) -> Result<()> {
        if sessions.turns.is_empty() {
            return Err(CoreError::config("sessions: no sessions"));
        }
        if let Some(i) = sessions.turns.iter().position(Vec::is_empty) {
            return Err(CoreError::config(format!("sessions[{i}] has no turns")));
        }
        if !matches!(self.schedule, Schedule::Closed { .. }) {
            return Err(CoreError::config(
                "sessions run in a closed loop (concurrency sessions), not with request_rate",
            ));
        }
        if self.warmup > 0 {
            return Err(CoreError::config("sessions have no warm-up: set warmup to 0"));
        }
        if self.request.endpoint != crate::client::Endpoint::Chat {
            return Err(CoreError::config("sessions need endpoint='chat' (the history is a conversation)"));
        }
        if self.num_requests != sessions.num_turns() {
            return Err(CoreError::config(format!(
                "num_requests must be the sessions' turns ({}), got {}",
                sessions.num_turns(),
                self.num_requests
            )));
        }
        Ok(())
    }

    /// The settings of each base URL's requests (one, `request`, without `base_urls`).
    pub fn targets(&self) -> Vec<RequestSettings> {
        if self.base_urls.is_empty() {
            return vec![self.request.clone()];
        }
        self.base_urls.iter().map(|url| RequestSettings { base_url: url.clone(), ..self.request.clone() }).collect()
    }
}

/// Live counters of a run, read by progress displays while it runs (no per-token callbacks).
#[derive(Debug, Default)]
pub struct Progress {
    /// Requests handed to the HTTP client (warm-up included).
    pub sent: AtomicU64,
    /// Requests finished successfully.
    pub succeeded: AtomicU64,
    /// Requests finished with a failure.
    pub failed: AtomicU64,
    /// Token-carrying chunks received so far (a running token estimate for rates).
    pub chunks: AtomicU64,
    /// Total requests planned (warm-up included).
    pub total: AtomicU64,
}

/// A consistent-enough copy of [`Progress`] at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProgressSnapshot {
    /// Requests sent.
    pub sent: u64,
    /// Requests finished successfully.
    pub succeeded: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Token-carrying chunks received.
    pub chunks: u64,
    /// Total requests planned.
    pub total: u64,
}

impl Progress {
    /// Reads every counter.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            sent: self.sent.load(Ordering::Relaxed),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            chunks: self.chunks.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
        }
    }
}

/// Why the run stopped early, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Every request was sent and finished.
    Completed,
    /// The caller cancelled the run (Ctrl-C).
    Cancelled,
    /// The time limit passed.
    TimeLimit,
}

/// The records of a run, in request order, and why it stopped.
#[derive(Debug)]
pub struct LoadTestOutcome {
    /// One record per request that was started (warm-up first).
    pub records: Vec<RequestRecord>,
    /// Completed, cancelled or time-limited.
    pub stop_reason: StopReason,
    /// Wall time of the whole run including warm-up, in seconds.
    pub wall_s: f64,
    /// The instant every record's `*_ns` time counts from (the monotonic clock).
    pub clock_origin: Instant,
    /// What the preconnect did, and the connections opened after the clock started.
    pub preconnect: PreconnectReport,
}

struct Shared {
    client: reqwest::Client,
    /// The own HTTP/1.1 transport's connections for `http://` targets (see [`crate::h1`]);
    /// `None` when every request goes through reqwest.
    h1: Option<H1Pool>,
    /// `requests[b][i]`: input `i` prepared for base URL `b`.
    requests: Vec<Vec<PreparedRequest>>,
    router: Router,
    api_key: Option<String>,
    timeout: Option<Duration>,
    t0: Instant,
    progress: Arc<Progress>,
    cancel: CancellationToken,
    time_limit_hit: AtomicBool,
    records: Mutex<Vec<RequestRecord>>,
    journal: Mutex<Option<JournalWriter>>,
}

impl Shared {
    /// Runs request `id` (prompt `id % prompts`) that was meant to start at `scheduled_ns`.
    async fn run_one(&self, id: usize, scheduled_ns: i64, warmup: bool) {
        let rec = RequestRecord { request_id: id as u32, warmup, scheduled_ns, ..Default::default() };
        let lease = self.router.acquire();
        let inputs = &self.requests[lease.index];
        self.execute(rec, &inputs[id % inputs.len()], lease, false).await;
    }

    /// Sends `request` on the base URL `lease` holds and records the outcome in `rec`; returns
    /// whether it succeeded and, when `want_text`, its answer.
    async fn execute(
        &self,
        mut rec: RequestRecord,
        request: &PreparedRequest,
        lease: Lease<'_>,
        want_text: bool,
    ) -> (bool, String) {
        rec.base_url_index = lease.index as u32;
        self.progress.sent.fetch_add(1, Ordering::Relaxed);
        let deadline = self.timeout.map(|d| Instant::now() + d);
        let outcome = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err((ErrorKind::Cancelled, self.cancel_message())),
            r = with_deadline(deadline, self.stream(request, &mut rec)) => r,
        };
        if let Err((kind, message)) = outcome {
            if rec.done_ns.is_none() {
                rec.done_ns = Some(self.t0.elapsed().as_nanos() as i64);
            }
            rec.fail(kind, message);
        }
        drop(lease);
        self.progress.chunks.fetch_add(rec.chunk_times_ns.len() as u64, Ordering::Relaxed);
        let counter = if rec.is_success() { &self.progress.succeeded } else { &self.progress.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(journal) = &*self.journal.lock().expect("journal lock") {
            journal.append(&rec);
        }
        let outcome = (rec.is_success(), if want_text { rec.output_text.clone() } else { String::new() });
        self.records.lock().expect("records lock").push(rec);
        outcome
    }

    /// Streams `request` into `rec` over the transport its URL takes.
    async fn stream(
        &self,
        request: &PreparedRequest,
        rec: &mut RequestRecord,
    ) -> std::result::Result<(), (ErrorKind, String)> {
        let api_key = self.api_key.as_deref();
        match &self.h1 {
            Some(pool) if h1::serves(&request.url) => h1::stream_request(pool, request, api_key, self.t0, rec).await,
            _ => stream_request(&self.client, request, api_key, self.t0, rec).await,
        }
    }

    fn cancel_message(&self) -> String {
        if self.time_limit_hit.load(Ordering::Relaxed) {
            "the run's time limit was reached while the request was in flight".into()
        } else {
            "the run was cancelled while the request was in flight".into()
        }
    }

    fn now_ns(&self) -> i64 {
        self.t0.elapsed().as_nanos() as i64
    }
}

async fn with_deadline<F>(deadline: Option<Instant>, fut: F) -> Result<(), (ErrorKind, String)>
where
    F: std::future::Future<Output = Result<(), (ErrorKind, String)>>,
{
    match deadline {
        None => fut.await,
        Some(d) => match tokio::time::timeout_at(d, fut).await {
            Ok(r) => r,
            Err(_) => Err((ErrorKind::Deadline, "the per-request deadline (timeout_s) passed".into())),
        },
    }
}

/// Requests `first..first+count` in a closed loop of `concurrency` workers.
async fn closed_loop(shared: &Arc<Shared>, first: usize, count: usize, concurrency: usize, warmup: bool) {
    let next = Arc::new(AtomicU64::new(first as u64));
    let end = (first + count) as u64;
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.min(count) {
        let shared = shared.clone();
        let next = next.clone();
        workers.spawn(async move {
            loop {
                if shared.cancel.is_cancelled() {
                    break;
                }
                let id = next.fetch_add(1, Ordering::Relaxed);
                if id >= end {
                    break;
                }
                // In a closed loop a request is meant to start the moment its slot frees.
                let scheduled = shared.now_ns();
                shared.run_one(id as usize, scheduled, warmup).await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

/// The sessions in a closed loop of `concurrency` sessions; request ids in send order.
async fn session_loop(shared: &Arc<Shared>, sessions: Sessions, targets: Vec<RequestSettings>, concurrency: usize) {
    let plan = Arc::new((sessions, targets));
    let next_session = Arc::new(AtomicU64::new(0));
    let next_id = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.min(plan.0.turns.len()) {
        let (shared, plan, next_session, next_id) =
            (shared.clone(), plan.clone(), next_session.clone(), next_id.clone());
        workers.spawn(async move {
            loop {
                let session = next_session.fetch_add(1, Ordering::Relaxed) as usize;
                if shared.cancel.is_cancelled() || session >= plan.0.turns.len() {
                    break;
                }
                run_session(&shared, session, &plan.0, &plan.1, &next_id).await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

/// One session's turns, each with the conversation so far; stops at the first failed turn.
async fn run_session(
    shared: &Shared,
    session: usize,
    sessions: &Sessions,
    targets: &[RequestSettings],
    next_id: &AtomicU64,
) {
    let turns = &sessions.turns[session];
    let mut history: Vec<serde_json::Value> = Vec::with_capacity(2 * turns.len());
    let mut base_url = None;
    for (turn, user) in turns.iter().enumerate() {
        if shared.cancel.is_cancelled() {
            return;
        }
        history.push(serde_json::json!({ "role": "user", "content": user }));
        let lease = match base_url {
            None => shared.router.acquire(),
            Some(index) => shared.router.acquire_on(index),
        };
        base_url = Some(lease.index);
        let input = RequestInput::from(Prompt::Messages(serde_json::Value::Array(history.clone())));
        let request = targets[lease.index].prepare_input(&input).expect("targets are checked before the run");
        let rec = RequestRecord {
            request_id: next_id.fetch_add(1, Ordering::Relaxed) as u32,
            // A closed loop: the turn is meant to start now (after its think time).
            scheduled_ns: shared.now_ns(),
            session_id: Some(session as u32),
            turn: Some(turn as u32),
            ..Default::default()
        };
        let (ok, answer) = shared.execute(rec, &request, lease, true).await;
        if !ok {
            return;
        }
        history.push(serde_json::json!({ "role": "assistant", "content": answer }));
        if turn + 1 < turns.len() && !sessions.think_time.is_zero() {
            tokio::select! {
                biased;
                _ = shared.cancel.cancelled() => return,
                _ = tokio::time::sleep(sessions.think_time) => {}
            }
        }
    }
}

/// Requests `first..first+offsets.len()` at `phase_start + offsets[i]`.
async fn open_loop(shared: &Arc<Shared>, first: usize, offsets: Vec<i64>, max_concurrency: Option<usize>) {
    let cap = max_concurrency.map(|n| Arc::new(Semaphore::new(n)));
    let phase_start_ns = shared.now_ns();
    let phase_start = shared.t0 + Duration::from_nanos(phase_start_ns as u64);
    let mut inflight = JoinSet::new();
    for (i, offset) in offsets.into_iter().enumerate() {
        let at = phase_start + Duration::from_nanos(offset as u64);
        tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break,
            _ = crate::schedule::precise_sleep_until(at) => {}
        }
        let shared = shared.clone();
        let cap = cap.clone();
        let scheduled = phase_start_ns + offset;
        inflight.spawn(async move {
            // Waiting for a slot is queue delay: the request keeps its intended start.
            let _permit = match cap {
                Some(sem) => tokio::select! {
                    biased;
                    _ = shared.cancel.cancelled() => return,
                    p = sem.acquire_owned() => Some(p.expect("semaphore never closed")),
                },
                None => None,
            };
            shared.run_one(first + i, scheduled, false).await;
        });
        // Reap finished tasks so the set does not grow with the whole run.
        while inflight.try_join_next().is_some() {}
    }
    while inflight.join_next().await.is_some() {}
}

/// Runs a load test to the end (or until `cancel` fires or the time limit passes) and returns
/// every record, warm-up first, in request order. Never panics on request failures: those
/// are rows. Errors only for bad configuration.
pub async fn run_load_test(
    config: LoadTestConfig,
    prompts: Vec<Prompt>,
    progress: Arc<Progress>,
    cancel: CancellationToken,
    token_counter: Option<Arc<TokenCounter>>,
) -> Result<LoadTestOutcome> {
    let inputs = prompts.into_iter().map(RequestInput::from).collect();
    run_requests(config, inputs, progress, cancel, token_counter).await
}

/// [`run_load_test`] with per-request endpoints and body overrides: request `i` uses input
/// `i % inputs.len()`.
pub async fn run_requests(
    config: LoadTestConfig,
    inputs: Vec<RequestInput>,
    progress: Arc<Progress>,
    cancel: CancellationToken,
    token_counter: Option<Arc<TokenCounter>>,
) -> Result<LoadTestOutcome> {
    config.validate(inputs.len())?;
    // Serialise each distinct body once per base URL, before the clock starts.
    let targets = config.targets();
    let requests = targets
        .iter()
        .map(|target| inputs.iter().map(|p| target.prepare_input(p)).collect::<Result<Vec<_>>>())
        .collect::<Result<Vec<_>>>()?;
    let router = Router::new(config.routing, requests.len());
    let max_inflight = match &config.schedule {
        Schedule::Closed { concurrency } => *concurrency,
        Schedule::Open { max_concurrency, .. } | Schedule::Trace { max_concurrency, .. } => {
            max_concurrency.unwrap_or(256)
        }
    };
    let counter = ConnectionCounter::default();
    // Room in the pool for the preconnect's spare connections too.
    let client = build_counted_http_client(max_inflight + preconnect::spare(max_inflight), &counter)?;
    let h1 =
        (config.http_transport == HttpTransport::Auto && !h1::proxy_configured()).then(|| H1Pool::new(counter.clone()));
    let mut preconnect_report = PreconnectReport::default();
    if config.preconnect {
        let roots = targets.iter().map(RequestSettings::check_target).collect::<Result<Vec<_>>>()?;
        let wanted = preconnect::connections_wanted(&config.schedule, config.num_requests, config.warmup);
        let timeout = config
            .request
            .request_timeout
            .map_or(preconnect::PRECONNECT_TIMEOUT, |d| d.min(preconnect::PRECONNECT_TIMEOUT));
        let api_key = config.request.api_key.as_deref();
        let per_url = preconnect::split(wanted, roots.len());
        let opening = preconnect::preconnect(&client, h1.as_ref(), &counter, &roots, &per_url, api_key, timeout);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                preconnect_report.enabled = true;
                preconnect_report.error = Some("the run was cancelled during the preconnect".into());
            }
            report = opening => preconnect_report = report,
        }
    }
    let opened_before_clock = counter.get();
    let journal = config.journal.as_deref().map(JournalWriter::create).transpose()?;
    progress.total.store((config.warmup + config.num_requests) as u64, Ordering::Relaxed);
    let shared = Arc::new(Shared {
        client,
        h1,
        requests,
        router,
        api_key: config.request.api_key.clone(),
        timeout: config.request.request_timeout,
        t0: Instant::now(),
        progress,
        // The time limit cancels this child token; the caller's own token stays for Ctrl-C,
        // which must still be able to cut the token recount after the run.
        cancel: cancel.child_token(),
        time_limit_hit: AtomicBool::new(false),
        records: Mutex::new(Vec::with_capacity(config.warmup + config.num_requests)),
        journal: Mutex::new(journal),
    });

    if config.warmup > 0 {
        let warm_concurrency = match &config.schedule {
            Schedule::Closed { concurrency } => *concurrency,
            Schedule::Open { max_concurrency, .. } | Schedule::Trace { max_concurrency, .. } => {
                max_concurrency.unwrap_or(config.warmup)
            }
        };
        closed_loop(&shared, 0, config.warmup, warm_concurrency, true).await;
    }

    // The time limit covers the measured phase only.
    let time_limit_end = config.time_limit.map(|limit| Instant::now() + limit);
    let limit_timer = config.time_limit.map(|limit| {
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            shared.time_limit_hit.store(true, Ordering::Relaxed);
            shared.cancel.cancel();
        })
    });
    if let (Some(sessions), Schedule::Closed { concurrency }) = (&config.sessions, &config.schedule) {
        if !shared.cancel.is_cancelled() {
            session_loop(&shared, sessions.clone(), targets, *concurrency).await;
        }
    } else if !shared.cancel.is_cancelled() {
        match &config.schedule {
            Schedule::Closed { concurrency } => {
                closed_loop(&shared, config.warmup, config.num_requests, *concurrency, false).await
            }
            // A trace runs like an open loop, on its own offsets.
            Schedule::Open { max_concurrency, .. } | Schedule::Trace { max_concurrency, .. } => {
                let offsets = config.schedule.offsets_ns(config.num_requests).expect("open loop or trace");
                open_loop(&shared, config.warmup, offsets, *max_concurrency).await
            }
        }
    }
    if let Some(timer) = limit_timer {
        timer.abort();
    }
    let wall_s = shared.t0.elapsed().as_secs_f64();
    let journal = shared.journal.lock().expect("journal lock").take();
    if let Some(journal) = journal {
        journal.finish()?;
    }
    let mut records = std::mem::take(&mut *shared.records.lock().expect("records lock"));
    records.sort_by_key(|r| r.request_id);
    let recount_deadline = recount_deadline(config.request.request_timeout, time_limit_end);
    fill_missing_token_counts(&mut records, token_counter.as_deref(), recount_deadline, &cancel).await;
    // After the recount, so that a Ctrl-C during it is a cancelled run, not a completed one.
    let stop_reason = if shared.time_limit_hit.load(Ordering::Relaxed) {
        StopReason::TimeLimit
    } else if cancel.is_cancelled() {
        StopReason::Cancelled
    } else {
        StopReason::Completed
    };
    preconnect_report.connections_opened_during_run = counter.get() - opened_before_clock;
    Ok(LoadTestOutcome { records, stop_reason, wall_s, clock_origin: shared.t0, preconnect: preconnect_report })
}

/// Token counts of answers without `usage` are asked of the counter this many at a time.
pub const RECOUNT_CONCURRENCY: usize = 8;

/// The least time the recount after a run gets, even when the run used its whole time limit: a
/// healthy `/tokenize` recounts hundreds of answers in it.
pub const RECOUNT_MIN_BUDGET: Duration = Duration::from_secs(1);

/// When the recount after a run must end: after [`tokenize_timeout`] of the per-request
/// deadline ([`crate::tokens::TOKENIZE_TIMEOUT`] at most), or at the end of the time limit if
/// that comes first, but never less than [`RECOUNT_MIN_BUDGET`] from now.
fn recount_deadline(request_timeout: Option<Duration>, time_limit_end: Option<Instant>) -> Instant {
    let now = Instant::now();
    let mut budget = tokenize_timeout(request_timeout);
    if let Some(end) = time_limit_end {
        budget = budget.min(end.saturating_duration_since(now));
    }
    now + budget.max(RECOUNT_MIN_BUDGET)
}

/// Gives records without `usage` a token count: a tokenizer over the whole text (reasoning and
/// answer) when one is available (never per chunk), else the number of chunks, flagged as
/// `chunks`. Counts are asked [`RECOUNT_CONCURRENCY`] at a time; whatever is not counted by `deadline` (a stuck or failing
/// `/tokenize`) or when `cancel` fires (Ctrl-C; a run cancelled before the recount skips it)
/// keeps the chunk count.
async fn fill_missing_token_counts(
    records: &mut [RequestRecord],
    counter: Option<&TokenCounter>,
    deadline: Instant,
    cancel: &CancellationToken,
) {
    let missing: Vec<usize> = (0..records.len())
        .filter(|&i| records[i].output_tokens.is_none() && !records[i].chunk_times_ns.is_empty())
        .collect();
    let mut counted: Vec<Option<usize>> = vec![None; missing.len()];
    if let Some(c) = counter.filter(|c| c.is_exact() && !missing.is_empty() && !cancel.is_cancelled()) {
        // Owned indices in, so the stream (and the run's future) stays `Send`.
        // Every generated token counts: a reasoning model's thinking as well as its answer.
        let texts: Vec<std::borrow::Cow<'_, str>> = missing
            .iter()
            .map(|&i| match records[i].reasoning_text.as_str() {
                "" => records[i].output_text.as_str().into(),
                thinking => format!("{thinking}{}", records[i].output_text).into(),
            })
            .collect();
        let texts = &texts;
        let mut counts = stream::iter(0..texts.len())
            .map(move |slot| async move { (slot, c.count(&texts[slot], false).await) })
            .buffer_unordered(RECOUNT_CONCURRENCY);
        let collect = async {
            while let Some((slot, n)) = counts.next().await {
                counted[slot] = n.ok();
            }
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {}
            _ = tokio::time::timeout_at(deadline, collect) => {}
        }
    }
    for (&i, n) in missing.iter().zip(counted) {
        let rec = &mut records[i];
        match n {
            Some(n) => {
                rec.output_tokens = Some(n as u32);
                rec.token_count_source = Some(TokenCountSource::Tokenizer);
            }
            None => {
                rec.output_tokens = Some(rec.chunk_times_ns.len() as u32);
                rec.token_count_source = Some(TokenCountSource::Chunks);
            }
        }
    }
}
