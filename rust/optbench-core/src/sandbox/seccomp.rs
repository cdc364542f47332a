//! The seccomp filter of a run: kernel interfaces a test program never needs, denied.
//!
//! Built with `seccompiler` (the filter compiler of Firecracker) before the fork, installed in
//! the child as its last step before `exec`. Denied calls fail with `EPERM` (`EAFNOSUPPORT` for
//! socket families, `ENOSYS` for `clone3`, so that the C library falls back to `clone`, whose
//! flags the filter can see): the program sees an ordinary error rather than dying.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};

/// Calls denied outright: new namespaces (`unshare`, `setns`), the kernel keyrings, io_uring,
/// BPF, tracing and reading other processes' memory, mounting, loading kernel code, and the
/// kernel's own performance counters.
const DENIED: &[libc::c_long] = &[
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_add_key,
    libc::SYS_keyctl,
    libc::SYS_request_key,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_bpf,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_name_to_handle_at,
    libc::SYS_open_by_handle_at,
    libc::SYS_pidfd_getfd,
    libc::SYS_quotactl,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
];

/// `clone` flags that make a new namespace.
const NAMESPACE_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

/// The filters to install, in order, or why there are none (an architecture the filter does
/// not know). Built once per process.
pub(super) fn filters() -> Result<&'static [BpfProgram], String> {
    static FILTERS: OnceLock<Result<Vec<BpfProgram>, String>> = OnceLock::new();
    FILTERS.get_or_init(build).as_deref().map_err(Clone::clone)
}

fn build() -> Result<Vec<BpfProgram>, String> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("seccomp: no filter for {}: {e:?}", std::env::consts::ARCH))?;
    let compile = |rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32| -> Result<BpfProgram, String> {
        SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(errno as u32), arch)
            .and_then(TryInto::try_into)
            .map_err(|e| format!("seccomp: {e}"))
    };
    let cond = |arg, len, op, value| SeccompCondition::new(arg, len, op, value).map_err(|e| format!("seccomp: {e}"));
    let rule = |conditions| SeccompRule::new(conditions).map_err(|e| format!("seccomp: {e}"));

    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|&nr| (nr, vec![])).collect();
    // clone with any namespace flag (the flags are the first argument on x86-64 and arm64).
    let mut clone_rules = Vec::new();
    for flag in NAMESPACE_FLAGS {
        let flag = flag as u64;
        clone_rules.push(rule(vec![cond(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(flag), flag)?])?);
    }
    denied.insert(libc::SYS_clone, clone_rules);
    let mut filters = vec![compile(denied, libc::EPERM)?];

    // Sockets: only IPv4 and IPv6 (useless in the run's empty network namespace, and TCP is
    // denied by Landlock where the kernel has it). No Unix sockets to reach the host's, no
    // vsock, netlink or packet sockets. `socketpair` stays (it only connects the program to
    // itself; multiprocessing uses it).
    let socket_rule = rule(vec![
        cond(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, libc::AF_INET as u64)?,
        cond(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, libc::AF_INET6 as u64)?,
    ])?;
    filters.push(compile(BTreeMap::from([(libc::SYS_socket, vec![socket_rule])]), libc::EAFNOSUPPORT)?);

    // clone3 passes its flags in memory the filter cannot read: ENOSYS makes the C library
    // use clone instead.
    filters.push(compile(BTreeMap::from([(libc::SYS_clone3, vec![])]), libc::ENOSYS)?);
    #[cfg(target_arch = "x86_64")]
    filters.push(x32_denied());
    Ok(filters)
}

/// On x86-64, the x32 ABI's system call numbers (bit 30 set) would get past rules written for
/// the native numbers: deny all of them.
#[cfg(target_arch = "x86_64")]
fn x32_denied() -> BpfProgram {
    use seccompiler::sock_filter;
    const LD_W_ABS: u16 = 0x20;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    let stmt = |code, k| sock_filter { code, jt: 0, jf: 0, k };
    vec![
        stmt(LD_W_ABS, 0), // seccomp_data.nr (the architecture is checked by the filters above)
        sock_filter { code: JGE_K, jt: 0, jf: 1, k: X32_SYSCALL_BIT },
        stmt(RET_K, RET_ERRNO | libc::ENOSYS as u32),
        stmt(RET_K, RET_ALLOW),
    ]
}

/// Installs `filters` on the calling thread (in the child, after `no_new_privs`): the errno of
/// the first that failed, or 0.
pub(super) fn install(filters: &[BpfProgram]) -> i32 {
    for filter in filters {
        if let Err(e) = seccompiler::apply_filter(filter) {
            return match e {
                seccompiler::Error::Seccomp(io) | seccompiler::Error::Prctl(io) => {
                    io.raw_os_error().unwrap_or(libc::EINVAL)
                }
                _ => libc::EINVAL,
            };
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_for_this_machine() {
        let filters = filters().unwrap();
        assert!(filters.len() >= 3);
        assert!(filters.iter().all(|f| !f.is_empty() && f.len() < 4096));
    }
}
