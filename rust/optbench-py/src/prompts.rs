//! Bindings for prompts of a target length and token counting (`make_prompts`,
//! `count_tokens`).

use std::time::Duration;

use optbench_core::prompts::{prefix_prompts, synthetic_prompts, trace_prompts, TracePrompt};
use optbench_core::tokens::TokenCounter;
use pyo3::prelude::*;

use crate::errors::config_err;
use crate::native_call;

/// Synthetic prompts of `input_tokens` tokens each, as the server counts them (its
/// `/tokenize`, else `tokenizer` = a tokenizer.json path, else an estimate). Returns
/// `(prompts, source, warning)` where source is `server`, `tokenizer` or `estimate` and warning
/// is set for the estimate. Reproducible from `seed`; every prompt differs from the start.
/// `timeout_s` is the load test's per-request deadline: each `/tokenize` call (the probe
/// included) waits at most that long, and never more than 10 s (`TOKENIZE_TIMEOUT`); a server
/// that does not answer in time counts as one without `/tokenize`. A bad `base_url` or
/// `api_key` raises `ConfigError`. Runs without the GIL; Ctrl-C raises `KeyboardInterrupt`.
#[pyfunction]
#[pyo3(signature = (
    base_url, model, num_prompts, input_tokens, *, seed=0, tokenizer=None, api_key=None, timeout_s=None
))]
#[allow(clippy::too_many_arguments)]
fn make_prompts(
    py: Python<'_>,
    base_url: String,
    model: String,
    num_prompts: usize,
    input_tokens: usize,
    seed: u64,
    tokenizer: Option<String>,
    api_key: Option<String>,
    timeout_s: Option<f64>,
) -> PyResult<(Vec<String>, &'static str, Option<String>)> {
    let timeout = timeout(timeout_s)?;
    native_call::block_on(py, move || async move {
        let (counter, warning) =
            TokenCounter::detect(&base_url, &model, api_key.as_deref(), tokenizer.as_deref(), timeout).await?;
        let prompts = synthetic_prompts(&counter, num_prompts, input_tokens, seed, 8).await?;
        Ok((prompts, counter.source_name(), warning))
    })
}

/// A shared-prefix workload: `prefixes` prefixes of `prefix_tokens` tokens, each followed by
/// each of `suffixes` suffixes adding `suffix_tokens` (the server's tokens, counted as
/// `make_prompts` counts them). Returns `(texts, prefix_tokens, prompt_tokens, source, warning)`:
/// prompt `p * suffixes + s` is prefix `p` then suffix `s`; `prefix_tokens[p]` and
/// `prompt_tokens[i]` are exact counts (specials included). Prefixes differ from their first
/// word, and so do suffixes, so a prefix cache can reuse exactly the shared prefix.
#[pyfunction]
#[pyo3(signature = (
    base_url, model, prefixes, prefix_tokens, suffixes, suffix_tokens, *, seed=0, tokenizer=None,
    api_key=None, timeout_s=None
))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn make_prefix_prompts(
    py: Python<'_>,
    base_url: String,
    model: String,
    prefixes: usize,
    prefix_tokens: usize,
    suffixes: usize,
    suffix_tokens: usize,
    seed: u64,
    tokenizer: Option<String>,
    api_key: Option<String>,
    timeout_s: Option<f64>,
) -> PyResult<(Vec<String>, Vec<usize>, Vec<usize>, &'static str, Option<String>)> {
    let timeout = timeout(timeout_s)?;
    native_call::block_on(py, move || async move {
        let (counter, warning) =
            TokenCounter::detect(&base_url, &model, api_key.as_deref(), tokenizer.as_deref(), timeout).await?;
        let w = prefix_prompts(&counter, prefixes, prefix_tokens, suffixes, suffix_tokens, seed, 8).await?;
        Ok((w.texts, w.prefix_tokens, w.prompt_tokens, counter.source_name(), warning))
    })
}

/// Prompts of a replayed trace: prefix `k` is `prefix_tokens[k]` tokens long and shared by every
/// prompt whose `prompts` entry `(prefix, input_tokens)` names it (`prefix` None: nothing
/// shared); each prompt is `input_tokens` long, counted as `make_prompts` counts. Returns
/// `(texts, prefix_counts, source, warning)`.
#[pyfunction]
#[pyo3(signature = (
    base_url, model, prefix_tokens, prompts, *, seed=0, tokenizer=None, api_key=None, timeout_s=None
))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn make_trace_prompts(
    py: Python<'_>,
    base_url: String,
    model: String,
    prefix_tokens: Vec<usize>,
    prompts: Vec<(Option<usize>, usize)>,
    seed: u64,
    tokenizer: Option<String>,
    api_key: Option<String>,
    timeout_s: Option<f64>,
) -> PyResult<(Vec<String>, Vec<usize>, &'static str, Option<String>)> {
    let timeout = timeout(timeout_s)?;
    let specs: Vec<TracePrompt> =
        prompts.into_iter().map(|(prefix, input_tokens)| TracePrompt { prefix, input_tokens }).collect();
    native_call::block_on(py, move || async move {
        let (counter, warning) =
            TokenCounter::detect(&base_url, &model, api_key.as_deref(), tokenizer.as_deref(), timeout).await?;
        let (texts, counts) = trace_prompts(&counter, &prefix_tokens, &specs, seed, 8).await?;
        Ok((texts, counts, counter.source_name(), warning))
    })
}

fn timeout(timeout_s: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout_s {
        None => Ok(None),
        Some(t) if t > 0.0 && t.is_finite() => Ok(Some(Duration::from_secs_f64(t))),
        Some(t) => Err(config_err(format!("timeout_s must be a positive number of seconds, got {t}"))),
    }
}

/// Number of tokens in `text` by a tokenizer.json file (`add_special` counts BOS and the like).
#[pyfunction]
#[pyo3(signature = (tokenizer, text, add_special=true))]
fn count_tokens(py: Python<'_>, tokenizer: String, text: String, add_special: bool) -> PyResult<usize> {
    native_call::block_on(py, move || async move {
        let counter = TokenCounter::from_file(&tokenizer)?;
        counter.count(&text, add_special).await
    })
}

/// Adds the prompt and token functions to `optbench._core`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(make_prompts, m)?)?;
    m.add_function(wrap_pyfunction!(make_prefix_prompts, m)?)?;
    m.add_function(wrap_pyfunction!(make_trace_prompts, m)?)?;
    m.add_function(wrap_pyfunction!(count_tokens, m)?)?;
    Ok(())
}
