//! The per-request record: everything one streamed request produced, success or failure.

use std::fmt;

/// Why a request failed. Failures are rows, not exceptions; this is the row's `error_kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The TCP connection could not be made (refused, unreachable, DNS).
    Connect,
    /// The connection was reset or closed before the response headers arrived.
    ConnectionReset,
    /// The server answered with a redirect (3xx), which is not followed; `error_message` names
    /// its `Location`.
    Http3xx,
    /// The server answered with a 4xx status (the body snippet is in `error_message`).
    Http4xx,
    /// The server answered with a 5xx status (the body snippet is in `error_message`).
    Http5xx,
    /// The connection broke while the body was streaming.
    StreamReset,
    /// An SSE `data:` payload was not the JSON the protocol promises, or one SSE line or event
    /// was longer than [`crate::sse::MAX_EVENT_BYTES`].
    MalformedChunk,
    /// The server sent an `error` object inside the stream.
    StreamError,
    /// The stream ended without `data: [DONE]`.
    MissingDone,
    /// The stream completed but carried no generated text, so no TTFT exists.
    EmptyOutput,
    /// The per-request deadline (`timeout_s`) passed first.
    Deadline,
    /// The run was cancelled (Ctrl-C or the run's time limit) while this request was in flight.
    Cancelled,
}

impl ErrorKind {
    /// Every kind, in a fixed order (used for summaries).
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::Connect,
        ErrorKind::ConnectionReset,
        ErrorKind::Http3xx,
        ErrorKind::Http4xx,
        ErrorKind::Http5xx,
        ErrorKind::StreamReset,
        ErrorKind::MalformedChunk,
        ErrorKind::StreamError,
        ErrorKind::MissingDone,
        ErrorKind::EmptyOutput,
        ErrorKind::Deadline,
        ErrorKind::Cancelled,
    ];

    /// The stable snake_case name written into records and summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::ConnectionReset => "connection_reset",
            ErrorKind::Http3xx => "http_3xx",
            ErrorKind::Http4xx => "http_4xx",
            ErrorKind::Http5xx => "http_5xx",
            ErrorKind::StreamReset => "stream_reset",
            ErrorKind::MalformedChunk => "malformed_chunk",
            ErrorKind::StreamError => "stream_error",
            ErrorKind::MissingDone => "missing_done",
            ErrorKind::EmptyOutput => "empty_output",
            ErrorKind::Deadline => "deadline",
            ErrorKind::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a record's `output_tokens` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCountSource {
    /// `usage.completion_tokens` sent by the server (exact).
    Usage,
    /// A tokenizer run over the whole output text after the run (exact up to detokenisation).
    Tokenizer,
    /// The number of token-carrying chunks (an estimate; flagged).
    Chunks,
}

impl TokenCountSource {
    /// The name written into records: `usage`, `tokenizer` or `chunks`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenCountSource::Usage => "usage",
            TokenCountSource::Tokenizer => "tokenizer",
            TokenCountSource::Chunks => "chunks",
        }
    }
}

/// One request of a load test. All times are monotonic nanoseconds since the run's start
/// (the same clock for every request), taken when bytes arrived, before any JSON parsing.
#[derive(Debug, Clone, Default)]
pub struct RequestRecord {
    /// Position of the request in the run (0-based, warm-up requests first).
    pub request_id: u32,
    /// Warm-up requests are kept as rows but excluded from every metric.
    pub warmup: bool,
    /// When the schedule intended the request to start.
    pub scheduled_ns: i64,
    /// Which of the run's base URLs served it (its position in the list; 0 with one).
    pub base_url_index: u32,
    /// The multi-turn session (conversation) it belongs to, from 0; `None` outside sessions.
    pub session_id: Option<u32>,
    /// Its turn in the session, from 0 (turn `k` carries the `2k` earlier messages).
    pub turn: Option<u32>,
    /// When the request was handed to the HTTP client.
    pub sent_ns: Option<i64>,
    /// When the response headers arrived.
    pub first_byte_ns: Option<i64>,
    /// When the first chunk carrying generated text arrived.
    pub first_token_ns: Option<i64>,
    /// When the last chunk carrying generated text arrived.
    pub last_token_ns: Option<i64>,
    /// When the stream ended (`[DONE]`, error or deadline).
    pub done_ns: Option<i64>,
    /// Arrival time of every token-carrying chunk.
    pub chunk_times_ns: Vec<i64>,
    /// Length in bytes of the generated text each token-carrying chunk carried.
    pub chunk_text_bytes: Vec<u32>,
    /// Tokens each token-carrying chunk carried: the rise of the cumulative
    /// `usage.completion_tokens` since the previous token-carrying chunk when the chunk carries
    /// usage (vLLM with `continuous_usage_stats`), at least 1; otherwise 1. Empty in records
    /// written before it existed (read as 1 per chunk).
    pub chunk_tokens: Vec<u32>,
    /// Where `chunk_tokens` came from: `usage` when a token-carrying chunk carried the
    /// cumulative `usage.completion_tokens` (vLLM with `continuous_usage_stats`), `chunks` when
    /// none did (each chunk counted as one token); `None` without token-carrying chunks and in
    /// records written before it existed.
    pub chunk_tokens_source: Option<TokenCountSource>,
    /// The answer text, concatenated: `text` (completions) or `delta.content` (chat). A
    /// reasoning model's thinking is not in it (see `reasoning_text`), so quality scoring scores
    /// the answer.
    pub output_text: String,
    /// The reasoning text, concatenated: `delta.reasoning_content` or `delta.reasoning` (vLLM,
    /// SGLang and llama.cpp's names for a reasoning model's thinking on the chat endpoint).
    /// Empty when the server streamed none. Bounded like `output_text`, by `max_tokens`.
    pub reasoning_text: String,
    /// When the first chunk carrying reasoning text arrived (`None`: no reasoning).
    pub first_reasoning_token_ns: Option<i64>,
    /// When the last chunk carrying reasoning text arrived.
    pub last_reasoning_token_ns: Option<i64>,
    /// When the first chunk carrying answer text arrived (set for every request with an answer;
    /// without reasoning it is `first_token_ns`).
    pub first_answer_token_ns: Option<i64>,
    /// Reasoning tokens (see `reasoning_token_source`); `None` when the request had no reasoning.
    pub reasoning_tokens: Option<u32>,
    /// Answer tokens: `output_tokens − reasoning_tokens` when `reasoning_token_source` is `usage`,
    /// else the tokens of the answer-carrying chunks (as `chunk_tokens` counts them). `None` when
    /// the request had no reasoning (then the answer is all of `output_tokens`).
    pub answer_tokens: Option<u32>,
    /// Where `reasoning_tokens` came from: `usage` (`usage.completion_tokens_details.
    /// reasoning_tokens`, exact) or `chunks` (the sum of `chunk_tokens` over the chunks that
    /// carried reasoning text: exact when chunks carry cumulative usage, else one per chunk).
    pub reasoning_token_source: Option<TokenCountSource>,
    /// Number of generated tokens (see `token_count_source`).
    pub output_tokens: Option<u32>,
    /// Where `output_tokens` came from.
    pub token_count_source: Option<TokenCountSource>,
    /// `usage.prompt_tokens`, when the server sent it.
    pub prompt_tokens: Option<u32>,
    /// `usage.prompt_tokens_details.cached_tokens`: prompt tokens the server served from its
    /// prefix cache, when it said (OpenAI; vLLM with `--enable-prompt-tokens-details`).
    pub cached_tokens: Option<u32>,
    /// The HTTP status code, when headers arrived.
    pub http_status: Option<u16>,
    /// `finish_reason` of the last choice that had one (`length`, `stop`, ...).
    pub finish_reason: Option<String>,
    /// The server's own per-request `timings` object (llama.cpp), as raw JSON.
    pub server_timings: Option<String>,
    /// Why the request failed; `None` for a success.
    pub error_kind: Option<ErrorKind>,
    /// A human-readable description of the failure.
    pub error_message: Option<String>,
}

impl RequestRecord {
    /// A success is a request with no error kind.
    pub fn is_success(&self) -> bool {
        self.error_kind.is_none()
    }

    /// Marks the record failed, keeping whatever it already measured.
    pub fn fail(&mut self, kind: ErrorKind, message: impl Into<String>) {
        self.error_kind = Some(kind);
        self.error_message = Some(message.into());
    }

    /// Time to first token in milliseconds: first-token time − sent time.
    pub fn ttft_ms(&self) -> Option<f64> {
        Some(ns_to_ms(self.first_token_ns? - self.sent_ns?))
    }

    /// End-to-end latency in milliseconds: last-token time − sent time.
    pub fn e2e_ms(&self) -> Option<f64> {
        Some(ns_to_ms(self.last_token_ns? - self.sent_ns?))
    }

    /// Decode rate: output tokens / (E2E − TTFT), in tokens per second. `None` when the whole
    /// output came in one chunk (the denominator is zero).
    pub fn tokens_per_s(&self) -> Option<f64> {
        let decode_ns = self.last_token_ns? - self.first_token_ns?;
        if decode_ns <= 0 {
            return None;
        }
        Some(self.output_tokens? as f64 / (decode_ns as f64 / 1e9))
    }

    /// Time per output token in milliseconds: (E2E − TTFT) / (output tokens − 1).
    pub fn tpot_ms(&self) -> Option<f64> {
        let tokens = self.output_tokens?;
        if tokens < 2 {
            return None;
        }
        let decode_ns = self.last_token_ns? - self.first_token_ns?;
        Some(ns_to_ms(decode_ns) / (tokens - 1) as f64)
    }

    /// Time to the first reasoning token in milliseconds: first reasoning chunk − sent time.
    pub fn ttft_reasoning_ms(&self) -> Option<f64> {
        Some(ns_to_ms(self.first_reasoning_token_ns? - self.sent_ns?))
    }

    /// Time to the first answer token in milliseconds: first answer chunk − sent time.
    pub fn ttft_answer_ms(&self) -> Option<f64> {
        Some(ns_to_ms(self.first_answer_token_ns? - self.sent_ns?))
    }

    /// Whether the request streamed reasoning or its usage reported reasoning tokens.
    pub fn has_reasoning(&self) -> bool {
        self.reasoning_tokens.is_some()
    }

    /// Reasoning decode rate: reasoning tokens / (last − first reasoning chunk), tokens per
    /// second; `None` without reasoning or when all of it came in one chunk.
    pub fn reasoning_tokens_per_s(&self) -> Option<f64> {
        let ns = self.last_reasoning_token_ns? - self.first_reasoning_token_ns?;
        let tokens = self.reasoning_tokens?;
        (ns > 0).then(|| f64::from(tokens) / (ns as f64 / 1e9))
    }

    /// Answer decode rate: answer tokens / (last token − first answer chunk), tokens per second;
    /// `None` without reasoning (then it is `tokens_per_s`) or when the answer came in one chunk.
    pub fn answer_tokens_per_s(&self) -> Option<f64> {
        let tokens = self.answer_tokens?;
        let ns = self.last_token_ns? - self.first_answer_token_ns?;
        (ns > 0).then(|| f64::from(tokens) / (ns as f64 / 1e9))
    }

    /// Queue delay in milliseconds: sent time − scheduled time.
    pub fn queue_delay_ms(&self) -> Option<f64> {
        Some(ns_to_ms(self.sent_ns? - self.scheduled_ns))
    }

    /// Tokens of token-carrying chunk `i` (1 where the record does not say).
    pub fn tokens_of_chunk(&self, i: usize) -> u32 {
        self.chunk_tokens.get(i).copied().unwrap_or(1)
    }

    /// Inter-token latencies in milliseconds, per token: a chunk of `k` tokens that arrived
    /// `g` after the previous token-carrying chunk contributes `k` gaps of `g / k`. The first
    /// chunk contributes none (its tokens arrived together, after the TTFT), so a request whose
    /// chunks carried `k₀, k₁, …` tokens has `k₁ + k₂ + …` gaps. With one token per chunk these
    /// are the gaps between chunks.
    pub fn itl_ms(&self) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.chunk_times_ns.len());
        for (i, w) in self.chunk_times_ns.windows(2).enumerate() {
            let k = self.tokens_of_chunk(i + 1).max(1);
            let per_token = ns_to_ms(w[1] - w[0]) / f64::from(k);
            out.extend(std::iter::repeat_n(per_token, k as usize));
        }
        out
    }

    /// Gaps in milliseconds between successive token-carrying chunks, whatever each carried.
    pub fn chunk_gap_ms(&self) -> Vec<f64> {
        self.chunk_times_ns.windows(2).map(|w| ns_to_ms(w[1] - w[0])).collect()
    }
}

/// Nanoseconds to milliseconds as a float.
pub fn ns_to_ms(ns: i64) -> f64 {
    ns as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> RequestRecord {
        RequestRecord {
            scheduled_ns: 1_000_000,
            sent_ns: Some(2_000_000),
            first_token_ns: Some(52_000_000),
            last_token_ns: Some(152_000_000),
            chunk_times_ns: vec![52_000_000, 77_000_000, 102_000_000, 127_000_000, 152_000_000],
            output_tokens: Some(5),
            ..Default::default()
        }
    }

    #[test]
    fn metrics_match_hand_computed_values() {
        let r = record();
        assert_eq!(r.ttft_ms(), Some(50.0));
        assert_eq!(r.e2e_ms(), Some(150.0));
        // 5 tokens over the 100 ms after the first token.
        assert_eq!(r.tokens_per_s(), Some(50.0));
        assert_eq!(r.tpot_ms(), Some(25.0));
        assert_eq!(r.queue_delay_ms(), Some(1.0));
        assert_eq!(r.itl_ms(), vec![25.0; 4]);
    }

    #[test]
    fn single_chunk_and_single_token_have_no_rate() {
        let mut r = record();
        r.last_token_ns = r.first_token_ns;
        r.output_tokens = Some(1);
        assert_eq!(r.tokens_per_s(), None);
        assert_eq!(r.tpot_ms(), None);
        assert_eq!(r.e2e_ms(), r.ttft_ms());
    }

    #[test]
    fn failed_request_without_tokens_has_no_latencies() {
        let r = RequestRecord { scheduled_ns: 0, sent_ns: Some(5), ..Default::default() };
        assert_eq!(r.ttft_ms(), None);
        assert_eq!(r.e2e_ms(), None);
        assert!(r.itl_ms().is_empty());
    }

    #[test]
    fn itl_is_per_token_when_chunks_carry_several() {
        let mut r = record();
        // Chunks of 2, 1, 3, 2, 2 tokens, 25 ms apart.
        r.chunk_tokens = vec![2, 1, 3, 2, 2];
        r.output_tokens = Some(10);
        let itl = r.itl_ms();
        assert_eq!(itl.len(), 8, "every token after the first chunk has a gap");
        assert_eq!(itl[0], 25.0);
        assert!(itl[1..4].iter().all(|g| (g - 25.0 / 3.0).abs() < 1e-12));
        assert_eq!(&itl[4..], &[12.5; 4]);
        assert_eq!(r.chunk_gap_ms(), vec![25.0; 4]);
    }
}
