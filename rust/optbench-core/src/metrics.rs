//! Aggregates over the measured (non-warm-up) records of a run.

use std::collections::BTreeMap;

use crate::record::{ns_to_ms, ErrorKind, RequestRecord};

/// Distribution statistics of one metric. Percentiles interpolate linearly between the two
/// nearest ranks (numpy's default `linear` method), so pandas' `quantile` gives the same values.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Number of values.
    pub count: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median (the headline statistic of every report).
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Stats {
    /// Statistics of `values`; `None` when there are none. NaNs are ignored.
    pub fn from_values(values: impl IntoIterator<Item = f64>) -> Option<Stats> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        Some(Stats {
            count: v.len(),
            mean,
            p50: percentile_sorted(&v, 50.0),
            p90: percentile_sorted(&v, 90.0),
            p95: percentile_sorted(&v, 95.0),
            p99: percentile_sorted(&v, 99.0),
            min: v[0],
            max: v[v.len() - 1],
        })
    }

    /// The statistics as (name, value) pairs in a fixed order.
    pub fn fields(&self) -> [(&'static str, f64); 8] {
        [
            ("count", self.count as f64),
            ("mean", self.mean),
            ("p50", self.p50),
            ("p90", self.p90),
            ("p95", self.p95),
            ("p99", self.p99),
            ("min", self.min),
            ("max", self.max),
        ]
    }
}

/// Percentile `q` (0..=100) of sorted, non-empty `sorted` with linear interpolation.
pub fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of no values");
    let rank = q / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let frac = rank - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

/// The aggregates of a run, computed over measured (non-warm-up) requests only.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Measured requests sent (successes + failures).
    pub num_requests: usize,
    /// Measured requests that succeeded.
    pub num_succeeded: usize,
    /// Measured requests that failed.
    pub num_failed: usize,
    /// Failures by kind name (only kinds that occurred).
    pub failures_by_kind: BTreeMap<String, usize>,
    /// Warm-up requests (excluded from everything else).
    pub num_warmup: usize,
    /// Measured window in seconds: from the first measured request's scheduled start to the
    /// last measured request's end.
    pub duration_s: f64,
    /// Start of the measured window, nanoseconds after the run's clock origin
    /// ([`crate::runner::LoadTestOutcome::clock_origin`]): the first measured request's
    /// scheduled start (its send time in a healthy run). `None` without measured requests.
    /// Warm-up requests end before it.
    pub measured_start_ns: Option<i64>,
    /// End of the measured window, on the same clock: the last measured request's end.
    pub measured_end_ns: Option<i64>,
    /// Successful requests per second over the measured window.
    pub request_throughput: f64,
    /// Output tokens of successful requests per second over the measured window.
    pub output_token_throughput: f64,
    /// Output tokens of all successful requests.
    pub total_output_tokens: u64,
    /// Prompt tokens of all successful requests (where the server reported them).
    pub total_prompt_tokens: u64,
    /// Successful requests whose token count is only the number of chunks (an estimate).
    pub num_token_counts_estimated: usize,
    /// Token-carrying chunks of successful requests.
    pub num_chunks: usize,
    /// Of those, the chunks that carried more than one token (see
    /// [`RequestRecord::chunk_tokens`]); `itl_ms` then differs from `chunk_gap_ms`.
    pub num_multi_token_chunks: usize,
    /// Successful requests whose chunk token counts came from per-chunk usage
    /// (`chunk_tokens_source` = `usage`).
    pub num_chunk_counts_from_usage: usize,
    /// Successful requests whose chunks carried no usage, each counted as one token
    /// (`chunk_tokens_source` = `chunks`).
    pub num_chunk_counts_one_per_chunk: usize,
    /// Per-metric statistics: `ttft_ms`, `e2e_ms`, `tokens_per_s`, `tpot_ms`, `itl_ms` (per
    /// token: a chunk of k tokens after a gap g gives k gaps of g/k), `chunk_gap_ms` (between
    /// token-carrying chunks), `tokens_per_chunk`, `queue_delay_ms`, `output_tokens`,
    /// `prompt_tokens`; and, when the run had reasoning, the [`REASONING_METRIC_NAMES`]. A metric
    /// with no values is absent.
    pub metrics: BTreeMap<&'static str, Stats>,
    /// The reasoning aggregates; `None` when no successful measured request had reasoning.
    pub reasoning: Option<ReasoningSummary>,
}

/// What a run of a reasoning model adds to its summary (successful measured requests only).
/// A request without reasoning counts 0 reasoning tokens and all its output as answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReasoningSummary {
    /// Successful requests that streamed reasoning (or whose usage reported reasoning tokens).
    pub num_with_reasoning: usize,
    /// Of those, the requests whose reasoning count is per chunk (`reasoning_token_source` =
    /// `chunks`, the server's usage had no `completion_tokens_details.reasoning_tokens`).
    pub num_reasoning_counts_from_chunks: usize,
    /// Reasoning tokens of all successful requests.
    pub total_reasoning_tokens: u64,
    /// Answer tokens of all successful requests.
    pub total_answer_tokens: u64,
    /// Reasoning tokens per second over the measured window (as `output_token_throughput`).
    pub reasoning_token_throughput: f64,
    /// Answer tokens per second over the measured window.
    pub answer_token_throughput: f64,
}

/// The metrics a run with reasoning adds to [`Summary::metrics`]: `ttft_reasoning_ms` (over
/// requests with reasoning), `ttft_answer_ms` (over requests with an answer), `reasoning_tokens`
/// and `answer_tokens` (per request), `reasoning_tokens_per_s` and `answer_tokens_per_s` (the
/// per-request decode rates of [`RequestRecord`]; a request without reasoning gives its
/// `tokens_per_s` as its answer rate).
pub const REASONING_METRIC_NAMES: [&str; 6] = [
    "ttft_reasoning_ms",
    "ttft_answer_ms",
    "reasoning_tokens",
    "answer_tokens",
    "reasoning_tokens_per_s",
    "answer_tokens_per_s",
];

/// The names of [`Summary::metrics`], in the order they are computed.
pub const METRIC_NAMES: [&str; 10] = [
    "ttft_ms",
    "e2e_ms",
    "tokens_per_s",
    "tpot_ms",
    "itl_ms",
    "chunk_gap_ms",
    "tokens_per_chunk",
    "queue_delay_ms",
    "output_tokens",
    "prompt_tokens",
];

/// The names of [`Stats::fields`], in order.
pub const STATISTIC_NAMES: [&str; 8] = ["count", "mean", "p50", "p90", "p95", "p99", "min", "max"];

impl Summary {
    /// Aggregates `records`. Latency metrics use successful measured requests only; queue
    /// delay uses every measured request that was sent (it describes the client, not the server).
    pub fn from_records(records: &[RequestRecord]) -> Summary {
        let measured: Vec<&RequestRecord> = records.iter().filter(|r| !r.warmup).collect();
        let ok: Vec<&RequestRecord> = measured.iter().copied().filter(|r| r.is_success()).collect();
        let mut s = Summary {
            num_requests: measured.len(),
            num_succeeded: ok.len(),
            num_failed: measured.len() - ok.len(),
            num_warmup: records.len() - measured.len(),
            ..Default::default()
        };
        for kind in ErrorKind::ALL {
            let n = measured.iter().filter(|r| r.error_kind == Some(kind)).count();
            if n > 0 {
                s.failures_by_kind.insert(kind.as_str().to_string(), n);
            }
        }
        let start = measured.iter().map(|r| r.scheduled_ns).min();
        let end = measured.iter().filter_map(|r| r.done_ns.or(r.last_token_ns).or(r.sent_ns)).max();
        if let (Some(start), Some(end)) = (start, end) {
            s.duration_s = ns_to_ms(end - start) / 1e3;
        }
        (s.measured_start_ns, s.measured_end_ns) = (start, end);
        s.total_output_tokens = ok.iter().filter_map(|r| r.output_tokens).map(u64::from).sum();
        s.total_prompt_tokens = ok.iter().filter_map(|r| r.prompt_tokens).map(u64::from).sum();
        s.num_token_counts_estimated =
            ok.iter().filter(|r| r.token_count_source == Some(crate::record::TokenCountSource::Chunks)).count();
        let chunk_tokens: Vec<u32> =
            ok.iter().flat_map(|r| (0..r.chunk_times_ns.len()).map(|i| r.tokens_of_chunk(i))).collect();
        s.num_chunks = chunk_tokens.len();
        s.num_multi_token_chunks = chunk_tokens.iter().filter(|&&k| k > 1).count();
        let from = |source| ok.iter().filter(|r| r.chunk_tokens_source == Some(source)).count();
        s.num_chunk_counts_from_usage = from(crate::record::TokenCountSource::Usage);
        s.num_chunk_counts_one_per_chunk = from(crate::record::TokenCountSource::Chunks);
        if s.duration_s > 0.0 {
            s.request_throughput = ok.len() as f64 / s.duration_s;
            s.output_token_throughput = s.total_output_tokens as f64 / s.duration_s;
        }
        let mut put = |name: &'static str, values: Vec<f64>| {
            if let Some(stats) = Stats::from_values(values) {
                s.metrics.insert(name, stats);
            }
        };
        put("ttft_ms", ok.iter().filter_map(|r| r.ttft_ms()).collect());
        put("e2e_ms", ok.iter().filter_map(|r| r.e2e_ms()).collect());
        put("tokens_per_s", ok.iter().filter_map(|r| r.tokens_per_s()).collect());
        put("tpot_ms", ok.iter().filter_map(|r| r.tpot_ms()).collect());
        put("itl_ms", ok.iter().flat_map(|r| r.itl_ms()).collect());
        put("chunk_gap_ms", ok.iter().flat_map(|r| r.chunk_gap_ms()).collect());
        put("tokens_per_chunk", chunk_tokens.iter().copied().map(f64::from).collect());
        put("queue_delay_ms", measured.iter().filter_map(|r| r.queue_delay_ms()).collect());
        put("output_tokens", ok.iter().filter_map(|r| r.output_tokens.map(f64::from)).collect());
        put("prompt_tokens", ok.iter().filter_map(|r| r.prompt_tokens.map(f64::from)).collect());
        let num_with_reasoning = ok.iter().filter(|r| r.has_reasoning()).count();
        if num_with_reasoning > 0 {
            let reasoning = |r: &RequestRecord| r.reasoning_tokens.unwrap_or(0);
            let answer = |r: &RequestRecord| if r.has_reasoning() { r.answer_tokens } else { r.output_tokens };
            let answer_rate =
                |r: &RequestRecord| if r.has_reasoning() { r.answer_tokens_per_s() } else { r.tokens_per_s() };
            put("ttft_reasoning_ms", ok.iter().filter_map(|r| r.ttft_reasoning_ms()).collect());
            put("ttft_answer_ms", ok.iter().filter_map(|r| r.ttft_answer_ms()).collect());
            put("reasoning_tokens", ok.iter().map(|r| f64::from(reasoning(r))).collect());
            put("answer_tokens", ok.iter().filter_map(|r| answer(r).map(f64::from)).collect());
            put("reasoning_tokens_per_s", ok.iter().filter_map(|r| r.reasoning_tokens_per_s()).collect());
            put("answer_tokens_per_s", ok.iter().filter_map(|r| answer_rate(r)).collect());
            let total_reasoning: u64 = ok.iter().map(|r| u64::from(reasoning(r))).sum();
            let total_answer: u64 = ok.iter().filter_map(|r| answer(r)).map(u64::from).sum();
            let per_s = |n: u64| if s.duration_s > 0.0 { n as f64 / s.duration_s } else { 0.0 };
            s.reasoning = Some(ReasoningSummary {
                num_with_reasoning,
                num_reasoning_counts_from_chunks: ok
                    .iter()
                    .filter(|r| r.reasoning_token_source == Some(crate::record::TokenCountSource::Chunks))
                    .count(),
                total_reasoning_tokens: total_reasoning,
                total_answer_tokens: total_answer,
                reasoning_token_throughput: per_s(total_reasoning),
                answer_token_throughput: per_s(total_answer),
            });
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_lists_match_what_is_computed() {
        let stats = Stats::from_values(vec![1.0, 2.0]).expect("values");
        assert_eq!(stats.fields().map(|(name, _)| name), STATISTIC_NAMES);
        let records: Vec<RequestRecord> =
            (0..2).map(|id| RequestRecord { prompt_tokens: Some(5), ..ok_record(id, 0, 10, 4, 5) }).collect();
        let mut names: Vec<&str> = Summary::from_records(&records).metrics.keys().copied().collect();
        let mut expected = METRIC_NAMES.to_vec();
        names.sort_unstable();
        expected.sort_unstable();
        assert_eq!(names, expected);
    }

    #[test]
    fn reasoning_aggregates_only_when_a_request_reasoned() {
        let plain: Vec<RequestRecord> = (0..2).map(|id| ok_record(id, 0, 10, 4, 5)).collect();
        let s = Summary::from_records(&plain);
        assert!(s.reasoning.is_none());
        assert!(REASONING_METRIC_NAMES.iter().all(|m| !s.metrics.contains_key(m)));

        // Request 1 reasons: 6 reasoning chunks 10 ms apart from 10 ms, answer of 4 from 70 ms.
        let mut thinking = ok_record(1, 0, 10, 10, 10);
        thinking.first_reasoning_token_ns = Some(10_000_000);
        thinking.last_reasoning_token_ns = Some(60_000_000);
        thinking.first_answer_token_ns = Some(70_000_000);
        thinking.reasoning_tokens = Some(6);
        thinking.answer_tokens = Some(4);
        thinking.reasoning_token_source = Some(crate::record::TokenCountSource::Usage);
        // Request 0 answers at once (TTFT 10 ms, 4 tokens over 15 ms).
        let mut no_thinking = ok_record(0, 0, 10, 4, 5);
        no_thinking.first_answer_token_ns = no_thinking.first_token_ns;
        let s = Summary::from_records(&[no_thinking, thinking]);
        let r = s.reasoning.as_ref().expect("a request reasoned");
        assert_eq!((r.num_with_reasoning, r.num_reasoning_counts_from_chunks), (1, 0));
        assert_eq!((r.total_reasoning_tokens, r.total_answer_tokens), (6, 8));
        // Window 0..100 ms.
        assert!((r.reasoning_token_throughput - 60.0).abs() < 1e-9);
        assert!((r.answer_token_throughput - 80.0).abs() < 1e-9);
        let m = &s.metrics;
        assert_eq!((m["ttft_reasoning_ms"].count, m["ttft_reasoning_ms"].p50), (1, 10.0));
        assert_eq!((m["ttft_answer_ms"].min, m["ttft_answer_ms"].max), (10.0, 70.0));
        assert_eq!((m["reasoning_tokens"].min, m["reasoning_tokens"].max), (0.0, 6.0));
        assert_eq!(m["reasoning_tokens_per_s"].p50, 120.0); // 6 tokens over 50 ms
                                                            // 4 answer tokens over 70..100 ms; the other request's rate is its tokens_per_s.
        let answer_rates = (m["answer_tokens_per_s"].min, m["answer_tokens_per_s"].max);
        assert!((answer_rates.0 - 4.0 / 0.03).abs() < 1e-9 && (answer_rates.1 - 4.0 / 0.015).abs() < 1e-9);
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        // numpy.percentile([1, 2, 3, 4], [50, 90, 99]) == [2.5, 3.7, 3.97]
        let v = [1.0, 2.0, 3.0, 4.0];
        assert!((percentile_sorted(&v, 50.0) - 2.5).abs() < 1e-12);
        assert!((percentile_sorted(&v, 90.0) - 3.7).abs() < 1e-12);
        assert!((percentile_sorted(&v, 99.0) - 3.97).abs() < 1e-12);
        assert_eq!(percentile_sorted(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn stats_of_one_to_hundred() {
        let s = Stats::from_values((1..=100).map(f64::from)).unwrap();
        assert_eq!(s.count, 100);
        assert_eq!(s.mean, 50.5);
        assert!((s.p50 - 50.5).abs() < 1e-12);
        assert!((s.p90 - 90.1).abs() < 1e-9);
        assert!((s.p95 - 95.05).abs() < 1e-9);
        assert!((s.p99 - 99.01).abs() < 1e-9);
        assert_eq!((s.min, s.max), (1.0, 100.0));
        assert!(Stats::from_values(Vec::new()).is_none());
    }

    fn ok_record(id: u32, sent_ms: i64, ttft_ms: i64, tokens: u32, gap_ms: i64) -> RequestRecord {
        let sent = sent_ms * 1_000_000;
        let first = sent + ttft_ms * 1_000_000;
        let times: Vec<i64> = (0..tokens as i64).map(|i| first + i * gap_ms * 1_000_000).collect();
        RequestRecord {
            request_id: id,
            scheduled_ns: sent,
            sent_ns: Some(sent),
            first_token_ns: Some(first),
            last_token_ns: times.last().copied(),
            done_ns: times.last().copied(),
            chunk_times_ns: times,
            output_tokens: Some(tokens),
            token_count_source: Some(crate::record::TokenCountSource::Usage),
            prompt_tokens: Some(10),
            ..Default::default()
        }
    }

    #[test]
    fn summary_excludes_warmup_and_failures_from_latency() {
        let mut warm = ok_record(0, 0, 500, 3, 10);
        warm.warmup = true;
        let a = ok_record(1, 1000, 100, 11, 10); // TTFT 100, E2E 200, 11 tokens over 100 ms
        let b = ok_record(2, 1000, 300, 11, 20); // TTFT 300, E2E 500
        let mut failed = ok_record(3, 1000, 50, 2, 1);
        failed.fail(ErrorKind::Http5xx, "HTTP 500: boom");
        let s = Summary::from_records(&[warm, a, b, failed]);
        assert_eq!((s.num_requests, s.num_succeeded, s.num_failed, s.num_warmup), (3, 2, 1, 1));
        assert_eq!(s.failures_by_kind.get("http_5xx"), Some(&1));
        let ttft = &s.metrics["ttft_ms"];
        assert_eq!((ttft.count, ttft.min, ttft.max, ttft.p50), (2, 100.0, 300.0, 200.0));
        let e2e = &s.metrics["e2e_ms"];
        assert_eq!((e2e.min, e2e.max), (200.0, 500.0));
        let tps = &s.metrics["tokens_per_s"];
        assert_eq!((tps.min, tps.max), (55.0, 110.0));
        assert_eq!(s.metrics["itl_ms"].count, 20);
        assert_eq!(s.total_output_tokens, 22);
        // Window: scheduled 1000 ms .. last end 1500 ms; the warm-up (0..520 ms) is outside it.
        assert!((s.duration_s - 0.5).abs() < 1e-12);
        assert_eq!((s.measured_start_ns, s.measured_end_ns), (Some(1_000_000_000), Some(1_500_000_000)));
        assert!((s.request_throughput - 4.0).abs() < 1e-12);
        assert!((s.output_token_throughput - 44.0).abs() < 1e-12);
    }
}
