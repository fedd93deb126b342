//! Handover tokens are the only secret between a lease's holder and its next holder: they must
//! come from the kernel's random source even where `/dev/urandom` cannot be read, never from the
//! clock.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::SystemTime;

use portbroker::Broker;
use support::portbrokerd_bin;

/// A daemon in a mount namespace of its own where `/dev/urandom` is `/dev/null`: opening it
/// works, reading it gives nothing.
struct BlindDaemon {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl BlindDaemon {
    /// `None` (with the reason) where this machine cannot make a private mount namespace.
    fn start() -> Result<BlindDaemon, String> {
        let probe = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind /dev/null /dev/urandom && ! head -c 1 /dev/urandom | grep -q .")
            .output()
            .map_err(|e| format!("cannot run unshare (util-linux): {e}"))?;
        if !probe.status.success() {
            return Err(format!(
                "cannot bind-mount /dev/null over /dev/urandom in a private mount namespace: \
                 {probe:?}"
            ));
        }
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("portbroker.sock");
        let log = std::fs::File::create(dir.path().join("portbrokerd.log")).unwrap();
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind /dev/null /dev/urandom && exec "$0" "$@""#)
            .arg(portbrokerd_bin())
            .args(["-v", "--no-config", "--no-journal", "--pool", "64400-64499"])
            .arg("--socket")
            .arg(&socket)
            .env_remove("RUST_LOG")
            .env_remove("PORTBROKER_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn unshare");
        let mut daemon = BlindDaemon { child, dir, socket };
        support::wait_listening(&mut daemon.child, &daemon.socket, || {
            daemon.dir.path().join("portbrokerd.log")
        });
        Ok(daemon)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("portbrokerd.log")).unwrap_or_default()
    }

    fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for BlindDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn handover_tokens_are_random_where_dev_urandom_reads_nothing() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED handover_tokens_are_random_where_dev_urandom_reads_nothing: needs root for a mount namespace");
        return;
    }
    let daemon = match BlindDaemon::start() {
        Ok(daemon) => daemon,
        Err(why) => {
            eprintln!("SKIPPED handover_tokens_are_random_where_dev_urandom_reads_nothing: {why}");
            return;
        }
    };
    let broker = Broker::connect_to(daemon.socket()).unwrap();
    let before = unix_secs();
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let lease = broker.lease_str(&["tcp:127.0.0.1:0"]).unwrap();
        let (token, _sockets) = lease
            .handover()
            .unwrap_or_else(|e| panic!("handover: {e}\n{}", daemon.log()));
        tokens.push(token);
    }
    let after = unix_secs();
    // Without the random bytes a token was the clock: the seconds since the epoch, rotated.
    for second in before.saturating_sub(1)..=after + 1 {
        assert!(
            !tokens.contains(&second.rotate_left(32)),
            "a handover token is the clock ({second} s since the epoch, rotated): anyone who \
             knows the time can claim the lease: {tokens:x?}"
        );
    }
    assert_ne!(tokens[0], tokens[1], "two offers got the same token");
}
