//! The fresh temporary working directory of one run.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::io_err;
use crate::{CoreError, Result};

pub(super) fn write_program(path: &Path, program: &str, owner: Option<u32>) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(program.as_bytes())?;
    if let Some(uid) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(uid))?;
    }
    Ok(())
}

/// A fresh `optbench-sandbox-XXXXXX` directory under the temporary directory, owned by the
/// sandbox uid, removed on drop (permissions the program changed are fixed first).
pub(super) struct WorkDir {
    pub(super) path: PathBuf,
}

impl WorkDir {
    pub(super) fn create(owner: Option<u32>) -> Result<WorkDir> {
        let template = std::env::temp_dir().join("optbench-sandbox-XXXXXX");
        let mut bytes = CString::new(template.as_os_str().as_bytes())
            .map_err(|_| CoreError::config("the temporary directory's path contains a NUL byte"))?
            .into_bytes_with_nul();
        // SAFETY: `bytes` is a NUL-terminated template that mkdtemp fills in place.
        let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
        if made.is_null() {
            return Err(io_err(&template, io::Error::last_os_error()));
        }
        bytes.pop(); // the NUL
        let dir = WorkDir {
            path: PathBuf::from(OsStr::from_bytes(&bytes)),
        };
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&dir.path, Some(uid), Some(uid)).map_err(|e| io_err(&dir.path, e))?;
        }
        Ok(dir)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if fs::remove_dir_all(&self.path).is_err() {
            // A program may have made directories unreadable or unwritable; root does not
            // care, an unprivileged parent does.
            make_removable(&self.path);
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn make_removable(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                make_removable(&entry.path());
            }
        }
    }
}
