//! optbench-core: the pure-Rust heart of optbench (no PyO3 here).
//!
//! - [`runner`]: load tests in a closed or open loop on absolute deadlines ([`schedule`]),
//!   one streamed request at a time measured by [`client`] with the [`sse`] parser;
//! - [`preconnect`]: opens the connection pool before a run's clock starts;
//! - [`routing`]: which of several base URLs (replicas) each request goes to;
//! - [`record`]: the per-request record and its metrics; [`metrics`]: the aggregates;
//! - [`tokens`] and [`prompts`]: prompts of a target length in the server's tokens;
//! - [`arrow`]: records as an Arrow record batch;
//! - [`embeddings`]: sentence embeddings (all-MiniLM-L6-v2 through ONNX Runtime) for the chat scorer;
//! - [`scoring`]: SQuAD v2, GSM8K and pass@k, equal to their references;
//! - [`sandbox`]: runs untrusted Python programs (HumanEval) isolated and bounded;
//! - [`mock`]: an OpenAI-compatible streaming server with known timing and injectable faults.
//!
//! Async work runs on the caller's tokio runtime; nothing here starts servers or draws plots.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod arrow;
pub mod client;
pub mod embeddings;
pub mod error;
pub mod h1;
pub mod journal;
pub mod metrics;
pub mod mock;
pub mod preconnect;
pub mod prompts;
pub mod record;
pub mod routing;
pub mod runner;
pub mod sandbox;
pub mod schedule;
pub mod scoring;
pub mod sse;
pub mod tokens;

pub use error::{CoreError, Result};
