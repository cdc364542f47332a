//! Bindings for the core's load generator: the `LoadTest` class. The Python driver
//! (`optbench.load_test`, `optbench.evaluate`) builds one, polls its progress and reads its
//! records and summary.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use optbench_core::arrow::records_to_batch;
use optbench_core::client::{Endpoint, Prompt, RequestInput, RequestSettings};
use optbench_core::metrics::{Summary, METRIC_NAMES, REASONING_METRIC_NAMES, STATISTIC_NAMES};
use optbench_core::routing::Routing;
use optbench_core::runner::{
    run_requests, HttpTransport, LoadTestConfig, LoadTestOutcome, Progress, Sessions, StopReason,
};
use optbench_core::schedule::{Arrival, Schedule};
use optbench_core::tokens::{tokenize_timeout, TokenCounter};
use optbench_core::CoreError;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3_arrow::PyRecordBatch;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::errors::{config_err, core_error_to_py, OptbenchError, PyCoreError};
use crate::native_call::{self, runtime};
use crate::py_json::{sequence_items, to_json, to_json_object};

/// One `requests` entry: `{"prompt": str}` or `{"messages": [...]}`, with optional
/// `"endpoint"` and `"body"`.
fn parse_request(index: usize, item: &Bound<'_, PyAny>) -> PyResult<RequestInput> {
    let root = format!("requests[{index}]");
    let bad = |what: &str| config_err(format!("{root}: {what}"));
    let mut obj = to_json_object(item, &root)?;
    let prompt = match (obj.remove("prompt"), obj.remove("messages")) {
        (Some(Value::String(t)), None) => Prompt::Text(t),
        (None, Some(m @ Value::Array(_))) => Prompt::Messages(m),
        _ => return Err(bad("needs \"prompt\" (a string) or \"messages\" (a list), not both")),
    };
    let endpoint = match obj.remove("endpoint") {
        None | Some(Value::Null) => None,
        Some(Value::String(e)) => Some(Endpoint::parse(&e).map_err(|e| bad(&e.to_string()))?),
        Some(_) => return Err(bad("\"endpoint\" must be a string")),
    };
    let body = match obj.remove("body") {
        None | Some(Value::Null) => Default::default(),
        Some(Value::Object(b)) => b,
        Some(_) => return Err(bad("\"body\" must be a dict")),
    };
    if let Some(key) = obj.keys().next() {
        return Err(bad(&format!("unknown key {key:?} (allowed: prompt, messages, endpoint, body)")));
    }
    Ok(RequestInput { prompt, endpoint, body })
}

/// The run's inputs from exactly one of `prompts`, `messages` and `requests`.
fn request_inputs(
    prompts: Option<Vec<String>>,
    messages: Option<&Bound<'_, PyAny>>,
    requests: Option<&Bound<'_, PyAny>>,
) -> PyResult<Vec<RequestInput>> {
    match (prompts, messages, requests) {
        (Some(p), None, None) => Ok(p.into_iter().map(|t| Prompt::Text(t).into()).collect()),
        (None, Some(m), None) => sequence_items(m, "messages")?
            .iter()
            .enumerate()
            .map(|(i, conversation)| {
                let root = format!("messages[{i}]");
                match to_json(conversation, &root)? {
                    v @ Value::Array(_) => Ok(Prompt::Messages(v).into()),
                    _ => Err(config_err(format!("{root}: expected a list of messages (dicts)"))),
                }
            })
            .collect(),
        (None, None, Some(r)) => {
            sequence_items(r, "requests")?.iter().enumerate().map(|(i, item)| parse_request(i, item)).collect()
        }
        _ => Err(config_err("give exactly one of prompts, messages and requests")),
    }
}

/// `base_url`: one server root, or a list of the roots of several replicas of one deployment.
#[derive(FromPyObject)]
enum BaseUrls {
    One(String),
    Many(Vec<String>),
}

enum RunState {
    Running,
    Finished(Result<LoadTestOutcome, CoreError>),
}

/// A load test running on optbench's Rust runtime. It starts when constructed; poll it with
/// `progress()`, wait with `wait()` / `wait_async()`, stop it with `cancel()`, and read the
/// records and summary once `done()`. Use `optbench.load_test` rather than this class directly.
#[pyclass(frozen, module = "optbench._core")]
pub struct LoadTest {
    progress: Arc<Progress>,
    cancel: CancellationToken,
    state: Arc<Mutex<RunState>>,
    done_rx: watch::Receiver<bool>,
    started: std::time::Instant,
}

#[pymethods]
impl LoadTest {
    /// Starts a load test. `prompts` are plain texts; `messages` (for the chat endpoint) are
    /// conversations, each a list of `{"role", "content"}` dicts; `requests` are dicts with
    /// `"prompt"` or `"messages"`, optionally `"endpoint"` and `"body"` (fields overriding the
    /// shared request body). Exactly one of the three is given. `extra_body`: a dict of fields
    /// added to every request's JSON body. `base_url` may be a list (replicas of one
    /// deployment): requests are spread over them by `routing` (`round_robin` or
    /// `least_outstanding`), and each record's `base_url_index` says which served it.
    /// `sessions` (instead of the three inputs): multi-turn conversations, each a list of user
    /// turns sent one after the other with the history (chat endpoint, closed loop of
    /// `concurrency` sessions, `think_time_s` between a turn's answer and the next turn);
    /// `num_requests` is then the number of turns.
    /// `trace_offsets_ns`: replay a trace: request `i`
    /// starts that many nanoseconds after the measured phase starts (instead of `request_rate`),
    /// `concurrency` capping requests in flight as in an open loop.
    #[new]
    #[pyo3(signature = (
        base_url, model, *, prompts=None, messages=None, requests=None, endpoint="completions",
        num_requests=100, concurrency=Some(8), request_rate=None, arrival="poisson",
        burstiness=1.0, output_tokens=1024, seed=0, warmup=0, ignore_eos=false,
        timeout_s=None, time_limit_s=None, api_key=None, temperature=0.0,
        extra_body=None, tokenizer=None, journal=None, routing="round_robin", sessions=None,
        think_time_s=0.0, trace_offsets_ns=None, preconnect=true
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        base_url: BaseUrls,
        model: String,
        prompts: Option<Vec<String>>,
        messages: Option<&Bound<'_, PyAny>>,
        requests: Option<&Bound<'_, PyAny>>,
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
        extra_body: Option<&Bound<'_, PyAny>>,
        tokenizer: Option<String>,
        journal: Option<std::path::PathBuf>,
        routing: &str,
        sessions: Option<Vec<Vec<String>>>,
        think_time_s: f64,
        trace_offsets_ns: Option<Vec<i64>>,
        preconnect: bool,
    ) -> PyResult<Self> {
        let base_urls = match base_url {
            BaseUrls::One(url) => vec![url],
            BaseUrls::Many(urls) if urls.is_empty() => return Err(config_err("base_url: the list is empty")),
            BaseUrls::Many(urls) => urls,
        };
        let base_url = base_urls[0].clone();
        let (inputs, num_requests) = match &sessions {
            None => (request_inputs(prompts, messages, requests)?, num_requests),
            Some(_) if prompts.is_some() || messages.is_some() || requests.is_some() => {
                return Err(config_err("give sessions or one of prompts, messages and requests, not both"))
            }
            Some(s) => (Vec::new(), s.iter().map(Vec::len).sum()),
        };
        if !(think_time_s >= 0.0 && think_time_s.is_finite()) {
            return Err(config_err(format!(
                "think_time_s must be a finite number of seconds >= 0, got {think_time_s}"
            )));
        }
        let sessions = sessions.map(|turns| Sessions { turns, think_time: Duration::from_secs_f64(think_time_s) });
        let duration = |name: &str, s: Option<f64>| -> PyResult<Option<Duration>> {
            match s {
                None => Ok(None),
                Some(v) if v > 0.0 && v.is_finite() => Ok(Some(Duration::from_secs_f64(v))),
                Some(v) => Err(config_err(format!("{name} must be a positive number of seconds, got {v}"))),
            }
        };
        let schedule = match (trace_offsets_ns, request_rate) {
            (Some(_), Some(_)) => return Err(config_err("give trace_offsets_ns or request_rate, not both")),
            (Some(offsets_ns), None) => Schedule::Trace { offsets_ns, max_concurrency: concurrency },
            (None, None) => Schedule::Closed {
                concurrency: concurrency.ok_or_else(|| {
                    config_err("a closed loop needs a concurrency (or give request_rate for an open loop)")
                })?,
            },
            (None, Some(rate)) => Schedule::Open {
                rate,
                arrival: Arrival::parse(arrival, burstiness).map_err(PyCoreError)?,
                seed,
                max_concurrency: concurrency,
            },
        };
        let extra_body = match extra_body {
            None => Default::default(),
            Some(body) => to_json_object(body, "extra_body")?,
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
                extra_body,
                request_timeout: duration("timeout_s", timeout_s)?,
            },
            schedule,
            num_requests,
            warmup,
            time_limit: duration("time_limit_s", time_limit_s)?,
            journal,
            base_urls: if base_urls.len() > 1 { base_urls } else { Vec::new() },
            routing: Routing::parse(routing).map_err(PyCoreError)?,
            sessions,
            preconnect,
            // The client used for every request: the own HTTP/1.1 transport for http:// unless
            // this says `reqwest` (see the README's environment variables).
            http_transport: HttpTransport::parse(&std::env::var("OPTBENCH_HTTP_TRANSPORT").unwrap_or_default())
                .map_err(PyCoreError)?,
        };
        config.validate(inputs.len()).map_err(PyCoreError)?;
        // A bad base URL or API key is a ConfigError here, not a run of failed rows.
        config.request.check_target().map_err(PyCoreError)?;
        // Prepare now so that a bad prompt, endpoint or URL fails here, not inside the run.
        for target in config.targets() {
            for (i, input) in inputs.iter().enumerate() {
                target.prepare_input(input).map_err(|e| config_err(format!("request {i}: {e}")))?;
            }
        }
        // Counts tokens of answers that come without `usage`: the tokenizer file when given,
        // else the server's /tokenize (falling back to the chunk count if it has none or it
        // does not answer in time; the recount is bounded by the run's own timeouts).
        let counter = match tokenizer {
            Some(path) => TokenCounter::from_file(&path).map_err(PyCoreError)?,
            None => TokenCounter::server(
                &config.request.base_url,
                &config.request.model,
                config.request.api_key.as_deref(),
                tokenize_timeout(config.request.request_timeout),
            )
            .map_err(PyCoreError)?,
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
    /// rows; the token recount of answers without `usage` is skipped or cut (they keep their
    /// chunk counts). Finished rows are kept. Returns at once; `wait()` for the end.
    fn cancel(&self) {
        self.cancel.cancel();
    }

    /// True once the run has ended and its records can be read.
    fn done(&self) -> bool {
        *self.done_rx.borrow()
    }

    /// Blocks (without holding the GIL) until the run ends or `timeout_s` passes; returns
    /// `done()`. Ctrl-C raises `KeyboardInterrupt` and leaves the run going (`cancel()` it).
    #[pyo3(signature = (timeout_s=None))]
    fn wait(&self, py: Python<'_>, timeout_s: Option<f64>) -> PyResult<bool> {
        let mut rx = self.done_rx.clone();
        native_call::block_on(py, move || async move {
            let wait = rx.wait_for(|d| *d);
            Ok(match timeout_s {
                None => wait.await.is_ok(),
                Some(t) => {
                    matches!(tokio::time::timeout(Duration::from_secs_f64(t.max(0.0)), wait).await, Ok(Ok(_)))
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
    fn stop_reason(&self, py: Python<'_>) -> PyResult<&'static str> {
        self.with_outcome(py, |o| {
            Ok(match o.stop_reason {
                StopReason::Completed => "completed",
                StopReason::Cancelled => "cancelled",
                StopReason::TimeLimit => "time_limit",
            })
        })
    }

    /// Wall time of the whole run (warm-up included), in seconds.
    fn wall_s(&self, py: Python<'_>) -> PyResult<f64> {
        self.with_outcome(py, |o| Ok(o.wall_s))
    }

    /// The run's clock origin (the instant every record's `*_ns` time counts from) on Python's
    /// `time.monotonic()` clock, in seconds: `origin + ns / 1e9` maps a record's time, or the
    /// summary's measured window, onto the clock of GPU telemetry and `/metrics` scrapes.
    fn clock_origin_monotonic(&self, py: Python<'_>) -> PyResult<f64> {
        // Both read now, microseconds apart: the origin is now minus the time since it.
        let since = self.with_outcome(py, |o| Ok(o.clock_origin.elapsed()))?;
        let now: f64 = py.import("time")?.getattr("monotonic")?.call0()?.extract()?;
        Ok(now - since.as_secs_f64())
    }

    /// One Arrow record batch with a row per request (warm-up rows included, flagged);
    /// pass it to `pyarrow.record_batch(...)` or polars.
    fn records(&self, py: Python<'_>) -> PyResult<PyRecordBatch> {
        self.with_outcome(py, |o| {
            let batch = records_to_batch(&o.records)
                .map_err(|e| OptbenchError::new_err(format!("cannot build the Arrow records: {e}")))?;
            Ok(PyRecordBatch::new(batch))
        })
    }

    /// The aggregates over measured requests, as a dict (see `optbench.LoadTestResult.summary`),
    /// with `preconnect`: what opening the connection pool before the clock did.
    fn summary<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (summary, p) = self.with_outcome(py, |o| Ok((Summary::from_records(&o.records), o.preconnect.clone())))?;
        let d = summary_to_dict(py, &summary)?;
        let pd = PyDict::new(py);
        pd.set_item("enabled", p.enabled)?;
        pd.set_item("connections_wanted", p.connections_wanted)?;
        pd.set_item("connections_opened", p.connections_opened)?;
        pd.set_item("seconds", p.seconds)?;
        pd.set_item("error", p.error)?;
        pd.set_item("connections_opened_during_run", p.connections_opened_during_run)?;
        d.set_item("preconnect", pd)?;
        Ok(d)
    }
}

impl LoadTest {
    /// `f` of the finished run; a run that failed raises its error (of its own kind) each time.
    fn with_outcome<T>(&self, py: Python<'_>, f: impl FnOnce(&LoadTestOutcome) -> PyResult<T>) -> PyResult<T> {
        let state = self.state.lock().expect("run state");
        match &*state {
            RunState::Running => Err(PyRuntimeError::new_err("the load test is still running; wait() first")),
            RunState::Finished(Err(e)) => Err(core_error_to_py(py, e)),
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
    d.set_item("measured_start_ns", s.measured_start_ns)?;
    d.set_item("measured_end_ns", s.measured_end_ns)?;
    d.set_item("request_throughput", s.request_throughput)?;
    d.set_item("output_token_throughput", s.output_token_throughput)?;
    d.set_item("total_output_tokens", s.total_output_tokens)?;
    d.set_item("total_prompt_tokens", s.total_prompt_tokens)?;
    d.set_item("num_token_counts_estimated", s.num_token_counts_estimated)?;
    d.set_item("num_chunks", s.num_chunks)?;
    d.set_item("num_multi_token_chunks", s.num_multi_token_chunks)?;
    d.set_item("num_chunk_counts_from_usage", s.num_chunk_counts_from_usage)?;
    d.set_item("num_chunk_counts_one_per_chunk", s.num_chunk_counts_one_per_chunk)?;
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
    let reasoning = match &s.reasoning {
        None => None,
        Some(r) => {
            let rd = PyDict::new(py);
            rd.set_item("num_with_reasoning", r.num_with_reasoning)?;
            rd.set_item("num_reasoning_counts_from_chunks", r.num_reasoning_counts_from_chunks)?;
            rd.set_item("total_reasoning_tokens", r.total_reasoning_tokens)?;
            rd.set_item("total_answer_tokens", r.total_answer_tokens)?;
            rd.set_item("reasoning_token_throughput", r.reasoning_token_throughput)?;
            rd.set_item("answer_token_throughput", r.answer_token_throughput)?;
            Some(rd)
        }
    };
    d.set_item("reasoning", reasoning)?;
    Ok(d)
}

/// Reads the finished requests of a journal (a run's JSON-lines record of each request as it
/// ended): `(records, summary, bad_lines)` with the records as one Arrow batch, the same
/// aggregates a finished run gives, and the numbers of partial or damaged lines skipped.
#[pyfunction]
fn read_journal<'py>(
    py: Python<'py>,
    path: std::path::PathBuf,
) -> PyResult<(PyRecordBatch, Bound<'py, PyDict>, Vec<usize>)> {
    let contents = py.detach(|| optbench_core::journal::read_journal(&path)).map_err(PyCoreError)?;
    let batch = records_to_batch(&contents.records)
        .map_err(|e| OptbenchError::new_err(format!("cannot build the Arrow records: {e}")))?;
    let summary = summary_to_dict(py, &Summary::from_records(&contents.records))?;
    Ok((PyRecordBatch::new(batch), summary, contents.bad_lines))
}

/// The server root of a base URL (no trailing `/` or `/v1`), or a `ConfigError` saying what is
/// wrong with it (the rules of every run's base URL).
#[pyfunction]
fn check_base_url(base_url: &str) -> PyResult<String> {
    Ok(optbench_core::client::server_root(base_url).map_err(PyCoreError)?)
}

/// Adds `LoadTest` and the names of the summary's metrics and statistics to `optbench._core`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<LoadTest>()?;
    m.add_function(wrap_pyfunction!(read_journal, m)?)?;
    m.add_function(wrap_pyfunction!(check_base_url, m)?)?;
    // The keys of `summary()["metrics"]` and of each metric's statistics, for Python code
    // that lays out tables and plots.
    m.add("METRIC_NAMES", PyTuple::new(m.py(), METRIC_NAMES)?)?;
    m.add("REASONING_METRIC_NAMES", PyTuple::new(m.py(), REASONING_METRIC_NAMES)?)?;
    m.add("STATISTIC_NAMES", PyTuple::new(m.py(), STATISTIC_NAMES)?)?;
    Ok(())
}
