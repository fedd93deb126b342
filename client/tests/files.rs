//! The daemon's files in directories others could write: a root daemon must never put its socket
//! or journal where another user can plant, swap or redirect them, and never follows a link
//! planted in the place of its journal.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::Daemon;

fn mkdir_mode(path: &Path, mode: u32) {
    std::fs::create_dir(path).unwrap();
    // set_permissions, not the mode of mkdir, which the umask would trim.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_socket_directory_that_others_can_write_is_refused() {
    for mode in [0o777, 0o1777, 0o775] {
        let top = tempfile::tempdir().unwrap();
        let open = top.path().join("open");
        mkdir_mode(&open, mode);
        let socket = open.join("portbroker.sock");
        let out = support::portbrokerd_refusing(&["--socket", socket.to_str().unwrap()]);
        let err = stderr(&out);
        assert!(
            err.contains(open.to_str().unwrap()),
            "mode {mode:o}: the message names the directory: {err}"
        );
        assert!(
            err.contains(&format!("{mode:o}")),
            "mode {mode:o}: the message says the mode: {err}"
        );
        assert!(!socket.exists(), "mode {mode:o}: no socket was created");
        assert!(
            !open.join("leases.journal").exists(),
            "mode {mode:o}: no journal was created"
        );
    }
}

#[test]
fn a_state_directory_of_another_user_or_open_to_others_is_refused() {
    let top = tempfile::tempdir().unwrap();
    let socket = top.path().join("portbroker.sock");
    let theirs = top.path().join("theirs");
    mkdir_mode(&theirs, 0o755);
    std::os::unix::fs::chown(&theirs, Some(support::NOBODY), Some(support::NOBODY)).unwrap();
    let out = support::portbrokerd_refusing(&[
        "--socket",
        socket.to_str().unwrap(),
        "--state-dir",
        theirs.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert!(err.contains(theirs.to_str().unwrap()), "{err}");
    assert!(
        err.contains(&support::NOBODY.to_string()),
        "names the owner: {err}"
    );
    assert!(!theirs.join("leases.journal").exists());
    assert!(
        !socket.exists(),
        "nothing is created before the checks pass"
    );

    let shared = top.path().join("shared");
    mkdir_mode(&shared, 0o1777);
    let out = support::portbrokerd_refusing(&[
        "--socket",
        socket.to_str().unwrap(),
        "--state-dir",
        shared.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert!(err.contains(shared.to_str().unwrap()), "{err}");
    assert!(!shared.join("leases.journal").exists());
}

/// A victim file that an attacker would like root to overwrite, in a directory of its own.
fn victim(top: &Path) -> std::path::PathBuf {
    let dir = top.join("etc");
    mkdir_mode(&dir, 0o755);
    let victim = dir.join("precious");
    std::fs::write(&victim, "root's data\n").unwrap();
    victim
}

#[test]
fn a_journal_that_is_a_symlink_is_refused_and_never_followed() {
    let top = tempfile::tempdir().unwrap();
    let victim = victim(top.path());
    let state = top.path().join("state");
    mkdir_mode(&state, 0o755);
    let journal = state.join("leases.journal");
    std::os::unix::fs::symlink(&victim, &journal).unwrap();
    let out = support::portbrokerd_refusing(&[
        "--socket",
        state.join("portbroker.sock").to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert!(err.contains(journal.to_str().unwrap()), "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's data\n");
    assert!(
        std::fs::symlink_metadata(&journal)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link is left for the operator to look at"
    );
}

#[test]
fn a_journal_that_is_not_a_regular_file_is_refused_without_blocking() {
    let top = tempfile::tempdir().unwrap();
    let state = top.path().join("state");
    mkdir_mode(&state, 0o755);
    let journal = state.join("leases.journal");
    // Opening a FIFO for reading blocks until a writer comes: the daemon must not hang on it.
    nix::unistd::mkfifo(&journal, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let out = support::portbrokerd_refusing(&[
        "--socket",
        state.join("portbroker.sock").to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert!(err.contains(journal.to_str().unwrap()), "{err}");
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn a_planted_temporary_journal_is_removed_and_never_followed() {
    let top = tempfile::tempdir().unwrap();
    let victim = victim(top.path());
    let state = top.path().join("state");
    mkdir_mode(&state, 0o755);
    let tmp = state.join("leases.tmp");
    std::os::unix::fs::symlink(&victim, &tmp).unwrap();
    // The daemon compacts its journal at start-up, through leases.tmp.
    let daemon = Daemon::start_with(&["--state-dir", state.to_str().unwrap()]);
    let lease = daemon.broker().lease([support::loopback_any()]).unwrap();
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "root's data\n",
        "the daemon wrote through a planted link:\n{}",
        daemon.log()
    );
    assert!(
        std::fs::symlink_metadata(&tmp).is_err(),
        "the stale leases.tmp is gone"
    );
    let journal = std::fs::symlink_metadata(state.join("leases.journal")).unwrap();
    assert!(journal.file_type().is_file());
    drop(lease);
}
