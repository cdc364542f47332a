//! The sandbox against real `python3` processes: outcomes, the process-group kill, clean-up
//! and the reported isolation. (The environment test lives in `sandbox_env.rs`, alone in its
//! process, because it sets a variable.)

use std::path::Path;
use std::time::{Duration, Instant};

use optbench_core::sandbox::{humaneval_program, Sandbox, SandboxConfig, Status};

fn sandbox(timeout_s: f64) -> Sandbox {
    let config = SandboxConfig { timeout: Duration::from_secs_f64(timeout_s), ..SandboxConfig::default() };
    Sandbox::new(config).expect("the sandbox works on this machine")
}

fn failed_reason(status: &Status) -> &str {
    status.reason().unwrap_or_else(|| panic!("expected a failure, got {status}"))
}

#[test]
fn sandbox_passing_program() {
    let r = sandbox(10.0).run("print('hello')\nassert 1 + 1 == 2\n").unwrap();
    assert_eq!(r.status, Status::Passed, "{r:?}");
    assert_eq!(r.status.to_string(), "passed");
    assert_eq!(r.stdout, "hello\n");
    assert_eq!(r.exit_code, Some(0));
    assert!(!r.stdout_truncated && !r.stderr_truncated);
}

#[test]
fn sandbox_assertion_failure_reason() {
    let r = sandbox(10.0).run("def f():\n    return 1\nassert f() == 2\n").unwrap();
    assert_eq!(r.status, Status::Failed("exit code 1: AssertionError".into()), "{r:?}");
    assert_eq!(r.status.to_string(), "failed: exit code 1: AssertionError");
    assert!(r.stderr.contains("program.py"), "{}", r.stderr);
}

#[test]
fn sandbox_syntax_error() {
    let r = sandbox(10.0).run("def f(:\n    pass\n").unwrap();
    let reason = failed_reason(&r.status);
    assert!(reason.starts_with("exit code 1: SyntaxError"), "{reason}");
}

#[test]
fn sandbox_humaneval_style_program() {
    let program = humaneval_program(
        "def add(a, b):\n    \"\"\"Add.\"\"\"\n",
        "    return a + b\n",
        "def check(candidate):\n    assert candidate(2, 3) == 5\n",
        "add",
    );
    let r = sandbox(10.0).run(&program).unwrap();
    assert!(r.passed(), "{r:?}");
    let wrong = humaneval_program(
        "def add(a, b):\n",
        "    return a - b\n",
        "def check(candidate):\n    assert candidate(2, 3) == 5\n",
        "add",
    );
    assert_eq!(sandbox(10.0).run(&wrong).unwrap().status, Status::Failed("exit code 1: AssertionError".into()));
}

#[test]
fn sandbox_early_exit_zero_is_not_a_pass() {
    // HumanEval's harness counts these as "timed out" / "failed: 0": the checks never ran.
    let sb = sandbox(10.0);
    for program in ["import os\nos._exit(0)\nassert False\n", "import sys\nsys.exit(0)\nassert False\n"] {
        let r = sb.run(program).unwrap();
        assert_eq!(r.exit_code, Some(0));
        assert_eq!(r.status, Status::Failed("exited with code 0 before the end of the program".into()), "{program}");
    }
    // Runs like exec(code, {}) in the reference: a __main__ block is skipped.
    let r = sb.run("if __name__ == '__main__':\n    raise SystemExit(3)\n").unwrap();
    assert!(r.passed(), "{r:?}");
}

/// Processes whose process group is `pgid` (zombies included).
fn group_members(pgid: i32) -> Vec<i32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state ppid pgrp ...
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let pgrp: i32 = after.split(' ').nth(2).unwrap().parse().unwrap();
        if pgrp == pgid {
            members.push(pid);
        }
    }
    members
}

/// Processes (not zombies) whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "));
        if !zombie && cmdline.windows(marker.len()).any(|w| w == marker.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

fn wait_until_gone(marker: &str) -> Vec<i32> {
    let until = Instant::now() + Duration::from_secs(3);
    while !processes_with(marker).is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    processes_with(marker)
}

#[test]
fn sandbox_timeout_kills_the_whole_group() {
    let marker = format!("optbench-sleeper-{}", std::process::id());
    let program = format!("import os, subprocess\np = subprocess.Popen(['sh', '-c', 'sleep 100', '{marker}'])\nprint(os.getpgrp(), os.getpid(), p.pid, flush=True)\nwhile True:\n    pass\n");
    let started = Instant::now();
    let r = sandbox(1.5).run(&program).unwrap();
    assert_eq!(r.status, Status::TimedOut, "{r:?}");
    assert_eq!(r.status.to_string(), "timed out");
    assert_eq!(r.signal, Some(9));
    assert!(
        r.duration >= Duration::from_millis(1400) && started.elapsed() < Duration::from_secs(5),
        "{:?}",
        r.duration
    );
    let ids: Vec<i32> = r.stdout.split_whitespace().map(|s| s.parse().unwrap()).collect();
    let (pgid, leader) = (ids[0], ids[1]);
    if r.isolation.pid_namespace {
        // The group's leader is outside the PID namespace, invisible from inside (pgid 0); the
        // program is the second process of its namespace, under the namespace's own init.
        assert_eq!((pgid, leader), (0, 2), "{r:?}");
    } else {
        assert_eq!(pgid, leader, "the program leads its own process group");
        let until = Instant::now() + Duration::from_secs(3);
        while !group_members(pgid).is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(group_members(pgid).is_empty(), "left in the group: {:?}", group_members(pgid));
    }
    // The killed `sleep` is reaped by init, which may take a moment.
    assert!(wait_until_gone(&marker).is_empty(), "the program's child survived the timeout");
}

#[test]
fn sandbox_kills_processes_that_left_the_group() {
    let sb = sandbox(10.0);
    if sb.isolation().dropped_to_uid.is_none() {
        eprintln!("not root: escaped processes are only bounded by their CPU limit");
        return;
    }
    let marker = format!("optbench-escaper-{}", std::process::id());
    let program = format!("import os, time\npid = os.fork()\nif pid == 0:\n    os.setsid()\n    os.execv('/bin/sh', ['sh', '-c', 'sleep 100', '{marker}'])\ntime.sleep(0.3)\nprint(pid, flush=True)\n");
    let r = sb.run(&program).unwrap();
    assert!(r.passed(), "{r:?}");
    assert!(wait_until_gone(&marker).is_empty(), "the process that called setsid survived");
}

#[test]
fn sandbox_removes_the_work_directory() {
    let sb = sandbox(1.5);
    // After a normal run, after a timeout, and after the program locked its files away.
    let programs = [
        "import os\nprint(os.getcwd(), flush=True)\nopen('f.txt', 'w').write('x')\n",
        "import os\nprint(os.getcwd(), flush=True)\nwhile True:\n    pass\n",
        "import os\nprint(os.getcwd(), flush=True)\nos.makedirs('d/e')\nopen('d/e/f', 'w').write('x')\nos.chmod('d/e', 0)\nos.chmod('d', 0)\nos.chmod('.', 0o500)\n",
    ];
    for program in programs {
        let r = sb.run(program).unwrap();
        let dir = r.stdout.trim();
        assert!(dir.contains("optbench-sandbox-"), "{r:?}");
        assert!(!Path::new(dir).exists(), "{dir} is still there after {}", r.status);
    }
}

#[test]
fn sandbox_limits_cpu_and_memory() {
    let config = SandboxConfig {
        timeout: Duration::from_secs(10),
        cpu_time_s: 1,
        memory_bytes: 256 << 20,
        ..SandboxConfig::default()
    };
    let sb = Sandbox::new(config).unwrap();
    let r = sb.run("while True:\n    pass\n").unwrap();
    assert_eq!(r.status, Status::Failed("CPU time limit (SIGXCPU)".into()), "{r:?}");
    let r = sb.run("x = bytearray(10**10)\n").unwrap();
    assert_eq!(r.status, Status::Failed("memory limit: MemoryError".into()), "{r:?}");
    let r = sb.run("x = []\nwhile True:\n    x.append(' ' * 10**6)\n").unwrap();
    assert_eq!(r.status, Status::Failed("memory limit: MemoryError".into()), "{r:?}");
}

#[test]
fn sandbox_caps_output_and_reads_past_it() {
    let config = SandboxConfig { max_output_bytes: 1000, ..SandboxConfig::default() };
    let r = Sandbox::new(config).unwrap().run("import sys\nprint('x' * 10**7)\nsys.stderr.write('e' * 10**6 + '\\nValueError: last\\n')\nraise SystemExit(2)\n").unwrap();
    assert_eq!(r.stdout.len(), 1000);
    assert!(r.stdout_truncated && r.stderr_truncated);
    assert_eq!(r.status, Status::Failed("exit code 2: ValueError: last".into()), "{:?}", r.status);
}

#[test]
fn sandbox_runs_programs_in_parallel_in_order() {
    let sb = sandbox(10.0);
    let programs: Vec<String> =
        (0..8).map(|i| format!("import time\ntime.sleep(0.{})\nprint({i})\nassert {i} % 3 != 2\n", 8 - i)).collect();
    let results = sb.run_programs(&programs, 4).unwrap();
    assert_eq!(results.len(), 8);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.stdout.trim(), i.to_string());
        assert_eq!(r.passed(), i % 3 != 2, "{i}: {}", r.status);
    }
    assert!(sb.run_programs(&[] as &[&str], 4).unwrap().is_empty());
}

#[test]
fn sandbox_reports_its_isolation() {
    let sb = sandbox(10.0);
    let iso = sb.isolation();
    eprintln!("python {} ({}): {iso:#?}", sb.python().display(), sb.python_version());
    assert!(iso.python.is_absolute());
    assert_eq!(iso.limits.address_space_bytes, 1 << 30);
    assert_eq!(iso.limits.core_file_bytes, 0);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } == 0 {
        let uid = iso.dropped_to_uid.expect("root drops to a uid of its own");
        assert!((60000..61000).contains(&uid));
        assert_eq!(iso.limits.processes, Some(64));
        let r = sb.run("import os\nprint(os.getuid(), os.getgid(), os.getgroups())\n").unwrap();
        let uid = r.isolation.dropped_to_uid.unwrap();
        assert_eq!(r.stdout.trim(), format!("{uid} {uid} []"));
    }
    if iso.network_namespace {
        // The namespace's interfaces (/proc/net shows the reader's network namespace; the
        // netlink socket of `socket.if_nameindex()` is denied by the seccomp filter).
        let r = sb.run("lines = open('/proc/net/dev').read().splitlines()[2:]\nprint([l.split(':')[0].strip() for l in lines])\n").unwrap();
        assert_eq!(r.stdout.trim(), "['lo']", "{r:?}");
    }
    if iso.filesystem_writes_confined {
        let r = sb.run("open('/tmp/optbench_sandbox_rust_escape', 'w')\n").unwrap();
        assert!(failed_reason(&r.status).contains("PermissionError"), "{r:?}");
        assert!(!Path::new("/tmp/optbench_sandbox_rust_escape").exists());
    }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
