//! Bindings for the core's sentence embedder (the chat scorer's all-MiniLM-L6-v2). The
//! Python wrapper `optbench.embeddings.Embedder` finds the model and ONNX Runtime; this class
//! only loads and runs them.

use std::path::PathBuf;

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2};
use optbench_core::embeddings::{Embedder as CoreEmbedder, DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH};
use pyo3::prelude::*;

use crate::native_call;

// The signatures spell the defaults as literals so that Python's introspection (and the stub
// test) sees them; these keep them equal to the core's.
const _: () = assert!(DEFAULT_MAX_LENGTH == 256 && DEFAULT_BATCH_SIZE == 32);

/// A sentence embedding model (BERT encoder, mean pooling, L2 normalisation) run by ONNX
/// Runtime, loaded from `model_dir` (`tokenizer.json` and `model.onnx` or `onnx/model.onnx`)
/// with the ONNX Runtime shared library `ort_library`. `threads`: intra-op threads (None: all
/// cores); `max_length`: truncation in tokens, special tokens included. Use
/// `optbench.embeddings.Embedder`, which finds both paths for you.
#[pyclass(frozen, module = "optbench._core", name = "Embedder")]
pub struct PyEmbedder {
    inner: CoreEmbedder,
}

#[pymethods]
impl PyEmbedder {
    #[new]
    #[pyo3(signature = (model_dir, ort_library, *, threads=None, max_length=256))]
    fn new(
        py: Python<'_>,
        model_dir: PathBuf,
        ort_library: PathBuf,
        threads: Option<usize>,
        max_length: usize,
    ) -> PyResult<Self> {
        // Loading parses a 90 MB model: let other Python threads run meanwhile.
        let inner =
            native_call::run_blocking(py, |_| CoreEmbedder::new(&model_dir, &ort_library, threads, max_length))?;
        Ok(PyEmbedder { inner })
    }

    /// Embeddings of `texts` as a float32 array `[len(texts), dim]` in the order given, each
    /// row L2-normalised. Texts of similar token length are batched together, `batch_size` at
    /// a time. Runs without the GIL; Ctrl-C stops it between batches.
    #[pyo3(signature = (texts, batch_size=32))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        batch_size: usize,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let data = native_call::run_blocking(py, |cancel| {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            self.inner.encode_cancellable(&refs, batch_size, cancel.flag())
        })?
        // Only cancellation yields None, and run_blocking raises KeyboardInterrupt then.
        .expect("not cancelled");
        let array = Array2::from_shape_vec((texts.len(), self.inner.dim()), data)
            .expect("encode returns len(texts) * dim values");
        Ok(array.into_pyarray(py))
    }

    /// The token ids the model sees for each text (`[CLS] ... [SEP]`, truncated, unpadded).
    fn tokenize(&self, py: Python<'_>, texts: Vec<String>) -> PyResult<Vec<Vec<u32>>> {
        native_call::run_blocking(py, |_| {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            self.inner.tokenize(&refs)
        })
    }

    /// The embedding size (384 for all-MiniLM-L6-v2).
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// The truncation length in tokens, special tokens included.
    #[getter]
    fn max_length(&self) -> usize {
        self.inner.max_length()
    }

    /// The ONNX file in use.
    #[getter]
    fn model_path(&self) -> PathBuf {
        self.inner.model_path().to_path_buf()
    }

    fn __repr__(&self) -> String {
        let e = &self.inner;
        format!("Embedder(model_path={:?}, dim={}, max_length={})", e.model_path(), e.dim(), e.max_length())
    }
}

/// Adds the embedding classes to `optbench._core`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEmbedder>()?;
    Ok(())
}
