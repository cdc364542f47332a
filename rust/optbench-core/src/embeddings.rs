//! Sentence embeddings for the chat scorer: all-MiniLM-L6-v2 computed exactly as
//! sentence-transformers does it.
//!
//! The pipeline is the model's own: its BERT uncased WordPiece `tokenizer.json` through the
//! `tokenizers` crate, truncated at [`DEFAULT_MAX_LENGTH`] tokens (sentence-transformers'
//! `max_seq_length`, not the 128 written in tokenizer.json) and padded to the longest text of
//! each batch; the BERT encoder (`model.onnx`) through ONNX Runtime via the `ort` crate; then
//! mean pooling over the attention mask and L2 normalisation (neither is in the ONNX graph).
//!
//! ONNX Runtime is not linked: [`Embedder::new`] loads the shared library given to it (in
//! optbench, `libonnxruntime.so.<version>` from the PyPI `onnxruntime` wheel). The first
//! library loaded stays for the life of the process.
//!
//! Inference is CPU-bound and blocks: call [`Embedder::encode`] from a plain thread, or
//! [`Embedder::encode_async`] from async code, which moves it to tokio's blocking pool.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, ValueType};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{CoreError, Result};

/// Tokens per text after truncation, special tokens included: sentence-transformers'
/// `max_seq_length` for all-MiniLM-L6-v2 (its `sentence_bert_config.json`).
pub const DEFAULT_MAX_LENGTH: usize = 256;

/// Texts per ONNX Runtime call, as in sentence-transformers' `encode`.
pub const DEFAULT_BATCH_SIZE: usize = 32;

/// The model inputs this embedder can feed (BERT's); int64 `[batch, seq]` each.
const INPUT_IDS: &str = "input_ids";
const ATTENTION_MASK: &str = "attention_mask";
const TOKEN_TYPE_IDS: &str = "token_type_ids";
/// The model output that is pooled: `[batch, seq, dim]` token embeddings.
const LAST_HIDDEN_STATE: &str = "last_hidden_state";

fn model_err(message: impl std::fmt::Display) -> CoreError {
    CoreError::Model(message.to_string())
}

/// The ONNX Runtime environment of this process and the library it was loaded from. `ort`
/// allows one environment per process and one loaded library, so both are created once.
static ORT_ENV: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

/// Loads ONNX Runtime from `dylib` (once per process) and returns the environment.
fn ort_environment(dylib: &Path) -> Result<Environment> {
    if !dylib.is_file() {
        return Err(CoreError::config(format!(
            "the ONNX Runtime library {} does not exist; install ONNX Runtime with \
             pip install \"onnxruntime>=1.31,<2\"",
            dylib.display()
        )));
    }
    // Compare canonical paths so that two spellings of the same file are one library.
    let dylib = dylib.canonicalize().map_err(|source| CoreError::Io { path: dylib.display().to_string(), source })?;
    let mut env = ORT_ENV.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((loaded, environment)) = env.as_ref() {
        if *loaded != dylib {
            return Err(CoreError::config(format!(
                "ONNX Runtime is already loaded from {} in this process; it cannot also be loaded from {}",
                loaded.display(),
                dylib.display()
            )));
        }
        return Ok(environment.clone());
    }
    let environment = ort::init_from(&dylib)
        .map_err(|e| {
            CoreError::config(format!(
                "cannot load ONNX Runtime: {e}; install a compatible one with pip install \"onnxruntime>=1.31,<2\""
            ))
        })?
        .with_name("optbench")
        .with_telemetry(false)
        .build()
        .map_err(|e| model_err(format!("cannot create the ONNX Runtime environment: {e}")))?;
    *env = Some((dylib, environment.clone()));
    Ok(environment)
}

/// The ONNX file of a model folder: `model.onnx`, or `onnx/model.onnx` as in the hub's
/// `sentence-transformers/all-MiniLM-L6-v2`.
pub fn find_model_file(model_dir: &Path) -> Result<PathBuf> {
    if !model_dir.is_dir() {
        return Err(CoreError::config(format!(
            "the embedding model folder {} does not exist (it should hold model.onnx and tokenizer.json)",
            model_dir.display()
        )));
    }
    ["model.onnx", "onnx/model.onnx"].iter().map(|name| model_dir.join(name)).find(|p| p.is_file()).ok_or_else(|| {
        CoreError::config(format!("no ONNX model in {}: expected model.onnx or onnx/model.onnx", model_dir.display()))
    })
}

/// A sentence-transformers style embedding model (BERT encoder, mean pooling, L2 norm) run by
/// ONNX Runtime on the CPU. Safe to share between threads; ONNX Runtime runs one batch at a
/// time (each batch already uses all of the intra-op threads).
pub struct Embedder {
    tokenizer: Tokenizer,
    // `Session::run` needs `&mut`; the lock also keeps two batches from fighting over cores.
    session: Mutex<Session>,
    /// The model's inputs in its own order (a subset of the three BERT inputs).
    inputs: Vec<String>,
    dim: usize,
    max_length: usize,
    pad_id: u32,
    model_path: PathBuf,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model_path", &self.model_path)
            .field("dim", &self.dim)
            .field("max_length", &self.max_length)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Loads the model in `model_dir` (`tokenizer.json` and `model.onnx` or `onnx/model.onnx`)
    /// with ONNX Runtime from the shared library `ort_dylib_path`. `threads` is the number of
    /// intra-op threads (`None`: one per available core); `max_length` the truncation length in
    /// tokens, special tokens included ([`DEFAULT_MAX_LENGTH`] for all-MiniLM-L6-v2).
    pub fn new(
        model_dir: impl AsRef<Path>,
        ort_dylib_path: impl AsRef<Path>,
        threads: Option<usize>,
        max_length: usize,
    ) -> Result<Self> {
        let model_dir = model_dir.as_ref();
        let model_path = find_model_file(model_dir)?;
        if max_length < 2 {
            return Err(CoreError::config(format!(
                "max_length must be at least 2 tokens ([CLS] and [SEP]), got {max_length}"
            )));
        }
        let threads = match threads {
            Some(0) => return Err(CoreError::config("threads must be at least 1 (or None for all cores)")),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let tokenizer = load_tokenizer(&model_dir.join("tokenizer.json"), max_length)?;
        let pad_id = tokenizer.token_to_id("[PAD]").unwrap_or(0);

        let environment = ort_environment(ort_dylib_path.as_ref())?;
        let session = Session::builder(&environment)
            .and_then(|b| Ok(b.with_intra_threads(threads)?))
            // The same settings as onnxruntime's Python API defaults: every graph optimisation
            // (ORT_ENABLE_ALL), sequential execution (so one inter-op thread).
            .and_then(|b| Ok(b.with_inter_threads(1)?))
            .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::All)?))
            // Spinning threads would burn the cores between batches, which a shared machine
            // (or a load test running next to the scorer) pays for; the batches are large.
            // (Measured: spinning on gains ~5% at 2 threads, within this machine's noise.)
            .and_then(|b| Ok(b.with_intra_op_spinning(false)?))
            .and_then(|mut b| b.commit_from_file(&model_path))
            .map_err(|e| model_err(format!("cannot load {}: {e}", model_path.display())))?;

        let inputs: Vec<String> = session.inputs().iter().map(|i| i.name().to_string()).collect();
        let known = [INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS];
        if let Some(unknown) = inputs.iter().find(|n| !known.contains(&n.as_str())) {
            return Err(model_err(format!(
                "{} has an input {unknown:?}; a BERT encoder takes input_ids, attention_mask and token_type_ids",
                model_path.display()
            )));
        }
        if !inputs.iter().any(|n| n == INPUT_IDS) {
            return Err(model_err(format!("{} has no input_ids input", model_path.display())));
        }
        let output = session.outputs().iter().find(|o| o.name() == LAST_HIDDEN_STATE).ok_or_else(|| {
            model_err(format!(
                "{} has no {LAST_HIDDEN_STATE} output (it has {:?})",
                model_path.display(),
                session.outputs().iter().map(|o| o.name()).collect::<Vec<_>>()
            ))
        })?;
        let declared_dim = match output.dtype() {
            ValueType::Tensor { shape, .. } if shape.len() == 3 => shape[2],
            other => {
                return Err(model_err(format!(
                    "{LAST_HIDDEN_STATE} of {} should be [batch, seq, dim], not {other:?}",
                    model_path.display()
                )))
            }
        };

        let mut embedder = Embedder {
            tokenizer,
            session: Mutex::new(session),
            inputs,
            dim: usize::try_from(declared_dim).unwrap_or(0),
            max_length,
            pad_id,
            model_path,
        };
        if embedder.dim == 0 {
            // A dynamic embedding size: learn it from one tiny run.
            let (_, dim) = embedder.run_batch(&[embedder.tokenize_one("")?])?;
            embedder.dim = dim;
        }
        Ok(embedder)
    }

    /// The embedding size (384 for all-MiniLM-L6-v2).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The truncation length in tokens, special tokens included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The ONNX file in use.
    pub fn model_path(&self) -> &Path {
        &self.model_path
    }

    /// The token ids the model sees for each text: `[CLS] ... [SEP]`, truncated to
    /// `max_length`, without padding.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        Ok(self.tokenize_all(texts)?.into_iter().map(|t| t.ids).collect())
    }

    /// Embeds `texts`: L2-normalised mean-pooled token embeddings, row-major `[texts.len(),
    /// dim()]`, in the order of `texts`. Texts are grouped by token length into batches of at
    /// most `batch_size` so that little padding is computed; the result does not depend on
    /// the batching beyond float rounding (~1e-7). Blocks the calling thread.
    pub fn encode(&self, texts: &[&str], batch_size: usize) -> Result<Vec<f32>> {
        let never = AtomicBool::new(false);
        Ok(self.encode_cancellable(texts, batch_size, &never)?.expect("never cancelled"))
    }

    /// [`encode`](Self::encode) that stops between batches once `cancel` is set, returning
    /// `None` (so Ctrl-C in a caller does not wait for the whole input).
    pub fn encode_cancellable(
        &self,
        texts: &[&str],
        batch_size: usize,
        cancel: &AtomicBool,
    ) -> Result<Option<Vec<f32>>> {
        if batch_size == 0 {
            return Err(CoreError::config("batch_size must be at least 1"));
        }
        let tokenized = self.tokenize_all(texts)?;
        // Longest first, stable: each batch pads to its first text's length.
        let mut order: Vec<usize> = (0..tokenized.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(tokenized[i].ids.len()));

        let mut out = vec![0f32; texts.len() * self.dim];
        for chunk in order.chunks(batch_size) {
            if cancel.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let batch: Vec<Tokens> = chunk.iter().map(|&i| tokenized[i].clone()).collect();
            let (embeddings, dim) = self.run_batch(&batch)?;
            debug_assert_eq!(dim, self.dim);
            for (row, &i) in chunk.iter().enumerate() {
                out[i * dim..(i + 1) * dim].copy_from_slice(&embeddings[row * dim..(row + 1) * dim]);
            }
        }
        Ok(Some(out))
    }

    /// [`encode`](Self::encode) for async code: the work runs on tokio's blocking pool, so the
    /// runtime's worker threads stay free while ONNX Runtime computes.
    pub async fn encode_async(self: Arc<Self>, texts: Vec<String>, batch_size: usize) -> Result<Vec<f32>> {
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            self.encode(&refs, batch_size)
        })
        .await
        .map_err(|e| model_err(format!("the embedding task failed: {e}")))?
    }

    fn tokenize_one(&self, text: &str) -> Result<Tokens> {
        let e = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| CoreError::Tokenizer(format!("cannot tokenize a text: {e}")))?;
        Ok(Tokens::from(&e))
    }

    fn tokenize_all(&self, texts: &[&str]) -> Result<Vec<Tokens>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| CoreError::Tokenizer(format!("cannot tokenize the texts: {e}")))?;
        Ok(encodings.iter().map(Tokens::from).collect())
    }

    /// Runs one padded batch and pools it. Returns `(embeddings [batch, dim], dim)`.
    fn run_batch(&self, batch: &[Tokens]) -> Result<(Vec<f32>, usize)> {
        let rows = batch.len();
        let seq = batch.iter().map(|t| t.ids.len()).max().unwrap_or(0);
        // Pad on the right to the longest text of the batch, as sentence-transformers does.
        let mut ids = vec![i64::from(self.pad_id); rows * seq];
        let mut mask = vec![0i64; rows * seq];
        let mut types = vec![0i64; rows * seq];
        for (r, t) in batch.iter().enumerate() {
            for (j, ((&id, &m), &ty)) in t.ids.iter().zip(&t.mask).zip(&t.type_ids).enumerate() {
                ids[r * seq + j] = i64::from(id);
                mask[r * seq + j] = i64::from(m);
                types[r * seq + j] = i64::from(ty);
            }
        }
        let shape = [rows as i64, seq as i64];
        let mut feeds: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(self.inputs.len());
        for name in &self.inputs {
            let data = match name.as_str() {
                INPUT_IDS => ids.clone(),
                ATTENTION_MASK => mask.clone(),
                _ => types.clone(),
            };
            let tensor = Tensor::from_array((shape, data)).map_err(model_err)?;
            feeds.push((Cow::Owned(name.clone()), tensor.into()));
        }

        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session.run(feeds).map_err(|e| model_err(format!("inference failed: {e}")))?;
        let value = outputs
            .get(LAST_HIDDEN_STATE)
            .ok_or_else(|| model_err(format!("the model returned no {LAST_HIDDEN_STATE}")))?;
        let (out_shape, hidden) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| model_err(format!("{LAST_HIDDEN_STATE} is not a float32 tensor: {e}")))?;
        if out_shape.len() != 3 || out_shape[0] as usize != rows || out_shape[1] as usize != seq {
            return Err(model_err(format!(
                "{LAST_HIDDEN_STATE} has shape {:?}, expected [{rows}, {seq}, dim]",
                &out_shape[..]
            )));
        }
        let dim = out_shape[2] as usize;
        Ok((mean_pool_normalize(hidden, &mask, rows, seq, dim), dim))
    }
}

/// One text's tokens after truncation.
#[derive(Clone)]
struct Tokens {
    ids: Vec<u32>,
    mask: Vec<u32>,
    type_ids: Vec<u32>,
}

impl From<&tokenizers::Encoding> for Tokens {
    fn from(e: &tokenizers::Encoding) -> Self {
        Tokens { ids: e.get_ids().to_vec(), mask: e.get_attention_mask().to_vec(), type_ids: e.get_type_ids().to_vec() }
    }
}

/// The model's tokenizer with sentence-transformers' settings: truncation at `max_length`
/// (tokenizer.json says 128) and no built-in padding (the file pads everything to 128; we pad
/// each batch to its longest text ourselves).
fn load_tokenizer(path: &Path, max_length: usize) -> Result<Tokenizer> {
    if !path.is_file() {
        return Err(CoreError::config(format!(
            "{} does not exist: the model folder needs its tokenizer.json",
            path.display()
        )));
    }
    let mut tokenizer =
        Tokenizer::from_file(path).map_err(|e| CoreError::Tokenizer(format!("cannot load {}: {e}", path.display())))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        }))
        .map_err(|e| CoreError::Tokenizer(format!("{}: {e}", path.display())))?;
    Ok(tokenizer)
}

/// sentence-transformers' `Pooling(mean)` then `Normalize`: the mean of the token embeddings
/// where the mask is 1 (divided by max(count, 1e-9)), then divided by max(L2 norm, 1e-12).
/// Sums are taken in f64, so the result is at least as exact as torch's float32.
fn mean_pool_normalize(hidden: &[f32], mask: &[i64], rows: usize, seq: usize, dim: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * dim);
    let mut acc = vec![0f64; dim];
    for r in 0..rows {
        acc.iter_mut().for_each(|a| *a = 0.0);
        let mut count = 0f64;
        for t in 0..seq {
            if mask[r * seq + t] == 0 {
                continue;
            }
            count += 1.0;
            let token = &hidden[(r * seq + t) * dim..(r * seq + t + 1) * dim];
            for (a, &x) in acc.iter_mut().zip(token) {
                *a += f64::from(x);
            }
        }
        let count = count.max(1e-9);
        acc.iter_mut().for_each(|a| *a /= count);
        let norm = acc.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
        out.extend(acc.iter().map(|a| (a / norm) as f32));
    }
    out
}

/// Cosine similarity of two vectors (0 when either is all zeros), computed in f64.
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        (dot / (na.sqrt() * nb.sqrt())) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared copy of all-MiniLM-L6-v2 (`OPTBENCH_EMBEDDING_MODEL_DIR` overrides it).
    fn model_dir() -> PathBuf {
        std::env::var_os("OPTBENCH_EMBEDDING_MODEL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/all-MiniLM-L6-v2"))
    }

    /// `ORT_DYLIB_PATH`, else `libonnxruntime.so.*` in the project venv's `onnxruntime` wheel.
    fn ort_dylib() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
            return Some(PathBuf::from(p));
        }
        let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/lib");
        for python in std::fs::read_dir(lib).ok()?.flatten() {
            let capi = python.path().join("site-packages/onnxruntime/capi");
            let Ok(files) = std::fs::read_dir(&capi) else { continue };
            for f in files.flatten() {
                if f.file_name().to_string_lossy().starts_with("libonnxruntime.so.") {
                    return Some(f.path());
                }
            }
        }
        None
    }

    /// The embedder over the shared model, or None (with a message) without ONNX Runtime.
    fn embedder() -> Option<Embedder> {
        let Some(dylib) = ort_dylib() else {
            eprintln!("SKIPPED: no ONNX Runtime library (set ORT_DYLIB_PATH or pip install onnxruntime into .venv)");
            return None;
        };
        Some(Embedder::new(model_dir(), dylib, Some(2), DEFAULT_MAX_LENGTH).expect("load the shared model"))
    }

    /// (text, input_ids) pairs of reference_texts.jsonl, and the reference embeddings.
    fn references() -> (Vec<(String, Vec<u32>)>, Vec<f32>) {
        let texts = std::fs::read_to_string(model_dir().join("reference_texts.jsonl")).expect("reference texts");
        let rows = texts
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let ids = v["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
                (v["text"].as_str().unwrap().to_string(), ids)
            })
            .collect();
        (rows, read_npy_f32(&model_dir().join("reference_embeddings.npy")))
    }

    /// A little-endian float32 C-order .npy file, flattened.
    fn read_npy_f32(path: &Path) -> Vec<f32> {
        let bytes = std::fs::read(path).expect("npy");
        assert_eq!(&bytes[..6], b"\x93NUMPY");
        let (header_len, start) = if bytes[6] == 1 {
            (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
        } else {
            (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12)
        };
        let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
        assert!(header.contains("'<f4'") && header.contains("'fortran_order': False"), "{header}");
        let data = &bytes[start + header_len..];
        data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    #[test]
    fn embeddings_match_sentence_transformers() {
        let Some(embedder) = embedder() else { return };
        assert_eq!(embedder.dim(), 384);
        let (rows, reference) = references();
        let texts: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();

        let ids = embedder.tokenize(&texts).unwrap();
        for ((text, want), got) in rows.iter().zip(&ids) {
            assert_eq!(got, want, "token ids of {text:?}");
        }

        let got = embedder.encode(&texts, DEFAULT_BATCH_SIZE).unwrap();
        assert_eq!(got.len(), texts.len() * 384);
        let mut min_cos = f32::INFINITY;
        for (i, text) in texts.iter().enumerate() {
            let cos = cosine_similarity(&got[i * 384..(i + 1) * 384], &reference[i * 384..(i + 1) * 384]);
            assert!(cos >= 0.99999, "cosine {cos} for text {i} {text:?}");
            min_cos = min_cos.min(cos);
        }
        let max_abs = got.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("min cosine {min_cos:.9}, max abs diff {max_abs:e}");
        assert!(max_abs < 1e-5);
    }

    #[test]
    fn embeddings_batching_and_edge_cases() {
        let Some(embedder) = embedder() else { return };
        let long = "word ".repeat(2000);
        let texts = ["short", "", &long, "a somewhat longer sentence about cats and dogs", "short"];
        let one = embedder.encode(&texts, 1).unwrap();
        let all = embedder.encode(&texts, 32).unwrap();
        let max_diff = one.iter().zip(&all).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max_diff < 1e-6, "batch size changed the result by {max_diff}");
        // Equal texts get equal rows wherever they sit; every row is unit length.
        assert_eq!(&all[..384], &all[4 * 384..]);
        for row in all.chunks(384) {
            let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5);
        }
        assert_eq!(embedder.tokenize(&[&long]).unwrap()[0].len(), 256);
        assert!(embedder.encode(&[], 8).unwrap().is_empty());
        assert!(matches!(embedder.encode(&texts, 0), Err(CoreError::Config(_))));
    }

    #[test]
    fn embeddings_encode_async_runs_off_the_workers() {
        let Some(embedder) = embedder() else { return };
        let embedder = Arc::new(embedder);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let got = rt.block_on(embedder.clone().encode_async(vec!["hello".into(), "world".into()], 32)).unwrap();
        assert_eq!(got, embedder.encode(&["hello", "world"], 32).unwrap());
    }

    #[test]
    fn embeddings_report_missing_files_clearly() {
        let err = Embedder::new("/nonexistent/model", "/nonexistent/libonnxruntime.so", None, 256).unwrap_err();
        assert!(matches!(&err, CoreError::Config(m) if m.contains("/nonexistent/model")), "{err}");
        let err = ort_environment(Path::new("/nonexistent/libonnxruntime.so.1.32.0")).unwrap_err();
        assert!(matches!(&err, CoreError::Config(m) if m.contains("pip install")), "{err}");
        let err = Embedder::new(model_dir(), "/x.so", None, 1).unwrap_err();
        assert!(matches!(&err, CoreError::Config(m) if m.contains("max_length")), "{err}");
    }

    #[test]
    fn cosine_of_simple_vectors() {
        assert!((cosine_similarity(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-7);
        assert_eq!(cosine_similarity(&[1.0, 0.0], &[0.0, 3.0]), 0.0);
        assert_eq!(cosine_similarity(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }
}
