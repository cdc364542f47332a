//! The load generator against an in-process mock server on 127.0.0.1:0 with known timing and
//! injected faults.

use std::sync::Arc;
use std::time::Duration;

use optbench_core::client::{Endpoint, Prompt, RequestSettings};
use optbench_core::metrics::Summary;
use optbench_core::mock::{Diverge, Fault, MockBehavior, MockServer};
use optbench_core::record::{ErrorKind, TokenCountSource};
use optbench_core::runner::{run_load_test, LoadTestConfig, LoadTestOutcome, Progress, StopReason};
use optbench_core::schedule::{Arrival, Schedule};
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
