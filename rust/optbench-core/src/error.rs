//! The core's error type. Per-request failures are rows ([`crate::record::ErrorKind`]); these
//! errors are for bad configuration and for work that cannot start at all.

/// Errors raised before or around a run (never for a single failed request).
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A parameter is out of range or inconsistent; the message says what to fix.
    #[error("{0}")]
    Config(String),
    /// A tokenizer could not be loaded or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A model (the chat scorer's embedding model) could not be loaded or run.
    #[error("model: {0}")]
    Model(String),
    /// An HTTP exchange that a run depends on (not a measured request) got a wrong answer.
    #[error("http: {0}")]
    Http(String),
    /// A server that a run depends on could not be reached: refused, reset or unresolvable.
    #[error("http: {0}")]
    Connection(String),
    /// A server that a run depends on did not answer within its deadline.
    #[error("http: {0}")]
    Timeout(String),
    /// A file or an operating-system resource could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The file (or what was being done) that failed.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl CoreError {
    /// A configuration error with a message saying what to fix.
    pub fn config(message: impl Into<String>) -> Self {
        CoreError::Config(message.into())
    }
}

/// Result with [`CoreError`].
pub type Result<T, E = CoreError> = std::result::Result<T, E>;
