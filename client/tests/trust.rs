//! Who answers on the broker's socket: the library talks only to a broker that runs as root, as
//! the caller's own user, or as the uid `PORTBROKER_TRUST_UID` names. A user who could swap the
//! socket file must not be able to impersonate the broker. The impostor here is a Python
//! listener run as another user through setpriv, so these tests need root (as CI has).

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Output, Stdio};

use portbroker::{Broker, ErrorKind};
use support::{as_user, portctl_for_others, NOBODY, STRANGER};

/// Listens on the socket at argv[1] and serves argv[2] connections one after the other: for
/// each, it prints how many bytes its first read got (0 if the client hung up without sending
/// anything), then closes it. It never answers.
const IMPOSTOR: &str = r#"
import os, socket, sys
os.umask(0)
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(sys.argv[1])
server.listen(8)
print("ready", flush=True)
server.settimeout(60)
for _ in range(int(sys.argv[2])):
    conn, _ = server.accept()
    conn.settimeout(30)
    print(len(conn.recv(4096)), flush=True)
    conn.close()
"#;

/// A listener of uid [`STRANGER`] on a socket in a directory of its own.
struct Impostor {
    child: Child,
    lines: BufReader<ChildStdout>,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Impostor {
    /// Starts it for `connections` connections and waits until it listens.
    fn start(connections: usize) -> Impostor {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(dir.path(), Some(STRANGER), Some(STRANGER)).unwrap();
        let socket = dir.path().join("portbroker.sock");
        let mut child = as_user(STRANGER, &[], Path::new("/usr/bin/python3"))
            .arg("-c")
            .arg(IMPOSTOR)
            .arg(&socket)
            .arg(connections.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run python3 as uid 65533");
        let lines = BufReader::new(child.stdout.take().unwrap());
        let mut impostor = Impostor {
            child,
            lines,
            socket,
            _dir: dir,
        };
        assert_eq!(impostor.next_line(), "ready");
        impostor
    }

    fn next_line(&mut self) -> String {
        let mut line = String::new();
        self.lines.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "the impostor exited early");
        line.trim().to_owned()
    }

    /// How many bytes the client of the next connection sent first.
    fn bytes_received(&mut self) -> usize {
        let line = self.next_line();
        line.parse()
            .unwrap_or_else(|_| panic!("unexpected line from the impostor: {line:?}"))
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_broker_of_another_user_is_refused_before_anything_is_sent() {
    let mut impostor = Impostor::start(3);
    let socket = impostor.socket.display().to_string();

    // uid 65534 meets a "broker" of uid 65533: neither root nor itself.
    let output = as_user(NOBODY, &[], portctl_for_others())
        .args(["--socket", &socket, "status"])
        .output()
        .unwrap();
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(77), "{output:?}");
    assert!(
        stderr.contains(&socket),
        "the error names the socket: {stderr}"
    );
    assert!(
        stderr.contains("uid 65533"),
        "the error names the uid: {stderr}"
    );
    assert!(
        stderr.contains("PORTBROKER_TRUST_UID=65533"),
        "the error says how to opt in: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(impostor.bytes_received(), 0, "portctl sent a request");

    // Root's library refuses it too: root trusts only itself.
    let err = Broker::connect_to(&impostor.socket).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UntrustedBroker, "{err}");
    assert!(err.to_string().contains("uid 65533"), "{err}");
    assert_eq!(impostor.bytes_received(), 0, "the library sent a request");

    // Opting in gets past the check; the impostor then fails the handshake, as expected.
    let output = as_user(NOBODY, &[], portctl_for_others())
        .args(["--socket", &socket, "status"])
        .env("PORTBROKER_TRUST_UID", "65533")
        .output()
        .unwrap();
    let stderr = stderr_of(&output);
    assert!(!output.status.success(), "{output:?}");
    assert_ne!(output.status.code(), Some(77), "{output:?}");
    assert!(!stderr.contains("PORTBROKER_TRUST_UID"), "{stderr}");
    assert!(
        impostor.bytes_received() > 0,
        "with PORTBROKER_TRUST_UID=65533, portctl says Hello"
    );
}
