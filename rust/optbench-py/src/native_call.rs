//! The one way a binding runs long native work: without the GIL, with Ctrl-C turned into
//! `KeyboardInterrupt` within [`SIGNAL_CHECK`], and with core errors mapped by
//! [`crate::errors`].
//!
//! - [`block_on`]: async core work on the process-wide tokio runtime, driven from the calling
//!   thread; on Ctrl-C the future is dropped, which cancels what it was waiting for.
//! - [`run_blocking`]: blocking core work on a thread of its own; on Ctrl-C its [`Cancel`]
//!   flag is set and the call returns once the work has noticed it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use optbench_core::CoreError;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use crate::errors::core_error_to_py;

/// How often a waiting call looks for Ctrl-C.
pub const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// The process-wide tokio runtime (pyo3-async-runtimes' global one, never one per call).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// Set when the caller was interrupted; cancellable work polls it and stops early.
#[derive(Default)]
pub struct Cancel(AtomicBool);

impl Cancel {
    /// The flag, for core functions that take `&AtomicBool`.
    pub fn flag(&self) -> &AtomicBool {
        &self.0
    }

    /// True once the caller was interrupted.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Python's pending signal handlers run now (with the GIL taken back briefly); `Err` is the
/// exception one raised, usually `KeyboardInterrupt`. Signals reach only the main thread, so
/// elsewhere this never fails.
fn pending_signal() -> PyResult<()> {
    Python::attach(|py| py.check_signals())
}

/// Runs the future made by `make` to completion on the global runtime, without the GIL, from
/// the calling thread. Ctrl-C drops the future and raises `KeyboardInterrupt`.
pub fn block_on<T, F, Fut>(py: Python<'_>, make: F) -> PyResult<T>
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = Result<T, CoreError>>,
    T: Send,
{
    let outcome: PyResult<Result<T, CoreError>> = py.detach(|| {
        runtime().block_on(async move {
            let work = make();
            tokio::pin!(work);
            let mut ticks = tokio::time::interval(SIGNAL_CHECK);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is immediate
            loop {
                tokio::select! {
                    biased;
                    done = &mut work => return Ok(done),
                    _ = ticks.tick() => pending_signal()?,
                }
            }
        })
    });
    outcome?.map_err(|e| core_error_to_py(py, &e))
}

/// Runs `work` on a thread of its own while this one waits without the GIL. On Ctrl-C the
/// [`Cancel`] flag is set, the call waits for `work` to return (cancellable work stops within
/// a tick; whatever it returns is dropped) and raises `KeyboardInterrupt`.
pub fn run_blocking<T, F>(py: Python<'_>, work: F) -> PyResult<T>
where
    F: FnOnce(&Cancel) -> Result<T, CoreError> + Send,
    T: Send,
{
    let cancel = Cancel::default();
    // The whole scope runs without the GIL, so joining the worker never blocks other threads.
    let outcome = py.detach(|| {
        std::thread::scope(|scope| {
            let (tx, rx) = mpsc::channel();
            let cancel = &cancel;
            scope.spawn(move || {
                let _ = tx.send(work(cancel));
            });
            loop {
                match rx.recv_timeout(SIGNAL_CHECK) {
                    Ok(done) => return Ok(done),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if let Err(interrupt) = pending_signal() {
                            cancel.0.store(true, Ordering::SeqCst);
                            return Err(interrupt);
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        return Err(PyRuntimeError::new_err("a native worker thread ended without a result"));
                    }
                }
            }
        })
    })?;
    outcome.map_err(|e| core_error_to_py(py, &e))
}
