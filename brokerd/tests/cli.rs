//! The daemon's command line: bad input gets a clear error and a non-zero exit, before anything
//! is bound or created. (Also makes `cargo test` build the daemon for the client's tests.)

use std::process::{Command, Output};

fn portbrokerd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portbrokerd"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_bad_pool_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    for (pool, reason) in [
        ("9000-8000", "LO <= HI"),
        ("61000", "LO-HI"),
        ("1-70000", "port number"),
    ] {
        let out = portbrokerd(&["--socket", socket.to_str().unwrap(), "--pool", pool]);
        assert!(!out.status.success(), "--pool {pool} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(reason), "--pool {pool}: {stderr}");
        assert!(!socket.exists(), "nothing is created on bad usage");
    }
}

#[test]
fn a_socket_path_that_is_not_a_socket_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("important.txt");
    std::fs::write(&file, "keep me").unwrap();
    let out = portbrokerd(&["--socket", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn help_and_version_exit_zero() {
    let help = portbrokerd(&["--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--pool"));
    let version = portbrokerd(&["--version"]);
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}
