//! Finding the Python interpreter that programs run with.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{CoreError, Result};

/// `python` as given, or looked up on `PATH` when it is a bare name.
pub(super) fn resolve_python(python: &Path) -> Result<PathBuf> {
    let found = if python.components().count() == 1 && !python.is_absolute() {
        find_on_path(python.as_os_str())
    } else {
        python.is_file().then(|| python.to_path_buf())
    };
    found.ok_or_else(|| CoreError::config(format!("python interpreter {} not found", python.display())))
}

fn find_on_path(name: &OsStr) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// `python3` on `PATH` (through shims to the real executable), then the system interpreters.
/// Remembered per value of `PATH` for the life of the process: asking a pyenv shim for its
/// interpreter runs several shell scripts (~0.2 s), which each batch of programs would pay.
pub(super) fn default_python_candidates() -> Vec<PathBuf> {
    static CACHE: std::sync::Mutex<Option<(Option<std::ffi::OsString>, Vec<PathBuf>)>> = std::sync::Mutex::new(None);
    let path = std::env::var_os("PATH");
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((cached_path, candidates)) = cache.as_ref() {
        if *cached_path == path && candidates.iter().all(|c| c.is_file()) {
            return candidates.clone();
        }
    }
    let candidates = find_default_python_candidates();
    *cache = Some((path, candidates.clone()));
    candidates
}

fn find_default_python_candidates() -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(shim_or_real) = find_on_path(OsStr::new("python3")) {
        // pyenv-style shims are scripts that need the parent's environment; ask the
        // interpreter behind one for its real path.
        let real = Command::new(&shim_or_real)
            .args(["-c", "import sys; print(sys.executable)"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .filter(|p| p.is_file());
        candidates.push(real.unwrap_or(shim_or_real));
    }
    for system in ["/usr/bin/python3", "/usr/local/bin/python3"] {
        let p = PathBuf::from(system);
        let same = |c: &PathBuf| fs::canonicalize(c).ok() == fs::canonicalize(&p).ok();
        if p.is_file() && !candidates.iter().any(same) {
            candidates.push(p);
        }
    }
    candidates
}
