//! The sandbox hides the parent's environment. Alone in its test binary because it sets an
//! environment variable (not safe while other threads read the environment).

use optbench_core::sandbox::{Sandbox, SandboxConfig};

#[test]
fn sandbox_hides_the_parent_environment() {
    std::env::set_var("OPTBENCH_SECRET", "hunter2");
    let sb = Sandbox::new(SandboxConfig::default()).unwrap();
    let r = sb.run("import os\nprint(sorted(os.environ))\nassert 'OPTBENCH_SECRET' not in os.environ\nassert 'PATH' not in os.environ\n").unwrap();
    assert!(r.passed(), "{r:?}");
    // LC_CTYPE is CPython's own locale coercion (PEP 538), set inside the child.
    assert_eq!(r.stdout.trim(), "['HOME', 'LC_CTYPE', 'TMPDIR']");
    assert!(!r.stdout.contains("hunter2"));
}
