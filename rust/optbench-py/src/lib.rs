//! `optbench._core`: PyO3 bindings for optbench-core, one file per domain, each with a
//! `register` function; this file only assembles the module. Conversions and GIL handling
//! live in the domain files, error mapping in [`errors`], and every long native call goes
//! through [`native_call`]. All measuring logic lives in the core crate.
#![deny(clippy::undocumented_unsafe_blocks)]

use pyo3::prelude::*;

mod embeddings;
mod errors;
mod load_test;
mod mock;
mod native_call;
mod prompts;
mod py_json;
mod sandbox;
mod scoring;

/// The Rust core of optbench. Import `optbench`, not this module.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // "release" for optimised builds; timed work refuses or warns on "debug".
    m.add("build_profile", if cfg!(debug_assertions) { "debug" } else { "release" })?;
    errors::register(m)?;
    load_test::register(m)?;
    prompts::register(m)?;
    mock::register(m)?;
    scoring::register(m)?;
    embeddings::register(m)?;
    sandbox::register(m)?;
    Ok(())
}
