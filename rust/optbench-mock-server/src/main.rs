//! `optbench-mock-server`: an OpenAI-compatible streaming server whose timing is known.
//!
//! It answers `POST /v1/completions` and `POST /v1/chat/completions` with SSE: it waits the
//! configured TTFT after reading a request, streams the configured number of one-token chunks
//! a gap apart on absolute deadlines (gap 0 = as fast as it can write), then `usage` and
//! `[DONE]`. It also answers `GET /health`, `GET /v1/models`, `GET /mock/log` (the truth: per
//! request, when it was read and when its first and last tokens were written, in seconds since
//! the server started), `GET /mock/clock` (`now_s` on that clock) and `POST /mock/reset`
//! (empties the log). `--slots` adds a capacity model (a FIFO queue in front of a fixed number of
//! decoding slots, a gap that grows with the batch) and `--diverge-above` answers that change
//! under load, and --prefix-cache a prefix cache; optbench_core::mock documents them. It runs on one thread, so `taskset -c N` gives it one
//! core of its own and the client under test the others.
#![deny(clippy::undocumented_unsafe_blocks)]

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use optbench_core::mock::{log_json, Diverge, Fault, MockBehavior, MockServer, MockTimer};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Timer {
    /// tokio's timer: up to ~1 ms late, no spinning; hundreds of streams fit on one core.
    Coarse,
    /// Sub-millisecond sends by spinning for the last millisecond; for a few streams.
    Precise,
}

/// An OpenAI-compatible streaming server with known timing (optbench's truth server).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Address to bind; keep 127.0.0.1 unless other machines must reach it.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to bind (0 = a free one; the chosen address is printed on the first line).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Milliseconds from reading a request to writing its first token.
    #[arg(long, default_value_t = 50.0)]
    ttft_ms: f64,
    /// Milliseconds between tokens (0 = as fast as the server can write).
    #[arg(long, default_value_t = 5.0)]
    gap_ms: f64,
    /// Tokens per answer (a smaller `max_tokens` in the request wins).
    #[arg(long, default_value_t = 256)]
    tokens: usize,
    /// The model name `/v1/models` lists (requests may name any model).
    #[arg(long, default_value = "optbench-mock")]
    model: String,
    /// How token deadlines are waited for.
    #[arg(long, value_enum, default_value_t = Timer::Coarse)]
    timer: Timer,
    /// Fault to inject into every answer: none, status:CODE, reset:AFTER_TOKENS,
    /// malformed:AFTER_TOKENS, no-done, no-usage or slow-headers:MS.
    #[arg(long, default_value = "none", value_parser = parse_fault)]
    fault: Fault,
    /// Requests decoded at once (0 = no limit); the others wait in a first-in first-out queue,
    /// and a request's first token is due --ttft-ms after it gets its slot.
    #[arg(long, default_value_t = 0)]
    slots: usize,
    /// The gap grows with the requests being decoded: gap-ms × (1 + gap-growth × (active − 1)).
    #[arg(long, default_value_t = 0.0)]
    gap_growth: f64,
    /// Answers change under load: when token --diverge-at is due and more than this many
    /// requests are being decoded, it and the later tokens differ from the answer given alone.
    #[arg(long)]
    diverge_above: Option<usize>,
    /// The first token that changes under load (see --diverge-above).
    #[arg(long, default_value_t = 0)]
    diverge_at: usize,
    /// Tokens in each chunk, chunks --gap-ms apart (with the cumulative usage in each chunk when
    /// the request asks for stream_options.continuous_usage_stats).
    #[arg(long, default_value_t = 1)]
    tokens_per_chunk: usize,
    /// The first this many tokens of each chat answer are reasoning, streamed as
    /// delta.reasoning_content (the rest as delta.content), with
    /// usage.completion_tokens_details.reasoning_tokens when the request asks for
    /// stream_options.include_usage. The completions endpoint has no split.
    #[arg(long, default_value_t = 0)]
    reasoning_tokens: usize,
    /// Remember this many prompts and serve each prompt's longest previously seen leading run of
    /// words from a prefix cache (0 = no cache): usage reports
    /// prompt_tokens_details.cached_tokens and the TTFT shrinks to ttft-ms × uncached / total.
    #[arg(long, default_value_t = 0)]
    prefix_cache: usize,
    /// Write the truth log (a JSON array) here when stopped with Ctrl-C or SIGTERM.
    #[arg(long)]
    log: Option<PathBuf>,
}

fn parse_fault(text: &str) -> Result<Fault, String> {
    let (name, arg) = text.split_once(':').unwrap_or((text, ""));
    let number = |what: &str| {
        arg.parse::<u64>()
            .map_err(|_| format!("--fault {name}:{what} needs a whole number after the colon, got {arg:?}"))
    };
    Ok(match name {
        "none" => Fault::None,
        "status" => {
            let code = number("CODE")?;
            if !(100..=599).contains(&code) {
                return Err(format!("--fault status:CODE needs an HTTP status 100-599, got {code}"));
            }
            Fault::Status(code as u16)
        }
        "reset" => Fault::ResetAfter(number("AFTER_TOKENS")? as usize),
        "malformed" => Fault::MalformedAfter(number("AFTER_TOKENS")? as usize),
        "no-done" => Fault::NoDone,
        "no-usage" => Fault::NoUsage,
        "slow-headers" => Fault::SlowHeaders(Duration::from_millis(number("MS")?)),
        other => {
            return Err(format!(
                "unknown fault {other:?}: use none, status:CODE, reset:N, malformed:N, no-done, no-usage or slow-headers:MS"
            ))
        }
    })
}

fn millis(name: &str, value: f64) -> Result<Duration, String> {
    if !value.is_finite() || value < 0.0 {
        return Err(format!("--{name} must be a number >= 0, got {value}"));
    }
    Ok(Duration::from_secs_f64(value / 1e3))
}

async fn wait_for_stop() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() {
    let args = Args::parse();
    if !args.gap_growth.is_finite() || args.gap_growth < 0.0 {
        eprintln!("optbench-mock-server: --gap-growth must be a number >= 0, got {}", args.gap_growth);
        std::process::exit(2);
    }
    if args.tokens_per_chunk == 0 {
        eprintln!("optbench-mock-server: --tokens-per-chunk must be at least 1");
        std::process::exit(2);
    }
    let behavior = match (millis("ttft-ms", args.ttft_ms), millis("gap-ms", args.gap_ms)) {
        (Ok(ttft), Ok(gap)) => MockBehavior {
            ttft,
            gap,
            tokens: args.tokens,
            fault: args.fault.clone(),
            timer: match args.timer {
                Timer::Coarse => MockTimer::Coarse,
                Timer::Precise => MockTimer::Precise,
            },
            model: args.model.clone(),
            slots: (args.slots > 0).then_some(args.slots),
            gap_growth: args.gap_growth,
            diverge: args.diverge_above.map(|above| Diverge { above, at: args.diverge_at }),
            tokens_per_chunk: args.tokens_per_chunk,
            reasoning_tokens: args.reasoning_tokens,
            prefix_cache: (args.prefix_cache > 0).then_some(args.prefix_cache),
            ..MockBehavior::default()
        },
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("optbench-mock-server: {e}");
            std::process::exit(2);
        }
    };
    // One thread: the server's timing never competes with itself across cores, and pinning the
    // process with taskset pins the whole server.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async move {
        let bind = format!("{}:{}", args.host, args.port);
        let server = match MockServer::start(&bind, behavior).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("optbench-mock-server: cannot listen on {bind}: {e}");
                std::process::exit(1);
            }
        };
        println!("listening on {}", server.base_url());
        let _ = std::io::stdout().flush();
        wait_for_stop().await;
        server.stop();
        if let Some(path) = &args.log {
            if let Err(e) = std::fs::write(path, log_json(&server.log())) {
                eprintln!("optbench-mock-server: cannot write the log to {}: {e}", path.display());
                std::process::exit(1);
            }
        }
    });
}
