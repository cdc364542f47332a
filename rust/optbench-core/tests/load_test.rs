//! The load generator against an in-process mock server on 127.0.0.1:0 with known timing and
//! injected faults.

use std::sync::Arc;
use std::time::Duration;

use optbench_core::client::{Endpoint, Prompt, RequestSettings};
use optbench_core::metrics::Summary;
use optbench_core::mock::{Diverge, Fault, MockBehavior, MockServer, MockTokenize};
use optbench_core::record::{ErrorKind, TokenCountSource};
use optbench_core::runner::{
    run_load_test, run_requests, LoadTestConfig, LoadTestOutcome, Progress, Sessions, StopReason,
};
use optbench_core::schedule::{Arrival, Schedule};
use optbench_core::tokens::{tokenize_timeout, TokenCounter, TOKENIZE_TIMEOUT};
use optbench_core::CoreError;
use tokio_util::sync::CancellationToken;

fn settings(base_url: &str, endpoint: Endpoint, max_tokens: u32) -> RequestSettings {
    RequestSettings {
        base_url: base_url.to_string(),
        model: "mock".into(),
        endpoint,
        api_key: None,
        max_tokens,
        temperature: 0.0,
        ignore_eos: true,
        extra_body: Default::default(),
        request_timeout: Some(Duration::from_secs(10)),
    }
}

fn prompts(n: usize) -> Vec<Prompt> {
    (0..n).map(|i| Prompt::Text(format!("prompt {i}"))).collect()
}

async fn run(config: LoadTestConfig) -> LoadTestOutcome {
    run_load_test(config, prompts(4), Arc::new(Progress::default()), CancellationToken::new(), None)
        .await
        .expect("valid config")
}

fn closed(base_url: &str, n: usize, concurrency: usize, max_tokens: u32) -> LoadTestConfig {
    LoadTestConfig {
        request: settings(base_url, Endpoint::Completions, max_tokens),
        schedule: Schedule::Closed { concurrency },
        num_requests: n,
        warmup: 0,
        time_limit: None,
        journal: None,
        base_urls: Vec::new(),
        routing: Default::default(),
        sessions: None,
        preconnect: true,
        http_transport: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_endpoint_skips_the_role_chunk() {
    let behavior = MockBehavior {
        ttft: Duration::from_millis(30),
        gap: Duration::from_millis(2),
        tokens: 5,
        fault: Fault::None,
        ..MockBehavior::default()
    };
    let server = MockServer::start("127.0.0.1:0", behavior).await.unwrap();
    let mut cfg = closed(&server.base_url(), 3, 3, 5);
    cfg.request.endpoint = Endpoint::Chat;
    let out = run(cfg).await;
    for r in &out.records {
        assert!(r.is_success(), "{:?}", r.error_message);
        // The role-only chunk arrives at once; the first token after the 30 ms TTFT.
        assert!(r.ttft_ms().unwrap() >= 29.0, "TTFT {:?}", r.ttft_ms());
        assert_eq!(r.chunk_times_ns.len(), 5);
    }
}

async fn faulty(fault: Fault, timeout: Option<Duration>) -> LoadTestOutcome {
    let behavior = MockBehavior {
        ttft: Duration::from_millis(5),
        gap: Duration::from_millis(1),
        tokens: 8,
        fault,
        ..MockBehavior::default()
    };
    let server = MockServer::start("127.0.0.1:0", behavior).await.unwrap();
    let mut cfg = closed(&server.base_url(), 3, 2, 8);
    cfg.request.request_timeout = timeout;
    run(cfg).await
}

fn assert_all_failed(out: &LoadTestOutcome, kind: ErrorKind, message_part: &str) {
    assert_eq!(out.records.len(), 3);
    for r in &out.records {
        assert_eq!(r.error_kind, Some(kind), "{:?}", r.error_message);
        let msg = r.error_message.as_deref().unwrap_or_default();
        assert!(msg.contains(message_part), "{kind}: {msg:?} lacks {message_part:?}");
    }
    let s = Summary::from_records(&out.records);
    assert_eq!(s.failures_by_kind.get(kind.as_str()), Some(&3));
    assert!(!s.metrics.contains_key("ttft_ms"), "failed requests must not enter latency stats");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_500_and_429_become_rows_with_the_body() {
    let out = faulty(Fault::Status(500), None).await;
    assert_all_failed(&out, ErrorKind::Http5xx, "injected status 500");
    assert_eq!(out.records[0].http_status, Some(500));
    let out = faulty(Fault::Status(429), None).await;
    assert_all_failed(&out, ErrorKind::Http4xx, "HTTP 429");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_mid_stream_keeps_the_tokens_received() {
    let out = faulty(Fault::ResetAfter(3), None).await;
    assert_all_failed(&out, ErrorKind::StreamReset, "");
    for r in &out.records {
        assert_eq!(r.chunk_times_ns.len(), 3, "partial data is kept");
        assert!(r.first_token_ns.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_missing_done_and_slow_headers() {
    assert_all_failed(&faulty(Fault::MalformedAfter(2), None).await, ErrorKind::MalformedChunk, "oops");
    assert_all_failed(&faulty(Fault::NoDone, None).await, ErrorKind::MissingDone, "[DONE]");
    let out = faulty(Fault::SlowHeaders(Duration::from_secs(3)), Some(Duration::from_millis(200))).await;
    assert_all_failed(&out, ErrorKind::Deadline, "deadline");
    for r in &out.records {
        // Failed at the deadline, not when the slow server finally answered.
        let waited = (r.done_ns.unwrap() - r.sent_ns.unwrap()) as f64 / 1e6;
        assert!((195.0..1000.0).contains(&waited), "waited {waited} ms");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_a_row() {
    // Bind a port, then free it: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = run(closed(&format!("http://127.0.0.1:{port}"), 3, 2, 4)).await;
    assert_all_failed(&out, ErrorKind::Connect, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_usage_the_chunk_count_is_used_and_flagged() {
    let out = faulty(Fault::NoUsage, None).await;
    for r in &out.records {
        assert!(r.is_success());
        assert_eq!(r.output_tokens, Some(8));
        assert_eq!(r.token_count_source, Some(TokenCountSource::Chunks));
    }
    assert_eq!(Summary::from_records(&out.records).num_token_counts_estimated, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_cap_shows_up_as_queue_delay() {
    let behavior = MockBehavior {
        ttft: Duration::from_millis(100),
        gap: Duration::from_millis(1),
        tokens: 2,
        fault: Fault::None,
        ..MockBehavior::default()
    };
    let server = MockServer::start("127.0.0.1:0", behavior).await.unwrap();
    let cfg = LoadTestConfig {
        request: settings(&server.base_url(), Endpoint::Completions, 2),
        schedule: Schedule::Open { rate: 100.0, arrival: Arrival::Constant, seed: 0, max_concurrency: Some(1) },
        num_requests: 4,
        warmup: 0,
        time_limit: None,
        journal: None,
        base_urls: Vec::new(),
        routing: Default::default(),
        sessions: None,
        preconnect: true,
        http_transport: Default::default(),
    };
    let out = run(cfg).await;
    // One slot, ~101 ms per request, requests due every 10 ms: the last waits ~270 ms.
    let last = out.records.last().unwrap();
    assert!(last.queue_delay_ms().unwrap() > 200.0, "{:?}", last.queue_delay_ms());
    // With one slot, each request is sent only after the previous one ended (the server's own
    // count can briefly see two: it finishes its handler after the client has read [DONE]).
    for w in out.records.windows(2) {
        assert!(w[1].sent_ns.unwrap() >= w[0].done_ns.unwrap(), "requests overlapped");
    }
    assert_eq!(server.log().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_keeps_finished_rows_and_marks_the_rest() {
    let behavior = MockBehavior {
        ttft: Duration::from_millis(10),
        gap: Duration::from_millis(10),
        tokens: 1000,
        fault: Fault::None,
        ..MockBehavior::default()
    };
    let server = MockServer::start("127.0.0.1:0", behavior).await.unwrap();
    let mut cfg = closed(&server.base_url(), 10, 2, 1000);
    cfg.request.max_tokens = 1000;
    let cancel = CancellationToken::new();
    let progress = Arc::new(Progress::default());
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c2.cancel();
    });
    let started = std::time::Instant::now();
    let out = run_load_test(cfg, prompts(1), progress.clone(), cancel, None).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(out.stop_reason, StopReason::Cancelled);
    // Two requests were in flight; both are rows with their partial tokens, nothing else was sent.
    assert_eq!(out.records.len(), 2);
    for r in &out.records {
        assert_eq!(r.error_kind, Some(ErrorKind::Cancelled));
        assert!(r.chunk_times_ns.len() > 10);
    }
    let p = progress.snapshot();
    assert_eq!((p.sent, p.failed, p.total), (2, 2, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_limit_stops_the_run() {
    let behavior = MockBehavior {
        ttft: Duration::from_millis(5),
        gap: Duration::from_millis(5),
        tokens: 10,
        fault: Fault::None,
        ..MockBehavior::default()
    };
    let server = MockServer::start("127.0.0.1:0", behavior).await.unwrap();
    let mut cfg = closed(&server.base_url(), 10_000, 2, 10);
    cfg.time_limit = Some(Duration::from_millis(400));
    let out = run(cfg).await;
    assert_eq!(out.stop_reason, StopReason::TimeLimit);
    let done = out.records.iter().filter(|r| r.is_success()).count();
    // ~50 ms per request, two at a time, for 0.4 s.
    assert!((8..=20).contains(&done), "{done} finished");
    assert!(out.records.len() <= done + 2);
    assert!(out.wall_s < 1.0);
}

#[tokio::test]
async fn bad_configuration_is_an_error_not_a_row() {
    let cfg = closed("http://127.0.0.1:9", 0, 2, 4);
    let err = run_load_test(cfg, prompts(1), Arc::new(Progress::default()), CancellationToken::new(), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("num_requests"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused_across_requests() {
    // The body is read to its end after `[DONE]`, so each connection goes back to the pool;
    // dropping it early closed a connection per request, and the next one paid a handshake.
    let behavior = MockBehavior {
        ttft: Duration::from_millis(2),
        gap: Duration::from_millis(1),
        tokens: 8,
        ..MockBehavior::default()
    };
    let server = MockServer::start_dedicated("127.0.0.1:0", behavior).unwrap();
    let out = run(closed(&server.base_url(), 4, 40, 8)).await;
    assert!(out.records.iter().all(|r| r.is_success()));
    let opened = server.connections_accepted();
    assert!(opened <= 6, "{opened} connections for 40 requests at concurrency 4");
}

/// 48 requests at concurrency 16 against a mock on its own thread, preconnecting or not.
async fn run_preconnected(preconnect: bool) -> (LoadTestOutcome, MockServer) {
    let behavior = MockBehavior {
        ttft: Duration::from_millis(5),
        gap: Duration::from_millis(1),
        tokens: 8,
        ..MockBehavior::default()
    };
    let server = MockServer::start_dedicated("127.0.0.1:0", behavior).unwrap();
    let mut cfg = closed(&server.base_url(), 48, 16, 8);
    cfg.preconnect = preconnect;
    let out = run(cfg).await;
    assert!(out.records.iter().all(|r| r.is_success()));
    assert_eq!(server.log().len(), 48);
    (out, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preconnect_opens_every_connection_before_the_clock_starts() {
    let (out, server) = run_preconnected(true).await;
    let p = &out.preconnect;
    assert!(p.enabled && p.error.is_none(), "{p:?}");
    // 16 in flight and a spare, opened before the clock; none opened after it.
    assert_eq!((p.connections_wanted, p.connections_opened, p.connections_opened_during_run), (17, 17, 0), "{p:?}");
    assert!(p.seconds > 0.0 && p.seconds < 5.0, "{p:?}");
    // The server's side: those 17 connections and no other were accepted, so no measured
    // request waited for a handshake.
    assert_eq!(server.connections_accepted(), 17);
    assert!(server.log().iter().all(|entry| entry.connection < 17));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_preconnect_the_first_wave_opens_the_connections() {
    let (out, server) = run_preconnected(false).await;
    let p = &out.preconnect;
    assert!(!p.enabled && p.connections_opened == 0, "{p:?}");
    // The first wave opened its 16 connections inside the run (and the pool's race between a
    // connection's return and the next request may add one).
    assert!((16..=18).contains(&p.connections_opened_during_run), "{p:?}");
    assert_eq!(server.connections_accepted(), p.connections_opened_during_run);
    let opened_by_a_request = server.log().iter().filter(|e| e.earlier_on_connection == 0).count();
    assert!(opened_by_a_request >= 16, "{opened_by_a_request}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_preconnect_is_a_warning_not_a_failed_run() {
    // Nothing listens: the preconnect fails at once, and so does every request, as rows.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = run(closed(&format!("http://127.0.0.1:{port}"), 4, 2, 8)).await;
    let p = &out.preconnect;
    assert!(p.enabled, "{p:?}");
    assert!(p.error.as_deref().is_some_and(|e| e.contains("GET /v1/models failed")), "{p:?}");
    assert_eq!(out.records.len(), 4);
    assert!(out.records.iter().all(|r| r.error_kind == Some(ErrorKind::Connect)));
}

fn no_usage(tokenize: MockTokenize) -> MockBehavior {
    MockBehavior {
        ttft: Duration::from_millis(5),
        gap: Duration::from_millis(1),
        tokens: 8,
        fault: Fault::NoUsage,
        tokenize,
        ..MockBehavior::default()
    }
}

/// A run of `n` requests without `usage`, recounted by the server's `/tokenize` with calls that
/// may each take 30 s (the counter's old fixed timeout): only the run's own bounds stop a hang.
async fn recount_run(
    server: &MockServer,
    n: usize,
    request_timeout: Option<Duration>,
    time_limit: Option<Duration>,
    cancel: CancellationToken,
) -> (LoadTestOutcome, Duration) {
    let counter = TokenCounter::server(&server.base_url(), "mock", None, Duration::from_secs(30)).unwrap();
    let mut cfg = closed(&server.base_url(), n, 4, 8);
    cfg.request.request_timeout = request_timeout;
    cfg.time_limit = time_limit;
    let started = std::time::Instant::now();
    let out = run_load_test(cfg, prompts(4), Arc::new(Progress::default()), cancel, Some(Arc::new(counter)))
        .await
        .expect("valid config");
    (out, started.elapsed())
}

fn assert_chunk_counts(out: &LoadTestOutcome, n: usize) {
    assert_eq!(out.records.len(), n);
    for r in &out.records {
        assert!(r.is_success(), "{:?}", r.error_message);
        assert_eq!((r.output_tokens, r.token_count_source), (Some(8), Some(TokenCountSource::Chunks)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_tokenize_is_bounded_by_the_request_timeout() {
    let server = MockServer::start("127.0.0.1:0", no_usage(MockTokenize::Hang)).await.unwrap();
    // Each recount may wait at most min(timeout_s, 10 s) = 1.5 s, all of them together too.
    let (out, took) = recount_run(&server, 12, Some(Duration::from_millis(1500)), None, CancellationToken::new()).await;
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_eq!(out.stop_reason, StopReason::Completed);
    assert_chunk_counts(&out, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_tokenize_is_bounded_by_the_time_limit() {
    let server = MockServer::start("127.0.0.1:0", no_usage(MockTokenize::Hang)).await.unwrap();
    // No request timeout: the recount gets what remains of the 1 s limit, and at least 1 s.
    let limit = Duration::from_secs(1);
    let (out, took) = recount_run(&server, 6, None, Some(limit), CancellationToken::new()).await;
    assert!(took < Duration::from_millis(2600), "took {took:?}");
    assert_chunk_counts(&out, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cuts_the_recount_and_the_run_is_cancelled() {
    let server = MockServer::start("127.0.0.1:0", no_usage(MockTokenize::Hang)).await.unwrap();
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        // The 3 requests take ~15 ms; the recount is hanging by now.
        tokio::time::sleep(Duration::from_millis(500)).await;
        c2.cancel();
    });
    let (out, took) = recount_run(&server, 3, None, None, cancel).await;
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(out.stop_reason, StopReason::Cancelled);
    assert_chunk_counts(&out, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_tokenize_recounts_every_answer() {
    let server = MockServer::start("127.0.0.1:0", no_usage(MockTokenize::Words)).await.unwrap();
    let (out, _) = recount_run(&server, 20, Some(Duration::from_secs(5)), None, CancellationToken::new()).await;
    for r in &out.records {
        // " tok0 tok1 ... tok7": 8 words, counted without special tokens.
        assert_eq!((r.output_tokens, r.token_count_source), (Some(8), Some(TokenCountSource::Tokenizer)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokenize_probe_waits_no_longer_than_timeout_s() {
    // Accepts connections (the backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", silent.local_addr().unwrap());
    let started = std::time::Instant::now();
    let (counter, warning) =
        TokenCounter::detect(&base, "m", None, None, Some(Duration::from_millis(500))).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert_eq!(counter.source_name(), "estimate");
    assert!(warning.unwrap().contains("/tokenize"));
    // Without a timeout_s the probe still gives up after TOKENIZE_TIMEOUT, not 30 s.
    assert_eq!(tokenize_timeout(None), TOKENIZE_TIMEOUT);
    assert!(TOKENIZE_TIMEOUT <= Duration::from_secs(10));
    assert_eq!(tokenize_timeout(Some(Duration::from_secs(600))), TOKENIZE_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_rows_naming_the_location_not_followed() {
    // A 307 to another host that would answer: it used to be followed, silently.
    let elsewhere = MockServer::start("127.0.0.1:0", MockBehavior::default()).await.unwrap();
    let location = format!("{}/v1/completions", elsewhere.base_url());
    let out = faulty(Fault::Redirect(307, location.clone()), None).await;
    assert_all_failed(&out, ErrorKind::Http3xx, &format!("HTTP 307: redirected to {location}"));
    assert!(elsewhere.log().is_empty(), "the redirect was followed");
    // A 302 used to be labelled http_5xx.
    let out = faulty(Fault::Redirect(302, "/moved".into()), None).await;
    assert_all_failed(&out, ErrorKind::Http3xx, "redirected to /moved");
    assert_eq!(out.records[0].http_status, Some(302));
}

/// A server that answers every request on every connection with `response`, then closes.
async fn raw_server(response: Vec<u8>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let response = Arc::new(response);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let response = response.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 64 * 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(&response).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (base, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_event_over_the_cap_fails_the_request_as_malformed() {
    // One valid chunk whose text is 3 MiB, then [DONE]: it used to be buffered whole and parsed.
    let text = "x".repeat(3 << 20);
    let event = format!("data: {{\"choices\":[{{\"text\":\"{text}\"}}]}}\n\ndata: [DONE]\n\n");
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        event.len()
    )
    .into_bytes();
    response.extend_from_slice(event.as_bytes());
    let (base, task) = raw_server(response).await;
    let out = run(closed(&base, 2, 2, 8)).await;
    task.abort();
    assert_eq!(out.records.len(), 2);
    for r in &out.records {
        assert_eq!(r.error_kind, Some(ErrorKind::MalformedChunk), "{:?}", r.error_message);
        assert!(r.error_message.as_deref().unwrap().contains("MAX_EVENT_BYTES"));
        assert!(r.output_text.is_empty());
    }
}

#[tokio::test]
async fn bad_targets_fail_before_the_run() {
    let cases = [
        ("http://127.0.0.1:99999", None, "invalid port"),
        ("http://127.0.0.1:8000/ v1", None, "space"),
        ("ws://127.0.0.1:8000", None, "http://"),
        ("http://127.0.0.1:8000/v1/chat/completions", None, "names an endpoint"),
        ("http://127.0.0.1:8000", Some("key\n"), "api_key"),
    ];
    for (url, key, message) in cases {
        let mut cfg = closed(url, 2, 2, 4);
        cfg.request.api_key = key.map(str::to_string);
        let progress = Arc::new(Progress::default());
        let err = run_load_test(cfg, prompts(1), progress.clone(), CancellationToken::new(), None).await.unwrap_err();
        assert!(matches!(&err, CoreError::Config(m) if m.contains(message)), "{url}: {err}");
        assert_eq!(progress.snapshot().sent, 0);
        let err = TokenCounter::detect(url, "m", key, None, Some(Duration::from_secs(1))).await.unwrap_err();
        assert!(matches!(&err, CoreError::Config(m) if m.contains(message)), "{url}: {err}");
    }
}

fn words(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_text_is_a_function_of_the_prompt() {
    let behavior =
        MockBehavior { ttft: Duration::from_millis(1), gap: Duration::ZERO, tokens: 12, ..MockBehavior::default() };
    let server = MockServer::start("127.0.0.1:0", behavior).await.unwrap();
    let out = run(closed(&server.base_url(), 8, 2, 12)).await;
    let text = |id: u32| out.records.iter().find(|r| r.request_id == id).unwrap().output_text.clone();
    for r in &out.records {
        assert!(r.is_success(), "{:?}", r.error_message);
        let w = words(&r.output_text);
        assert_eq!(w.len(), 12);
        assert!(w.iter().all(|t| t.len() == 4 && t.starts_with("tok")), "{}", r.output_text);
    }
    // Request i gets prompt i % 4: the same prompt, the same answer; another prompt, another.
    for i in 0..4 {
        assert_eq!(text(i), text(i + 4));
        for j in 0..i {
            assert_ne!(text(i), text(j));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_capacity_queues_beyond_its_slots_and_slows_with_the_batch() {
    // 2 slots, gap 5 ms × (1 + 1.0 × (2 − 1)) = 10 ms with both busy: a request takes
    // 20 + 4 × 10 = 60 ms, so of 4 sent at once two wait 60 ms for a slot.
    let behavior = MockBehavior {
        ttft: Duration::from_millis(20),
        gap: Duration::from_millis(5),
        tokens: 5,
        slots: Some(2),
        gap_growth: 1.0,
        ..MockBehavior::default()
    };
    let server = MockServer::start_dedicated("127.0.0.1:0", behavior).unwrap();
    let out = run(closed(&server.base_url(), 4, 4, 5)).await;
    let mut waits: Vec<f64> =
        server.log().iter().map(|l| (l.slot_acquired.unwrap() - l.received).as_secs_f64() * 1e3).collect();
    waits.sort_by(f64::total_cmp);
    assert!(waits[0] < 3.0 && waits[1] < 3.0, "{waits:?}");
    assert!((waits[2] - 60.0).abs() < 6.0 && (waits[3] - 60.0).abs() < 6.0, "{waits:?}");
    let mut ttfts: Vec<f64> = out.records.iter().map(|r| r.ttft_ms().unwrap()).collect();
    ttfts.sort_by(f64::total_cmp);
    assert!((ttfts[0] - 20.0).abs() < 5.0 && (ttfts[3] - 80.0).abs() < 8.0, "{ttfts:?}");
    for r in &out.records {
        let itl = r.itl_ms();
        let mean = itl.iter().sum::<f64>() / itl.len() as f64;
        assert!((mean - 10.0).abs() < 2.0, "mean ITL {mean} ms, truth 10 ms: {itl:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_answers_change_under_load_from_the_stated_token() {
    let behavior = MockBehavior {
        ttft: Duration::from_millis(5),
        gap: Duration::from_millis(2),
        tokens: 8,
        diverge: Some(Diverge { above: 1, at: 3 }),
        ..MockBehavior::default()
    };
    let server = MockServer::start_dedicated("127.0.0.1:0", behavior).unwrap();
    let alone = run(closed(&server.base_url(), 4, 1, 8)).await;
    let loaded = run(closed(&server.base_url(), 4, 4, 8)).await;
    let log = server.log();
    assert!(log[..4].iter().all(|l| !l.diverged) && log[4..].iter().all(|l| l.diverged));
    for id in 0..4 {
        let a = &alone.records.iter().find(|r| r.request_id == id).unwrap().output_text;
        let b = &loaded.records.iter().find(|r| r.request_id == id).unwrap().output_text;
        let (a, b) = (words(a), words(b));
        assert_eq!(a[..3], b[..3]);
        assert!((3..8).all(|i| a[i] != b[i]), "{a:?} vs {b:?}");
    }
}

/// Runs 3 requests of 12 tokens, `k` per chunk and chunks 10 ms apart.
async fn chunked_run(k: usize, continuous_usage: bool) -> LoadTestOutcome {
    let behavior = MockBehavior {
        ttft: Duration::from_millis(5),
        gap: Duration::from_millis(10),
        tokens: 12,
        tokens_per_chunk: k,
        ..MockBehavior::default()
    };
    let server = MockServer::start("127.0.0.1:0", behavior).await.unwrap();
    let mut cfg = closed(&server.base_url(), 3, 3, 12);
    if !continuous_usage {
        cfg.request.extra_body.insert("stream_options".into(), serde_json::json!({ "include_usage": true }));
    }
    run(cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn itl_is_per_token_when_chunks_carry_several_tokens() {
    for k in [1_usize, 2, 3] {
        let out = chunked_run(k, true).await;
        for r in &out.records {
            assert!(r.is_success(), "{:?}", r.error_message);
            assert_eq!(r.output_tokens, Some(12));
            assert_eq!(r.chunk_tokens, vec![k as u32; 12 / k], "k={k}");
            assert_eq!(r.chunk_tokens_source, Some(TokenCountSource::Usage));
            assert_eq!(r.itl_ms().len(), 12 - k, "one gap per token after the first chunk");
        }
        let s = Summary::from_records(&out.records);
        assert_eq!(s.total_output_tokens, 36);
        assert_eq!(s.num_chunks, 3 * 12 / k);
        assert_eq!(s.num_multi_token_chunks, if k > 1 { s.num_chunks } else { 0 });
        assert_eq!((s.num_chunk_counts_from_usage, s.num_chunk_counts_one_per_chunk), (3, 0));
        let tpc = &s.metrics["tokens_per_chunk"];
        assert_eq!((tpc.mean, tpc.max), (k as f64, k as f64));
        let gap = s.metrics["chunk_gap_ms"].p50;
        let itl = s.metrics["itl_ms"].p50;
        assert!((gap - 10.0).abs() < 1.5, "k={k}: chunk gap P50 {gap} ms, sent 10 ms apart");
        assert!(
            (itl - 10.0 / k as f64).abs() < 1.5 / k as f64,
            "k={k}: ITL P50 {itl} ms, expected {}",
            10.0 / k as f64
        );
        assert_eq!(s.metrics["itl_ms"].count, 3 * (12 - k));
        eprintln!("k={k}: chunk gap P50 {gap:.3} ms, ITL P50 {itl:.3} ms, tokens/chunk {}", tpc.mean);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_continuous_usage_each_chunk_counts_one_token() {
    let out = chunked_run(2, false).await;
    for r in &out.records {
        assert!(r.is_success(), "{:?}", r.error_message);
        // The final usage still gives the exact count; the chunks only say 1 each.
        assert_eq!(r.output_tokens, Some(12));
        assert_eq!(r.chunk_tokens, vec![1; 6]);
        assert_eq!(r.chunk_tokens_source, Some(TokenCountSource::Chunks));
    }
    let s = Summary::from_records(&out.records);
    assert_eq!(s.num_multi_token_chunks, 0);
    assert_eq!((s.num_chunk_counts_from_usage, s.num_chunk_counts_one_per_chunk), (0, 3));
    assert!((s.metrics["itl_ms"].p50 - 10.0).abs() < 1.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_send_the_history_and_stick_to_one_base_url() {
    let behavior = MockBehavior {
        ttft: Duration::from_millis(2),
        gap: Duration::from_millis(1),
        tokens: 3,
        ..MockBehavior::default()
    };
    let a = MockServer::start("127.0.0.1:0", behavior.clone()).await.unwrap();
    let b = MockServer::start("127.0.0.1:0", behavior).await.unwrap();
    let turns: Vec<Vec<String>> = (0..3).map(|s| (0..3).map(|t| format!("s{s} t{t}")).collect()).collect();
    let mut cfg = closed(&a.base_url(), 9, 2, 3);
    cfg.request.endpoint = Endpoint::Chat;
    cfg.base_urls = vec![a.base_url(), b.base_url()];
    cfg.sessions = Some(Sessions { turns, think_time: Duration::ZERO });
    let out =
        run_requests(cfg, Vec::new(), Arc::new(Progress::default()), CancellationToken::new(), None).await.unwrap();
    assert_eq!(out.records.len(), 9);
    assert!(out.records.iter().all(|r| r.is_success()));
    let ids: Vec<u32> = out.records.iter().map(|r| r.request_id).collect();
    assert_eq!(ids, (0..9).collect::<Vec<_>>(), "ids in send order");
    for session in 0..3u32 {
        let rows: Vec<_> = out.records.iter().filter(|r| r.session_id == Some(session)).collect();
        assert_eq!(rows.iter().map(|r| r.turn.unwrap()).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert!(rows.iter().all(|r| r.base_url_index == rows[0].base_url_index), "a session stays on one base URL");
    }
    // Every chat request carried 2k+1 messages, the last its own user turn.
    let logs: Vec<_> = a.log().into_iter().chain(b.log()).collect();
    assert_eq!(logs.len(), 9);
    for log in logs {
        let messages = log.messages.expect("chat requests are logged").as_array().unwrap().clone();
        let last = messages.last().unwrap()["content"].as_str().unwrap().to_string();
        let turn: usize = last[last.len() - 1..].parse().unwrap();
        assert_eq!(messages.len(), 2 * turn + 1, "{messages:?}");
        assert!(messages.iter().skip(1).step_by(2).all(|m| m["role"] == "assistant"));
    }
}

#[tokio::test]
async fn sessions_refuse_what_they_cannot_do() {
    let one = || Some(Sessions { turns: vec![vec!["a".into()]], think_time: Duration::ZERO });
    let mut cfg = closed("http://127.0.0.1:9", 1, 1, 3);
    cfg.sessions = one();
    let e = cfg.validate(0).unwrap_err().to_string();
    assert!(e.contains("endpoint='chat'"), "{e}");
    cfg.request.endpoint = Endpoint::Chat;
    cfg.validate(0).expect("a chat closed loop of sessions");
    cfg.warmup = 1;
    assert!(cfg.validate(0).unwrap_err().to_string().contains("warm-up"));
    cfg.warmup = 0;
    cfg.num_requests = 2;
    assert!(cfg.validate(0).unwrap_err().to_string().contains("num_requests must be the sessions' turns (1)"));
    cfg.num_requests = 1;
    cfg.sessions = Some(Sessions { turns: vec![vec!["a".into()], vec![]], think_time: Duration::ZERO });
    assert!(cfg.validate(0).unwrap_err().to_string().contains("sessions[1] has no turns"));
    cfg.sessions = one();
    cfg.schedule = Schedule::Open { rate: 1.0, arrival: Arrival::Constant, seed: 0, max_concurrency: None };
    assert!(cfg.validate(0).unwrap_err().to_string().contains("closed loop"));
}
