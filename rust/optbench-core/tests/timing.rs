//! Timing truth: measured TTFT, ITL and send times against what the mock server actually did.
//! A separate test binary, so these run alone rather than beside the other tests.

use std::sync::Arc;
use std::time::Duration;

use optbench_core::client::{Endpoint, Prompt, RequestSettings};
use optbench_core::metrics::{percentile_sorted, Summary};
use optbench_core::mock::{Fault, MockBehavior, MockServer};
use optbench_core::record::TokenCountSource;
use optbench_core::runner::{run_load_test, LoadTestConfig, LoadTestOutcome, Progress};
use optbench_core::schedule::{Arrival, Schedule};
use tokio_util::sync::CancellationToken;

fn settings(base_url: &str, max_tokens: u32) -> RequestSettings {
    RequestSettings {
        base_url: base_url.to_string(),
        model: "mock".into(),
        endpoint: Endpoint::Completions,
        api_key: None,
        max_tokens,
        temperature: 0.0,
        ignore_eos: true,
        extra_body: Default::default(),
        request_timeout: Some(Duration::from_secs(10)),
    }
}

async fn run(config: LoadTestConfig) -> LoadTestOutcome {
    let prompts = (0..4).map(|i| Prompt::Text(format!("prompt {i}"))).collect();
    run_load_test(config, prompts, Arc::new(Progress::default()), CancellationToken::new(), None)
        .await
        .expect("valid config")
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile_sorted(&v, 50.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttft_and_itl_match_the_servers_truth() {
    let behavior = MockBehavior {
        ttft: Duration::from_millis(50),
        gap: Duration::from_millis(10),
        tokens: 20,
        fault: Fault::None,
        ..MockBehavior::default()
    };
    let server = MockServer::start_dedicated("127.0.0.1:0", behavior).unwrap();
    let cfg = LoadTestConfig {
        request: settings(&server.base_url(), 20),
        schedule: Schedule::Closed { concurrency: 4 },
        num_requests: 16,
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
    let s = Summary::from_records(&out.records);
    assert_eq!(s.num_succeeded, 16, "{:?}", s.failures_by_kind);
    let ttft = &s.metrics["ttft_ms"];
    let itl = &s.metrics["itl_ms"];
    // The truth is what the server did: from reading the request to writing the first token.
    let truth =
        p50(server.log().iter().map(|l| (l.first_token_sent.unwrap() - l.received).as_secs_f64() * 1e3).collect());
    assert!((truth - 50.0).abs() < 1.0, "the mock itself is off: {truth} ms");
    assert!((ttft.p50 - truth).abs() < 1.0, "P50 TTFT {} ms, truth {truth} ms", ttft.p50);
    assert!((itl.p50 - 10.0).abs() < 1.0, "P50 ITL {} ms, truth 10 ms", itl.p50);
    // 20 tokens: E2E = 50 + 19 * 10 ms; tokens/s = 20 / 0.19 s.
    assert!((s.metrics["e2e_ms"].p50 - 240.0).abs() < 2.0);
    assert!((s.metrics["tokens_per_s"].p50 - 20.0 / 0.19).abs() < 2.0);
    assert!((s.metrics["tpot_ms"].p50 - 10.0).abs() < 1.0);
    for r in &out.records {
        assert_eq!(r.output_tokens, Some(20));
        assert_eq!(r.token_count_source, Some(TokenCountSource::Usage));
        assert_eq!(r.prompt_tokens, Some(7));
        assert_eq!(r.finish_reason.as_deref(), Some("length"));
        assert_eq!(r.chunk_times_ns.len(), 20);
        assert_eq!(r.output_text.split_whitespace().filter(|w| w.starts_with("tok")).count(), 20);
    }
    // The closed loop never had more than 4 requests in flight, and reached 4 (counted from the
    // client's own send and end times; the server's count can lag by a handler's last write).
    let mut events: Vec<(i64, i32)> =
        out.records.iter().flat_map(|r| [(r.sent_ns.unwrap(), 1), (r.done_ns.unwrap(), -1)]).collect();
    events.sort_by_key(|&(t, d)| (t, d));
    let (mut now, mut peak) = (0, 0);
    for (_, d) in events {
        now += d;
        peak = peak.max(now);
    }
    assert_eq!(peak, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sends_on_schedule_and_warmup_is_excluded() {
    let behavior = MockBehavior {
        ttft: Duration::from_millis(5),
        gap: Duration::from_millis(1),
        tokens: 4,
        fault: Fault::None,
        ..MockBehavior::default()
    };
    let server = MockServer::start_dedicated("127.0.0.1:0", behavior).unwrap();
    let cfg = LoadTestConfig {
        request: settings(&server.base_url(), 4),
        schedule: Schedule::Open { rate: 50.0, arrival: Arrival::Constant, seed: 0, max_concurrency: None },
        num_requests: 20,
        warmup: 2,
        time_limit: None,
        journal: None,
        base_urls: Vec::new(),
        routing: Default::default(),
        sessions: None,
        preconnect: true,
        http_transport: Default::default(),
    };
    let out = run(cfg).await;
    assert_eq!(out.records.len(), 22);
    assert!(out.records[..2].iter().all(|r| r.warmup));
    let measured: Vec<_> = out.records.iter().filter(|r| !r.warmup).collect();
    // Intended starts are exactly 20 ms apart; actual sends follow within a couple of ms.
    for w in measured.windows(2) {
        assert_eq!(w[1].scheduled_ns - w[0].scheduled_ns, 20_000_000);
    }
    let s = Summary::from_records(&out.records);
    assert_eq!((s.num_requests, s.num_warmup, s.num_succeeded), (20, 2, 20));
    assert!(s.metrics["queue_delay_ms"].p50 < 1.0, "queue delay {:?}", s.metrics["queue_delay_ms"]);
    // 20 requests at 50/s span about 0.38 s + the last request's ~8 ms.
    assert!((s.duration_s - 0.388).abs() < 0.05, "window {}", s.duration_s);
}

/// A replayed trace's sends follow its offsets. What is asserted: every intended start is the
/// trace's offset exactly, the P50 lateness (send minus intended start) is under 1 ms, and the
/// P99 is under `OPTBENCH_TRACE_P99_MS` (default 20 ms: on a shared, loaded 2-core machine the OS
/// deschedules the sender for a few ms now and then; set it to 1 on a quiet machine). The mock
/// answers at once (TTFT and gap 0), so it never spins a core against the sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_is_replayed_on_its_offsets() {
    let behavior = MockBehavior { ttft: Duration::ZERO, gap: Duration::ZERO, tokens: 4, ..MockBehavior::default() };
    let server = MockServer::start_dedicated("127.0.0.1:0", behavior).unwrap();
    // 300 requests over 0.75 s, in bursts: gaps of 0, 1 and 4 ms.
    let offsets: Vec<i64> = (0..300i64).map(|i| (i / 3) * 5_000_000 + [0, 0, 1_000_000][(i % 3) as usize]).collect();
    let cfg = LoadTestConfig {
        request: settings(&server.base_url(), 4),
        schedule: Schedule::Trace { offsets_ns: offsets.clone(), max_concurrency: None },
        num_requests: offsets.len(),
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
    assert_eq!(out.records.len(), offsets.len());
    let start = out.records[0].scheduled_ns;
    let mut lateness = Vec::new();
    for (r, offset) in out.records.iter().zip(&offsets) {
        assert!(r.is_success(), "{:?}", r.error_message);
        assert_eq!(r.scheduled_ns - start, *offset);
        lateness.push((r.sent_ns.unwrap() - r.scheduled_ns) as f64 / 1e6);
    }
    lateness.sort_by(f64::total_cmp);
    let (p50, p99, max) =
        (percentile_sorted(&lateness, 50.0), percentile_sorted(&lateness, 99.0), lateness[lateness.len() - 1]);
    println!("trace lateness over {} sends: P50 {p50:.4} ms, P99 {p99:.4} ms, max {max:.4} ms", lateness.len());
    let bound: f64 = std::env::var("OPTBENCH_TRACE_P99_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(20.0);
    assert!(lateness[0] >= 0.0, "a send before its deadline: {} ms", lateness[0]);
    assert!(p50 < 1.0, "lateness P50 {p50} ms");
    assert!(p99 < bound, "lateness P99 {p99} ms (bound {bound} ms)");
}
