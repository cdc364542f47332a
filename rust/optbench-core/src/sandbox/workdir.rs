//! The fresh temporary working directory of one run, and its removal.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::io_err;
use crate::{CoreError, Result};

/// A fresh `optbench-sandbox-XXXXXX` directory under the temporary directory, owned by the
/// sandbox uid. Where the run has a mount namespace, the program sees a tmpfs mounted on it
/// instead, so it stays empty here. [`WorkDir::remove`] removes it and checks that it is gone;
/// drop removes it too, quietly.
pub(super) struct WorkDir {
    pub(super) path: PathBuf,
    removed: bool,
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
        let dir = WorkDir { path: PathBuf::from(OsStr::from_bytes(&bytes)), removed: false };
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&dir.path, Some(uid), Some(uid)).map_err(|e| io_err(&dir.path, e))?;
        }
        Ok(dir)
    }

    /// Removes the directory and everything in it, then checks that it is gone.
    pub(super) fn remove(&mut self) -> std::result::Result<(), String> {
        self.removed = true;
        let outcome = remove_tree(&self.path);
        match std::fs::symlink_metadata(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            _ => Err(match outcome {
                Err(e) => format!("{} could not be removed: {e}", self.path.display()),
                Ok(()) => format!("{} is still there after its removal", self.path.display()),
            }),
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.removed {
            let _ = remove_tree(&self.path);
        }
    }
}

/// Removes `root` and everything beneath it, at any depth, with at most three descriptors open
/// at a time (a tree deeper than the descriptor limit defeats a recursive removal that keeps
/// one descriptor per level, such as `std::fs::remove_dir_all`). Directories a program made
/// unreadable or unwritable are given back their permissions first (root needs no such thing;
/// an unprivileged parent does). Symbolic links are removed, never followed.
pub(super) fn remove_tree(root: &Path) -> io::Result<()> {
    let root_c = CString::new(root.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: chmod on a NUL-terminated path (the top directory itself may be locked).
    unsafe { libc::chmod(root_c.as_ptr(), 0o700) };
    let mut fd = match open_dir(libc::AT_FDCWD, &root_c) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    // The names from the root down to the directory open at `fd`.
    let mut names: Vec<CString> = Vec::new();
    let result = loop {
        match clear_files_find_dir(fd) {
            Err(e) => break Err(e),
            Ok(Some(name)) => match open_dir(fd, &name) {
                Ok(child) => {
                    close(fd);
                    fd = child;
                    names.push(name);
                }
                Err(e) => break Err(e),
            },
            Ok(None) => {
                let Some(name) = names.pop() else { break Ok(()) };
                let parent = match open_dir(fd, c"..") {
                    Ok(p) => p,
                    Err(e) => break Err(e),
                };
                close(fd);
                fd = parent;
                // SAFETY: unlinkat of a name in the directory open at `fd`.
                if unsafe { libc::unlinkat(fd, name.as_ptr(), libc::AT_REMOVEDIR) } != 0 {
                    break Err(io::Error::last_os_error());
                }
            }
        }
    };
    close(fd);
    result?;
    // SAFETY: rmdir of a NUL-terminated path.
    if unsafe { libc::rmdir(root_c.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens the directory `name` in `dir` without following a symbolic link, making it readable
/// and enterable first if it is not.
fn open_dir(dir: libc::c_int, name: &CStr) -> io::Result<libc::c_int> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: openat/fchmodat on a NUL-terminated name.
    unsafe {
        let fd = libc::openat(dir, name.as_ptr(), flags);
        if fd >= 0 {
            return Ok(fd);
        }
        if io::Error::last_os_error().raw_os_error() == Some(libc::EACCES) {
            libc::fchmodat(dir, name.as_ptr(), 0o700, 0);
            let fd = libc::openat(dir, name.as_ptr(), flags);
            if fd >= 0 {
                return Ok(fd);
            }
        }
    }
    Err(io::Error::last_os_error())
}

fn close(fd: libc::c_int) {
    // SAFETY: closing a descriptor this module opened.
    unsafe { libc::close(fd) };
}

/// Unlinks every non-directory in the directory open at `fd`; returns the name of one
/// subdirectory, if there is any left.
fn clear_files_find_dir(fd: libc::c_int) -> io::Result<Option<CString>> {
    // SAFETY: fchmod of a directory we opened (an unprivileged parent needs write access to
    // unlink in it); fdopendir takes ownership of the duplicate, released by closedir.
    unsafe {
        libc::fchmod(fd, 0o700);
        let dup = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0);
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = libc::fdopendir(dup);
        if stream.is_null() {
            let e = io::Error::last_os_error();
            libc::close(dup);
            return Err(e);
        }
        libc::rewinddir(stream);
        let mut found = None;
        let mut failure = None;
        loop {
            let entry = libc::readdir(stream);
            if entry.is_null() {
                break;
            }
            let name = CStr::from_ptr((*entry).d_name.as_ptr());
            if name == c"." || name == c".." {
                continue;
            }
            let is_dir = match (*entry).d_type {
                libc::DT_DIR => true,
                libc::DT_UNKNOWN => {
                    let mut st: libc::stat = std::mem::zeroed();
                    libc::fstatat(fd, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) == 0
                        && st.st_mode & libc::S_IFMT == libc::S_IFDIR
                }
                _ => false,
            };
            if is_dir {
                found = Some(name.to_owned());
                break;
            }
            if libc::unlinkat(fd, name.as_ptr(), 0) != 0 && failure.is_none() {
                failure = Some(io::Error::last_os_error());
            }
        }
        libc::closedir(stream);
        match (found, failure) {
            (Some(name), _) => Ok(Some(name)),
            (None, Some(e)) => Err(e),
            (None, None) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn removes_a_tree_deeper_than_the_descriptor_limit_allows() {
        let root = std::env::temp_dir().join(format!("optbench-remove-tree-{}", std::process::id()));
        let _ = remove_tree(&root);
        // 1100 levels through relative paths (an absolute one would pass PATH_MAX).
        std::fs::create_dir(&root).unwrap();
        let root_c = CString::new(root.as_os_str().as_bytes()).unwrap();
        let mut fd = open_dir(libc::AT_FDCWD, &root_c).unwrap();
        for i in 0..1100 {
            // SAFETY: mkdirat/openat/close on descriptors this test owns.
            unsafe {
                assert_eq!(libc::mkdirat(fd, c"d".as_ptr(), 0o700), 0);
                let f = libc::openat(fd, c"f".as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o600);
                libc::close(f);
                if i == 500 {
                    libc::symlinkat(c"/etc".as_ptr(), fd, c"link".as_ptr());
                }
                let child = open_dir(fd, c"d").unwrap();
                libc::close(fd);
                fd = child;
            }
        }
        close(fd);
        std::fs::create_dir(root.join("locked")).unwrap();
        std::fs::set_permissions(root.join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
        remove_tree(&root).unwrap();
        assert!(!root.exists());
        assert!(Path::new("/etc/passwd").exists());
    }
}
