//! Bindings for the core's mock server: `MockServer`, an OpenAI-compatible streaming server
//! with known timing and injectable faults (public as `optbench.testing.MockServer`).

use std::sync::Mutex;
use std::time::Duration;

use optbench_core::mock::{Diverge, Fault, MockBehavior, MockServer as CoreMockServer, MockTokenize};
use optbench_core::CoreError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{config_err, PyCoreError};

/// An OpenAI-compatible streaming server with known timing and injectable faults, on a thread
/// of its own (for tests and for trying pipelines without a GPU). `fault` is one of `none`,
/// `status` (answer HTTP `fault_arg`), `reset` (reset the connection after `fault_arg` tokens),
/// `malformed` (a non-JSON chunk after `fault_arg` tokens), `no_done`, `slow_headers` (wait
/// `fault_arg` ms before the headers) or `no_usage`. `tokenize` is how `POST /tokenize` is
/// answered: `missing` (404), `words` (one token per whitespace-separated word) or `hang` (never).
/// `slots` (None: no limit) is the number of
/// requests decoded at once, the others waiting in a FIFO queue; the gap after each token is
/// `gap_ms × (1 + gap_growth × (active − 1))`. With `diverge_above`, an answer changes from token
/// `diverge_at` on when more than `diverge_above` requests are active as that token is due.
/// `tokens_per_chunk` tokens go in each chunk, `gap_ms` apart, with the cumulative usage in each
/// chunk when the request asks for `stream_options.continuous_usage_stats` (as vLLM sends it),
/// only at the end otherwise; `reset`/`malformed` then count chunks. `model` is the name
/// `/v1/models` lists (answers echo whatever name a request gives). With `reasoning_tokens=k`,
/// the chat endpoint streams the first `k` tokens (` thinkD`) as `delta.reasoning_content` and
/// the rest as `delta.content` (a chunk straddling the boundary carries both), its usage
/// carrying `completion_tokens_details.reasoning_tokens` when the request asks for
/// `stream_options.include_usage`; the completions endpoint has no split.
#[pyclass(frozen, module = "optbench._core")]
pub struct MockServer {
    inner: Mutex<Option<CoreMockServer>>,
    base_url: String,
}

#[pymethods]
impl MockServer {
    #[new]
    #[pyo3(signature = (
        *, ttft_ms=20.0, gap_ms=5.0, tokens=16, fault="none", fault_arg=0, host="127.0.0.1", port=0,
        tokenize="missing", slots=None, gap_growth=0.0, diverge_above=None, diverge_at=0,
        tokens_per_chunk=1, model="mock", reasoning_tokens=0, prefix_cache=None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        ttft_ms: f64,
        gap_ms: f64,
        tokens: usize,
        fault: &str,
        fault_arg: u64,
        host: &str,
        port: u16,
        tokenize: &str,
        slots: Option<usize>,
        gap_growth: f64,
        diverge_above: Option<usize>,
        diverge_at: usize,
        tokens_per_chunk: usize,
        model: &str,
        reasoning_tokens: usize,
        prefix_cache: Option<usize>,
    ) -> PyResult<Self> {
        if tokens_per_chunk == 0 {
            return Err(config_err("tokens_per_chunk must be at least 1"));
        }
        if !(ttft_ms >= 0.0 && gap_ms >= 0.0 && ttft_ms.is_finite() && gap_ms.is_finite()) {
            return Err(config_err("ttft_ms and gap_ms must be finite numbers >= 0"));
        }
        if !(gap_growth >= 0.0 && gap_growth.is_finite()) {
            return Err(config_err("gap_growth must be a finite number >= 0"));
        }
        if slots == Some(0) {
            return Err(config_err("slots must be at least 1 (None: no limit)"));
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
        let tokenize = match tokenize {
            "missing" => MockTokenize::Missing,
            "words" => MockTokenize::Words,
            "hang" => MockTokenize::Hang,
            other => return Err(config_err(format!("tokenize must be 'missing', 'words' or 'hang', got {other:?}"))),
        };
        let behavior = MockBehavior {
            ttft: Duration::from_secs_f64(ttft_ms / 1e3),
            gap: Duration::from_secs_f64(gap_ms / 1e3),
            tokens,
            fault,
            tokenize,
            slots,
            gap_growth,
            diverge: diverge_above.map(|above| Diverge { above, at: diverge_at }),
            tokens_per_chunk,
            model: model.to_string(),
            reasoning_tokens,
            prefix_cache,
            ..MockBehavior::default()
        };
        let bind = format!("{host}:{port}");
        let server = CoreMockServer::start_dedicated(&bind, behavior).map_err(|source| {
            PyCoreError(CoreError::Io { path: format!("cannot start the mock server on {bind}"), source })
        })?;
        let base_url = server.base_url();
        Ok(MockServer { inner: Mutex::new(Some(server)), base_url })
    }

    /// `http://host:port` of the server.
    #[getter]
    fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// Server-side truth per answered request: `received_s`, `first_token_sent_s`,
    /// `last_token_sent_s`, `first_answer_token_sent_s` (the first chunk with answer tokens, not
    /// reasoning), `slot_acquired_s` (seconds since the server started; the slot ends the queue
    /// wait), `tokens_sent`, `reasoning_tokens_sent` (of those), `concurrent_at_arrival`,
    /// `diverged` (whether the answer changed under load), `messages` (the JSON text of the
    /// conversation a chat request carried, else None), `connection` (the TCP connection it came
    /// on, numbered as accepted) and `earlier_on_connection` (requests of any kind read on that
    /// connection before it: 0 when it opened the connection).
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
                d.set_item("first_answer_token_sent_s", l.first_answer_token_sent.map(|t| t.as_secs_f64()))?;
                d.set_item("tokens_sent", l.tokens_sent)?;
                d.set_item("reasoning_tokens_sent", l.reasoning_tokens_sent)?;
                d.set_item("concurrent_at_arrival", l.concurrent_at_arrival)?;
                d.set_item("slot_acquired_s", l.slot_acquired.map(|t| t.as_secs_f64()))?;
                d.set_item("diverged", l.diverged)?;
                d.set_item("messages", l.messages.as_ref().map(|m| m.to_string()))?;
                d.set_item("connection", l.connection)?;
                d.set_item("earlier_on_connection", l.earlier_on_connection)?;
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

/// Adds `MockServer` to `optbench._core`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<MockServer>()?;
    Ok(())
}
