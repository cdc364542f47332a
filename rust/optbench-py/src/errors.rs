//! The one place where core errors become Python exceptions.
//!
//! `OptbenchError` is the base of optbench's own classes; I/O failures are `OSError`s as Python
//! code expects: a server that cannot be reached raises `ServerConnectionError` (a `ServerError`
//! and a `ConnectionError`), one that does not answer in time `ServerTimeoutError` (a
//! `ServerError` and a `TimeoutError`), and a file or system resource that cannot be used the
//! built-in `OSError` subclass of its errno (`FileNotFoundError`, `PermissionError`, ...).

use std::io;

use optbench_core::CoreError;
use pyo3::create_exception;
use pyo3::exceptions::{
    PyBrokenPipeError, PyConnectionAbortedError, PyConnectionError, PyConnectionRefusedError, PyConnectionResetError,
    PyException, PyFileExistsError, PyFileNotFoundError, PyInterruptedError, PyOSError, PyPermissionError,
    PyTimeoutError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

create_exception!(optbench._core, OptbenchError, PyException, "Base class of every optbench error.");
create_exception!(optbench._core, ConfigError, OptbenchError, "A parameter is invalid; the message says what to fix.");
create_exception!(optbench._core, TokenizerError, OptbenchError, "A tokenizer could not be loaded or used.");
create_exception!(
    optbench._core,
    ServerError,
    OptbenchError,
    "A server the run depends on could not be reached or answered wrongly."
);

/// `ServerError` + `ConnectionError`, made at import (one base class per `create_exception!`).
static SERVER_CONNECTION_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
/// `ServerError` + `TimeoutError`.
static SERVER_TIMEOUT_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// A class named `name` deriving from `ServerError` and the built-in `os_error`.
fn server_os_error<'py>(py: Python<'py>, name: &str, os_error: Bound<'py, PyType>, doc: &str) -> PyResult<Py<PyType>> {
    let bases = PyTuple::new(py, [py.get_type::<ServerError>(), os_error])?;
    let namespace = PyDict::new(py);
    namespace.set_item("__module__", "optbench._core")?;
    namespace.set_item("__doc__", doc)?;
    let class = py.get_type::<PyType>().call1((name, bases, namespace))?;
    Ok(class.cast_into::<PyType>()?.unbind())
}

fn server_connection_error(py: Python<'_>) -> &Py<PyType> {
    SERVER_CONNECTION_ERROR.get_or_init(py, || {
        server_os_error(
            py,
            "ServerConnectionError",
            py.get_type::<PyConnectionError>(),
            "A server the run depends on could not be reached, or dropped the connection.",
        )
        .expect("a subclass of ServerError and ConnectionError")
    })
}

fn server_timeout_error(py: Python<'_>) -> &Py<PyType> {
    SERVER_TIMEOUT_ERROR.get_or_init(py, || {
        server_os_error(
            py,
            "ServerTimeoutError",
            py.get_type::<PyTimeoutError>(),
            "A server the run depends on did not answer within its deadline.",
        )
        .expect("a subclass of ServerError and TimeoutError")
    })
}

/// `error` as the Python exception of its kind.
pub fn core_error_to_py(py: Python<'_>, error: &CoreError) -> PyErr {
    let message = error.to_string();
    match error {
        CoreError::Config(_) => ConfigError::new_err(message),
        CoreError::Tokenizer(_) => TokenizerError::new_err(message),
        CoreError::Model(_) => OptbenchError::new_err(message),
        CoreError::Http(_) => ServerError::new_err(message),
        CoreError::Connection(_) => PyErr::from_type(server_connection_error(py).bind(py).clone(), message),
        CoreError::Timeout(_) => PyErr::from_type(server_timeout_error(py).bind(py).clone(), message),
        CoreError::Io { path, source } => io_error_to_py(path, source),
    }
}

/// An I/O error as `OSError(errno, strerror, filename)`, which Python turns into the subclass
/// of that errno; errors without an errno by their kind, with `path: error` as the message.
fn io_error_to_py(path: &str, source: &io::Error) -> PyErr {
    if let Some(errno) = source.raw_os_error() {
        // The text without io::Error's " (os error N)" suffix: Python prints "[Errno N]" itself.
        let text = source.to_string();
        let strerror = text.split(" (os error").next().unwrap_or(&text).to_string();
        return PyOSError::new_err((errno, strerror, path.to_string()));
    }
    let message = format!("{path}: {source}");
    match source.kind() {
        io::ErrorKind::NotFound => PyFileNotFoundError::new_err(message),
        io::ErrorKind::PermissionDenied => PyPermissionError::new_err(message),
        io::ErrorKind::AlreadyExists => PyFileExistsError::new_err(message),
        io::ErrorKind::TimedOut => PyTimeoutError::new_err(message),
        io::ErrorKind::ConnectionRefused => PyConnectionRefusedError::new_err(message),
        io::ErrorKind::ConnectionReset => PyConnectionResetError::new_err(message),
        io::ErrorKind::ConnectionAborted => PyConnectionAbortedError::new_err(message),
        io::ErrorKind::BrokenPipe => PyBrokenPipeError::new_err(message),
        io::ErrorKind::Interrupted => PyInterruptedError::new_err(message),
        _ => PyOSError::new_err(message),
    }
}

/// The core error as a Python exception (a newtype: the orphan rule forbids `From` on the core
/// type). `?` on a core result inside a binding converts through it.
pub struct PyCoreError(pub CoreError);

impl From<CoreError> for PyCoreError {
    fn from(e: CoreError) -> Self {
        PyCoreError(e)
    }
}

impl From<PyCoreError> for PyErr {
    fn from(e: PyCoreError) -> PyErr {
        Python::attach(|py| core_error_to_py(py, &e.0))
    }
}

/// A `ConfigError` with `message`.
pub fn config_err(message: impl Into<String>) -> PyErr {
    ConfigError::new_err(message.into())
}

/// Adds the exception classes to `optbench._core`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("OptbenchError", py.get_type::<OptbenchError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("TokenizerError", py.get_type::<TokenizerError>())?;
    m.add("ServerError", py.get_type::<ServerError>())?;
    m.add("ServerConnectionError", server_connection_error(py).bind(py))?;
    m.add("ServerTimeoutError", server_timeout_error(py).bind(py))?;
    Ok(())
}
