//! Bindings for the core's scorers: SQuAD v2 exact match and F1, GSM8K answer extraction
//! and pass@k.

use optbench_core::scoring::gsm8k::{self, Gsm8kMode};
use optbench_core::scoring::{self, squad};
use pyo3::prelude::*;

use crate::errors::{config_err, PyCoreError};
use crate::native_call;

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
    native_call::run_blocking(py, |cancel| {
        let mut out = (Vec::new(), Vec::new(), Vec::new());
        for (p, g) in predictions.iter().zip(&gold_answers) {
            if cancel.is_set() {
                break;
            }
            let s = squad::score_squad_v2(p, g, no_answer_phrase.as_deref());
            out.0.push(s.exact);
            out.1.push(s.f1);
            out.2.push(s.has_answer);
        }
        Ok(out)
    })
}

/// The official SQuAD `normalize_answer` (lower-case, drop ASCII punctuation, drop the words
/// a/an/the, collapse whitespace), with Python's Unicode semantics.
#[pyfunction]
fn squad_normalize(text: &str) -> String {
    squad::normalize_answer(text)
}

/// The final answer GSM8K-style extraction finds in `text`; `mode` is `marked-or-last`,
/// `official`, `lmeval-strict` or `lmeval-flexible`. `[invalid]` when nothing is found.
#[pyfunction]
#[pyo3(signature = (text, mode="marked-or-last"))]
fn gsm8k_extract(text: &str, mode: &str) -> PyResult<String> {
    let mode = Gsm8kMode::parse(mode).map_err(PyCoreError)?;
    Ok(gsm8k::gsm8k_extract(text, mode))
}

/// Whether each prediction's extracted answer matches its gold answer (GSM8K's final answer or
/// whole solution), under `mode`'s comparison rules.
#[pyfunction]
#[pyo3(signature = (predictions, golds, mode="marked-or-last"))]
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

/// Adds the scoring functions to `optbench._core`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(squad_v2_scores, m)?)?;
    m.add_function(wrap_pyfunction!(squad_normalize, m)?)?;
    m.add_function(wrap_pyfunction!(gsm8k_extract, m)?)?;
    m.add_function(wrap_pyfunction!(gsm8k_correct, m)?)?;
    m.add_function(wrap_pyfunction!(pass_at_k, m)?)?;
    Ok(())
}
