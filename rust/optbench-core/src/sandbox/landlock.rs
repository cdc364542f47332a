//! Landlock through its raw system calls (the kernel ABI is small and stable).

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::OnceLock;

use super::child::fd_above_stdio;

const CREATE_RULESET_VERSION: u32 = 1 << 0;
const RULE_PATH_BENEATH: libc::c_int = 1;

// Filesystem rights (ABI 1 unless noted).
const WRITE_FILE: u64 = 1 << 1;
const REMOVE_DIR: u64 = 1 << 4;
const REMOVE_FILE: u64 = 1 << 5;
const MAKE_CHAR: u64 = 1 << 6;
const MAKE_DIR: u64 = 1 << 7;
const MAKE_REG: u64 = 1 << 8;
const MAKE_SOCK: u64 = 1 << 9;
const MAKE_FIFO: u64 = 1 << 10;
const MAKE_BLOCK: u64 = 1 << 11;
const MAKE_SYM: u64 = 1 << 12;
const REFER: u64 = 1 << 13; // ABI 2
const TRUNCATE: u64 = 1 << 14; // ABI 3
                               // Network rights (ABI 4).
const BIND_TCP: u64 = 1 << 0;
const CONNECT_TCP: u64 = 1 << 1;
// Scopes (ABI 6).
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The kernel's Landlock ABI version, or why there is none.
pub(super) fn abi() -> std::result::Result<u32, String> {
    static ABI: OnceLock<std::result::Result<u32, String>> = OnceLock::new();
    ABI.get_or_init(|| {
        // SAFETY: the version query takes no attribute.
        let v = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<RulesetAttr>(),
                0usize,
                CREATE_RULESET_VERSION,
            )
        };
        if v > 0 {
            Ok(v as u32)
        } else {
            Err(format!("the kernel has no Landlock ({})", io::Error::last_os_error()))
        }
    })
    .clone()
}

/// A ruleset, ready for `landlock_restrict_self` in the child.
pub(super) struct Ruleset {
    pub(super) fd: OwnedFd,
    /// The rights to grant beneath the work directory, which the child adds once its mounts
    /// are in place (a rule names an inode, and the work directory may become a tmpfs).
    pub(super) workdir_access: u64,
}

impl Ruleset {
    /// Denies every write outside the work directory (added by the child, see
    /// [`add_path_rule`]; writing `/dev/null` stays allowed), and by ABI: TCP bind/connect
    /// (4+), signals and abstract Unix sockets outside the domain (6+). Reading and executing
    /// are left to the ordinary file permissions.
    pub(super) fn new() -> std::result::Result<Ruleset, String> {
        let abi = abi()?;
        let mut writes = WRITE_FILE
            | REMOVE_DIR
            | REMOVE_FILE
            | MAKE_CHAR
            | MAKE_DIR
            | MAKE_REG
            | MAKE_SOCK
            | MAKE_FIFO
            | MAKE_BLOCK
            | MAKE_SYM;
        if abi >= 2 {
            writes |= REFER;
        }
        if abi >= 3 {
            writes |= TRUNCATE;
        }
        let attr = RulesetAttr {
            handled_access_fs: writes,
            handled_access_net: if abi >= 4 { BIND_TCP | CONNECT_TCP } else { 0 },
            scoped: if abi >= 6 { SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL } else { 0 },
        };
        // Older kernels read only the fields they know; the size tells them which.
        let size = match abi {
            1..=3 => 8,
            4 | 5 => 16,
            _ => std::mem::size_of::<RulesetAttr>(),
        };
        // SAFETY: a valid attribute of `size` bytes; the result is a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, &attr as *const RulesetAttr, size, 0u32) };
        if fd < 0 {
            return Err(format!("landlock_create_ruleset: {}", io::Error::last_os_error()));
        }
        // SAFETY: `fd` is the open descriptor landlock_create_ruleset just returned; nothing
        // else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let ruleset = Ruleset { fd: fd_above_stdio(fd).map_err(|e| e.to_string())?, workdir_access: writes };
        ruleset.allow(Path::new("/dev/null"), writes & (WRITE_FILE | TRUNCATE))?;
        Ok(ruleset)
    }

    fn allow(&self, path: &Path, access: u64) -> std::result::Result<(), String> {
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let rule = PathBeneathAttr { allowed_access: access, parent_fd: file.as_raw_fd() };
        // SAFETY: a valid rule for a ruleset descriptor we own.
        let r = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                self.fd.as_raw_fd(),
                RULE_PATH_BENEATH,
                &rule as *const PathBeneathAttr,
                0u32,
            )
        };
        if r != 0 {
            return Err(format!("landlock_add_rule({}): {}", path.display(), io::Error::last_os_error()));
        }
        Ok(())
    }
}

/// Allows `access` beneath the directory open at `dir` (an `O_PATH` descriptor); 0 or -1.
/// Async-signal-safe: the child calls it after `fork`.
pub(super) fn add_path_rule(ruleset: RawFd, dir: RawFd, access: u64) -> libc::c_long {
    let rule = PathBeneathAttr { allowed_access: access, parent_fd: dir };
    // SAFETY: a valid rule, read by the kernel during the call, for a ruleset descriptor.
    unsafe {
        libc::syscall(libc::SYS_landlock_add_rule, ruleset, RULE_PATH_BENEATH, &rule as *const PathBeneathAttr, 0u32)
    }
}
