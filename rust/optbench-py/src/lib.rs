//! `optbench._core`: PyO3 bindings for optbench-core. Conversions, exceptions, the global
//! tokio runtime and GIL handling live here; all measuring logic lives in the core crate.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use optbench_core::arrow::records_to_batch;
use optbench_core::client::{Endpoint, Prompt, RequestInput, RequestSettings};
use optbench_core::metrics::Summary;
use optbench_core::mock::{Fault, MockBehavior, MockServer as CoreMockServer};
use optbench_core::prompts::synthetic_prompts;
use optbench_core::runner::{run_requests, LoadTestConfig, LoadTestOutcome, Progress, StopReason};
use optbench_core::schedule::{Arrival, Schedule};
use optbench_core::scoring::gsm8k::{self, Gsm8kMode};
use optbench_core::scoring::{self, squad};
use optbench_core::tokens::TokenCounter;
use optbench_core::CoreError;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_arrow::PyRecordBatch;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

mod embeddings;
mod sandbox;

create_exception!(optbench._core, OptbenchError, PyException, "Base class of every optbench error.");
create_exception!(optbench._core, ConfigError, OptbenchError, "A parameter is invalid; the message says what to fix.");
create_exception!(optbench._core, TokenizerError, OptbenchError, "A tokenizer could not be loaded or used.");
create_exception!(optbench._core, ServerError, OptbenchError, "A server the run depends on could not be reached or answered wrongly.");

/// The core error as a Python exception (a newtype: the orphan rule forbids `From` on the core type).
struct PyCoreError(CoreError);

impl From<CoreError> for PyCoreError {
    fn from(e: CoreError) -> Self {
        PyCoreError(e)
    }
}

impl From<PyCoreError> for PyErr {
    fn from(e: PyCoreError) -> PyErr {
        let msg = e.0.to_string();
        match e.0 {
            CoreError::Config(_) => ConfigError::new_err(msg),
            CoreError::Tokenizer(_) => TokenizerError::new_err(msg),
            CoreError::Http(_) => ServerError::new_err(msg),
            CoreError::Model(_) => OptbenchError::new_err(msg),
            CoreError::Io { .. } => OptbenchError::new_err(msg),
        }
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

fn config_err(msg: impl Into<String>) -> PyErr {
    ConfigError::new_err(msg.into())
}

fn parse_extra_body(extra_body_json: Option<&str>) -> PyResult<serde_json::Map<String, serde_json::Value>> {
    match extra_body_json {
        None => Ok(Default::default()),
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            _ => Err(config_err("extra_body must be a JSON object (a dict)")),
        },
    }
}

/// One `requests_json` entry: `{"prompt": str}` or `{"messages": [...]}`, with optional
/// `"endpoint"` and `"body"`.
fn parse_request(index: usize, text: &str) -> PyResult<RequestInput> {
    let bad = |what: &str| config_err(format!("requests_json[{index}]: {what}"));
    let serde_json::Value::Object(mut obj) = serde_json::from_str(text).map_err(|e| bad(&format!("not JSON ({e})")))? else {
        return Err(bad("expected a JSON object"));
    };
    let prompt = match (obj.remove("prompt"), obj.remove("messages")) {
        (Some(serde_json::Value::String(t)), None) => Prompt::Text(t),
        (None, Some(m @ serde_json::Value::Array(_))) => Prompt::Messages(m),
        _ => return Err(bad("needs \"prompt\" (a string) or \"messages\" (a list), not both")),
    };
    let endpoint = match obj.remove("endpoint") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(e)) => Some(Endpoint::parse(&e).map_err(|e| bad(&e.to_string()))?),
        Some(_) => return Err(bad("\"endpoint\" must be a string")),
    };
    let body = match obj.remove("body") {
        None | Some(serde_json::Value::Null) => Default::default(),
        Some(serde_json::Value::Object(b)) => b,
        Some(_) => return Err(bad("\"body\" must be an object")),
    };
    if let Some(key) = obj.keys().next() {
        return Err(bad(&format!("unknown key {key:?} (allowed: prompt, messages, endpoint, body)")));
    }
    Ok(RequestInput { prompt, endpoint, body })
}

enum RunState {
    Running,
    Finished(Result<LoadTestOutcome, CoreError>),
}

/// A load test running on optbench's Rust runtime. It starts when constructed; poll it with
/// `progress()`, wait with `wait()` / `wait_async()`, stop it with `cancel()`, and read the
/// records and summary once `done()`. Use `optbench.load_test` rather than this class directly.
#[pyclass(frozen, module = "optbench._core")]
struct LoadTest {
    progress: Arc<Progress>,
    cancel: CancellationToken,
    state: Arc<Mutex<RunState>>,
    done_rx: watch::Receiver<bool>,
    started: std::time::Instant,
}

#[pymethods]
impl LoadTest {
    /// Starts a load test. `prompts` are plain texts; `messages_json` (for the chat endpoint)
    /// are JSON arrays of `{"role", "content"}` objects; `requests_json` are JSON objects with
    /// `"prompt"` or `"messages"`, optionally `"endpoint"` and `"body"` (fields overriding the
    /// shared request body). Exactly one of the three is given.
    #[new]
    #[pyo3(signature = (
        base_url, model, *, prompts=None, messages_json=None, requests_json=None, endpoint="completions",
        num_requests=100, concurrency=Some(8), request_rate=None, arrival="poisson",
        burstiness=1.0, output_tokens=1024, seed=0, warmup=0, ignore_eos=false,
        timeout_s=None, time_limit_s=None, api_key=None, temperature=0.0,
        extra_body_json=None, tokenizer=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        base_url: String,
        model: String,
        prompts: Option<Vec<String>>,
        messages_json: Option<Vec<String>>,
        requests_json: Option<Vec<String>>,
        endpoint: &str,
        num_requests: usize,
        concurrency: Option<usize>,
        request_rate: Option<f64>,
        arrival: &str,
        burstiness: f64,
        output_tokens: u32,
        seed: u64,
        warmup: usize,
        ignore_eos: bool,
        timeout_s: Option<f64>,
        time_limit_s: Option<f64>,
        api_key: Option<String>,
        temperature: f64,
        extra_body_json: Option<&str>,
        tokenizer: Option<String>,
    ) -> PyResult<Self> {
        let inputs: Vec<RequestInput> = match (prompts, messages_json, requests_json) {
            (Some(p), None, None) => p.into_iter().map(|t| Prompt::Text(t).into()).collect(),
            (None, Some(m), None) => m
                .iter()
                .enumerate()
                .map(|(i, text)| match serde_json::from_str::<serde_json::Value>(text) {
                    Ok(v @ serde_json::Value::Array(_)) => Ok(Prompt::Messages(v).into()),
                    _ => Err(config_err(format!("messages {i} is not a JSON array of messages"))),
                })
                .collect::<PyResult<_>>()?,
            (None, None, Some(r)) => r.iter().enumerate().map(|(i, text)| parse_request(i, text)).collect::<PyResult<_>>()?,
            _ => return Err(config_err("give exactly one of prompts, messages_json and requests_json")),
        };
        let duration = |name: &str, s: Option<f64>| -> PyResult<Option<Duration>> {
            match s {
                None => Ok(None),
                Some(v) if v > 0.0 && v.is_finite() => Ok(Some(Duration::from_secs_f64(v))),
                Some(v) => Err(config_err(format!("{name} must be a positive number of seconds, got {v}"))),
            }
        };
        let schedule = match request_rate {
            None => Schedule::Closed {
                concurrency: concurrency.ok_or_else(|| {
                    config_err("a closed loop needs a concurrency (or give request_rate for an open loop)")
                })?,
            },
            Some(rate) => Schedule::Open {
                rate,
                arrival: Arrival::parse(arrival, burstiness).map_err(PyCoreError)?,
                seed,
                max_concurrency: concurrency,
            },
        };
        let config = LoadTestConfig {
            request: RequestSettings {
                base_url,
                model,
                endpoint: Endpoint::parse(endpoint).map_err(PyCoreError)?,
                api_key,
                max_tokens: output_tokens,
                temperature,
                ignore_eos,
                extra_body: parse_extra_body(extra_body_json)?,
                request_timeout: duration("timeout_s", timeout_s)?,
            },
            schedule,
            num_requests,
            warmup,
            time_limit: duration("time_limit_s", time_limit_s)?,
        };
        config.validate(inputs.len()).map_err(PyCoreError)?;
        // Prepare now so that a bad prompt, endpoint or URL fails here, not inside the run.
        for (i, input) in inputs.iter().enumerate() {
            config
                .request
                .prepare_input(input)
                .map_err(|e| config_err(format!("request {i}: {e}")))?;
        }
        // Counts tokens of answers that come without `usage`: the tokenizer file when given,
        // else the server's /tokenize (falling back to the chunk count if it has none).
        let counter = match tokenizer {
            Some(path) => TokenCounter::from_file(&path).map_err(PyCoreError)?,
            None => TokenCounter::Server {
                client: optbench_core::client::build_http_client(2).map_err(PyCoreError)?,
                url: format!(
                    "{}/tokenize",
                    optbench_core::client::server_root(&config.request.base_url).map_err(PyCoreError)?
                ),
                model: config.request.model.clone(),
                api_key: config.request.api_key.clone(),
            },
        };

        let progress = Arc::new(Progress::default());
        let cancel = CancellationToken::new();
        let state = Arc::new(Mutex::new(RunState::Running));
        let (done_tx, done_rx) = watch::channel(false);
        let (p, c, s) = (progress.clone(), cancel.clone(), state.clone());
        runtime().spawn(async move {
            let outcome = run_requests(config, inputs, p, c, Some(Arc::new(counter))).await;
            *s.lock().expect("run state") = RunState::Finished(outcome);
            let _ = done_tx.send(true);
        });
        Ok(LoadTest { progress, cancel, state, done_rx, started: std::time::Instant::now() })
    }

    /// A snapshot of the live counters: `sent`, `succeeded`, `failed`, `chunks` (token-carrying
    /// chunks so far), `total` and `elapsed_s`. Cheap; call it a few times a second.
    fn progress<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.progress.snapshot();
        let d = PyDict::new(py);
        d.set_item("sent", s.sent)?;
        d.set_item("succeeded", s.succeeded)?;
        d.set_item("failed", s.failed)?;
        d.set_item("chunks", s.chunks)?;
        d.set_item("total", s.total)?;
        d.set_item("elapsed_s", self.started.elapsed().as_secs_f64())?;
        Ok(d)
    }

    /// Asks the run to stop: nothing new is sent and requests in flight end as `cancelled`
    /// rows. Finished rows are kept. Returns at once; `wait()` for the end.
    fn cancel(&self) {
        self.cancel.cancel();
    }

    /// True once the run has ended and its records can be read.
    fn done(&self) -> bool {
        *self.done_rx.borrow()
    }

    /// Blocks (without holding the GIL) until the run ends or `timeout_s` passes; returns
    /// `done()`. Short timeouts let Python handle Ctrl-C between calls.
    #[pyo3(signature = (timeout_s=None))]
    fn wait(&self, py: Python<'_>, timeout_s: Option<f64>) -> bool {
        let mut rx = self.done_rx.clone();
        py.detach(|| {
            runtime().block_on(async move {
                let wait = rx.wait_for(|d| *d);
                match timeout_s {
                    None => wait.await.is_ok(),
                    Some(t) => matches!(
                        tokio::time::timeout(Duration::from_secs_f64(t.max(0.0)), wait).await,
                        Ok(Ok(_))
                    ),
                }
            })
        })
    }

    /// An awaitable that completes when the run ends (for asyncio / Jupyter).
    fn wait_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let mut rx = self.done_rx.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let _ = rx.wait_for(|d| *d).await;
            Ok(())
        })
    }

    /// Why the run ended: `completed`, `cancelled` or `time_limit`.
    fn stop_reason(&self) -> PyResult<&'static str> {
        self.with_outcome(|o| {
            Ok(match o.stop_reason {
                StopReason::Completed => "completed",
                StopReason::Cancelled => "cancelled",
                StopReason::TimeLimit => "time_limit",
            })
        })
    }

    /// Wall time of the whole run (warm-up included), in seconds.
    fn wall_s(&self) -> PyResult<f64> {
        self.with_outcome(|o| Ok(o.wall_s))
    }

    /// One Arrow record batch with a row per request (warm-up rows included, flagged);
    /// pass it to `pyarrow.record_batch(...)` or polars.
    fn records(&self) -> PyResult<PyRecordBatch> {
        self.with_outcome(|o| {
            let batch = records_to_batch(&o.records)
                .map_err(|e| OptbenchError::new_err(format!("cannot build the Arrow records: {e}")))?;
            Ok(PyRecordBatch::new(batch))
        })
    }

    /// The aggregates over measured requests, as a dict (see `optbench.LoadTestResult.summary`).
    fn summary<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let summary = self.with_outcome(|o| Ok(Summary::from_records(&o.records)))?;
        summary_to_dict(py, &summary)
    }
}

impl LoadTest {
    fn with_outcome<T>(&self, f: impl FnOnce(&LoadTestOutcome) -> PyResult<T>) -> PyResult<T> {
        let state = self.state.lock().expect("run state");
        match &*state {
            RunState::Running => Err(PyRuntimeError::new_err("the load test is still running; wait() first")),
            RunState::Finished(Err(e)) => Err(PyCoreError(CoreError::config(e.to_string())).into()),
            RunState::Finished(Ok(o)) => f(o),
        }
    }
}

fn summary_to_dict<'py>(py: Python<'py>, s: &Summary) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("num_requests", s.num_requests)?;
    d.set_item("num_succeeded", s.num_succeeded)?;
    d.set_item("num_failed", s.num_failed)?;
    d.set_item("num_warmup", s.num_warmup)?;
    d.set_item("failures_by_kind", s.failures_by_kind.clone())?;
    d.set_item("duration_s", s.duration_s)?;
    d.set_item("request_throughput", s.request_throughput)?;
    d.set_item("output_token_throughput", s.output_token_throughput)?;
    d.set_item("total_output_tokens", s.total_output_tokens)?;
    d.set_item("total_prompt_tokens", s.total_prompt_tokens)?;
    d.set_item("num_token_counts_estimated", s.num_token_counts_estimated)?;
    let metrics = PyDict::new(py);
    for (name, stats) in &s.metrics {
        let m = PyDict::new(py);
        for (k, v) in stats.fields() {
            if k == "count" {
                m.set_item(k, stats.count)?;
            } else {
                m.set_item(k, v)?;
            }
        }
        metrics.set_item(*name, m)?;
    }
    d.set_item("metrics", metrics)?;
    Ok(d)
}

/// Synthetic prompts of `input_tokens` tokens each, as the server counts them (its
/// `/tokenize`, else `tokenizer` = a tokenizer.json path, else an estimate). Returns
/// `(prompts, source, warning)` where source is `server`, `tokenizer` or `estimate` and warning
/// is set for the estimate. Reproducible from `seed`; every prompt differs from the start.
#[pyfunction]
#[pyo3(signature = (base_url, model, num_prompts, input_tokens, *, seed=0, tokenizer=None, api_key=None))]
fn make_prompts(
    py: Python<'_>,
    base_url: String,
    model: String,
    num_prompts: usize,
    input_tokens: usize,
    seed: u64,
    tokenizer: Option<String>,
    api_key: Option<String>,
) -> PyResult<(Vec<String>, &'static str, Option<String>)> {
    py.detach(|| {
        runtime().block_on(async move {
            let (counter, warning) =
                TokenCounter::detect(&base_url, &model, api_key.as_deref(), tokenizer.as_deref()).await?;
            let prompts = synthetic_prompts(&counter, num_prompts, input_tokens, seed, 8).await?;
            Ok::<_, CoreError>((prompts, counter.source_name(), warning))
        })
    })
    .map_err(|e| PyCoreError(e).into())
}

/// Number of tokens in `text` by a tokenizer.json file (`add_special` counts BOS and the like).
#[pyfunction]
#[pyo3(signature = (tokenizer, text, add_special=true))]
fn count_tokens(py: Python<'_>, tokenizer: String, text: String, add_special: bool) -> PyResult<usize> {
    py.detach(|| {
        let counter = TokenCounter::from_file(&tokenizer)?;
        runtime().block_on(counter.count(&text, add_special))
    })
    .map_err(|e| PyCoreError(e).into())
}

/// An OpenAI-compatible streaming server with known timing and injectable faults, on a thread
/// of its own (for tests and for trying pipelines without a GPU). `fault` is one of `none`,
/// `status` (answer HTTP `fault_arg`), `reset` (reset the connection after `fault_arg` tokens),
/// `malformed` (a non-JSON chunk after `fault_arg` tokens), `no_done`, `slow_headers` (wait
/// `fault_arg` ms before the headers) or `no_usage`.
#[pyclass(frozen, module = "optbench._core")]
struct MockServer {
    inner: Mutex<Option<CoreMockServer>>,
    base_url: String,
}

#[pymethods]
impl MockServer {
    #[new]
    #[pyo3(signature = (*, ttft_ms=20.0, gap_ms=5.0, tokens=16, fault="none", fault_arg=0, host="127.0.0.1", port=0))]
    #[allow(clippy::too_many_arguments)]
    fn new(ttft_ms: f64, gap_ms: f64, tokens: usize, fault: &str, fault_arg: u64, host: &str, port: u16) -> PyResult<Self> {
        if !(ttft_ms >= 0.0 && gap_ms >= 0.0) {
            return Err(config_err("ttft_ms and gap_ms must be >= 0"));
        }
        let fault = match fault {
            "none" => Fault::None,
            "status" => Fault::Status(u16::try_from(fault_arg).unwrap_or(500)),
            "reset" => Fault::ResetAfter(fault_arg as usize),
            "malformed" => Fault::MalformedAfter(fault_arg as usize),
            "no_done" => Fault::NoDone,
            "slow_headers" => Fault::SlowHeaders(Duration::from_millis(fault_arg)),
            "no_usage" => Fault::NoUsage,
            other => return Err(config_err(format!("unknown fault {other:?}"))),
        };
        let behavior = MockBehavior {
            ttft: Duration::from_secs_f64(ttft_ms / 1e3),
            gap: Duration::from_secs_f64(gap_ms / 1e3),
            tokens,
            fault,
            ..MockBehavior::default()
        };
        let server = CoreMockServer::start_dedicated(&format!("{host}:{port}"), behavior)
            .map_err(|e| ServerError::new_err(format!("cannot start the mock server on {host}:{port}: {e}")))?;
        let base_url = server.base_url();
        Ok(MockServer { inner: Mutex::new(Some(server)), base_url })
    }

    /// `http://host:port` of the server.
    #[getter]
    fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// Server-side truth per answered request: `received_s`, `first_token_sent_s`,
    /// `last_token_sent_s` (seconds since the server started), `tokens_sent` and
    /// `concurrent_at_arrival`.
    fn log<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let guard = self.inner.lock().expect("mock");
        let Some(server) = guard.as_ref() else { return Ok(Vec::new()) };
        server
            .log()
            .into_iter()
            .map(|l| {
                let d = PyDict::new(py);
                d.set_item("received_s", l.received.as_secs_f64())?;
                d.set_item("first_token_sent_s", l.first_token_sent.map(|t| t.as_secs_f64()))?;
                d.set_item("last_token_sent_s", l.last_token_sent.map(|t| t.as_secs_f64()))?;
                d.set_item("tokens_sent", l.tokens_sent)?;
                d.set_item("concurrent_at_arrival", l.concurrent_at_arrival)?;
                Ok(d)
            })
            .collect()
    }

    /// Stops the server and joins its thread. Safe to call twice.
    fn stop(&self, py: Python<'_>) {
        let server = self.inner.lock().expect("mock").take();
        py.detach(move || drop(server));
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&self, py: Python<'_>, _t: Py<PyAny>, _v: Py<PyAny>, _tb: Py<PyAny>) {
        self.stop(py);
    }
}

/// SQuAD v2 exact match and F1 of each prediction against its gold answer texts (an empty
/// list for an unanswerable question), equal to the official script. A prediction whose normal
/// form equals `no_answer_phrase`'s is read as the empty answer. Returns
/// `(exact, f1, has_answer)` as three lists, one entry per prediction.
#[pyfunction]
#[pyo3(signature = (predictions, gold_answers, no_answer_phrase=None))]
fn squad_v2_scores(
    py: Python<'_>,
    predictions: Vec<String>,
    gold_answers: Vec<Vec<String>>,
    no_answer_phrase: Option<String>,
) -> PyResult<(Vec<f64>, Vec<f64>, Vec<bool>)> {
    if predictions.len() != gold_answers.len() {
        return Err(config_err(format!(
            "{} predictions but {} gold answer lists: give one list per prediction",
            predictions.len(),
            gold_answers.len()
        )));
    }
    Ok(py.detach(|| {
        let mut out = (Vec::new(), Vec::new(), Vec::new());
        for (p, g) in predictions.iter().zip(&gold_answers) {
            let s = squad::score_squad_v2(p, g, no_answer_phrase.as_deref());
            out.0.push(s.exact);
            out.1.push(s.f1);
            out.2.push(s.has_answer);
        }
        out
    }))
}

/// The official SQuAD `normalize_answer` (lower-case, drop ASCII punctuation, drop the words
/// a/an/the, collapse whitespace), with Python's Unicode semantics.
#[pyfunction]
fn squad_normalize(text: &str) -> String {
    squad::normalize_answer(text)
}

/// The final answer GSM8K-style extraction finds in `text`; `mode` is `default`, `official`,
/// `lmeval-strict` or `lmeval-flexible`. `[invalid]` when nothing is found.
#[pyfunction]
#[pyo3(signature = (text, mode="default"))]
fn gsm8k_extract(text: &str, mode: &str) -> PyResult<String> {
    let mode = Gsm8kMode::parse(mode).map_err(PyCoreError)?;
    Ok(gsm8k::gsm8k_extract(text, mode))
}

/// Whether each prediction's extracted answer matches its gold answer (GSM8K's final answer or
/// whole solution), under `mode`'s comparison rules.
#[pyfunction]
#[pyo3(signature = (predictions, golds, mode="default"))]
fn gsm8k_correct(predictions: Vec<String>, golds: Vec<String>, mode: &str) -> PyResult<Vec<bool>> {
    let mode = Gsm8kMode::parse(mode).map_err(PyCoreError)?;
    if predictions.len() != golds.len() {
        return Err(config_err(format!("{} predictions but {} gold answers", predictions.len(), golds.len())));
    }
    Ok(predictions.iter().zip(&golds).map(|(p, g)| gsm8k::gsm8k_correct(p, g, mode)).collect())
}

/// The unbiased pass@k estimator for `n` samples of which `c` passed.
#[pyfunction]
fn pass_at_k(n: u64, c: u64, k: u64) -> PyResult<f64> {
    if c > n || k == 0 || k > n {
        return Err(config_err(format!("pass_at_k needs c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")));
    }
    Ok(scoring::pass_at_k(n, c, k))
}

/// The Rust core of optbench. Import `optbench`, not this module.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // "release" for optimised builds; timed work refuses or warns on "debug".
    m.add("build_profile", if cfg!(debug_assertions) { "debug" } else { "release" })?;
    m.add("OptbenchError", py.get_type::<OptbenchError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("TokenizerError", py.get_type::<TokenizerError>())?;
    m.add("ServerError", py.get_type::<ServerError>())?;
    m.add_class::<LoadTest>()?;
    m.add_class::<MockServer>()?;
    m.add_function(wrap_pyfunction!(make_prompts, m)?)?;
    m.add_function(wrap_pyfunction!(count_tokens, m)?)?;
    m.add_function(wrap_pyfunction!(squad_v2_scores, m)?)?;
    m.add_function(wrap_pyfunction!(squad_normalize, m)?)?;
    m.add_function(wrap_pyfunction!(gsm8k_extract, m)?)?;
    m.add_function(wrap_pyfunction!(gsm8k_correct, m)?)?;
    m.add_function(wrap_pyfunction!(pass_at_k, m)?)?;
    embeddings::register(m)?;
    sandbox::register(m)?;
    Ok(())
}
