//! A process chooses its own name (`prctl(PR_SET_NAME)`), control characters included, and
//! portctl shows it to other users: in `list`, and in the refusal of a port it holds. The name
//! must reach their terminals escaped, one row per socket and one line per message.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{spawn_and_read_line, wait_until, Daemon};

/// The name the hostile process gives itself: ESC starts a terminal escape sequence, and the
/// newline would start a line of its own (a trailing one would be trimmed with the kernel's).
const HOSTILE_NAME: &[u8] = b"ev\x1b[31m\nil";
/// How portctl must print it.
const ESCAPED_NAME: &str = r"ev\x1b[31m\nil";

/// Renames itself to HOSTILE_NAME, says so, and waits for its stdin to close.
const RENAME_THEN_WAIT: &str = r#"
import ctypes, sys
libc = ctypes.CDLL(None)
assert libc.prctl(15, b"ev\x1b[31m\nil", 0, 0, 0) == 0
print("renamed", flush=True)
sys.stdin.read()
"#;

/// The process holding the lease; ended (stdin closed) when the test ends however it ends.
struct Hostile(Child);

impl Drop for Hostile {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `text` holds a control character other than the line ends.
fn has_raw_control(text: &[u8]) -> bool {
    text.iter().any(|&b| (b < 0x20 && b != b'\n') || b == 0x7f)
}

#[test]
fn a_hostile_process_name_reaches_terminals_escaped() {
    let daemon = Daemon::start();
    let (child, line) = spawn_and_read_line(Command::new("python3").args(["-c", RENAME_THEN_WAIT]));
    let hostile = Hostile(child);
    assert_eq!(line, "renamed");
    let comm = std::fs::read(format!("/proc/{}/comm", hostile.0.id())).unwrap();
    assert_eq!(
        &comm[..comm.len() - 1],
        HOSTILE_NAME,
        "the kernel kept the name"
    );

    // The test leases a port and ties it to the renamed process: the broker lists that
    // process, by its name, as the holder.
    let broker = daemon.broker();
    let lease = broker.lease([support::loopback_any()]).unwrap();
    let holder = lease.tie_to_process(hostile.0.id() as i32).unwrap();
    assert_eq!(holder.name.as_bytes(), HOSTILE_NAME);
    let (id, addr) = (lease.id(), lease.local_addr());
    lease.detach();

    // `list`: no raw control character, one row for the one socket, the name escaped.
    let output = daemon.portctl().arg("list").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(
        !has_raw_control(&output.stdout),
        "raw control characters in `portctl list`: {:?}",
        String::from_utf8_lossy(&output.stdout)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "one row for one socket: {text:?}");
    assert!(rows[0].starts_with(&format!("{id} ")), "{text:?}");
    assert!(rows[0].contains(ESCAPED_NAME), "{text:?}");

    // `list --json` is for programs: JSON escapes the name its own way, and it stays exact.
    let output = daemon.portctl().args(["list", "--json"]).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        json[0]["name"].as_str().map(str::as_bytes),
        Some(HOSTILE_NAME)
    );

    // A second `portctl run` on the port is refused, naming the holder on one clean line.
    let output = daemon
        .portctl()
        .args(["run", &format!("tcp:{addr}"), "--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(75), "{output:?}");
    assert!(
        !has_raw_control(&output.stderr),
        "raw control characters in the refusal: {:?}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(
        stderr.contains(&format!(
            "held by pid {} ({ESCAPED_NAME}, uid 0)",
            hostile.0.id()
        )),
        "{stderr:?}"
    );

    // The daemon's log names the holder the same way.
    daemon.assert_logged(
        &format!("({ESCAPED_NAME}, uid 0)"),
        Duration::from_secs(2),
        "the log escapes the name",
    );
    assert!(!daemon.log().contains('\x1b'), "raw ESC in the daemon log");

    // The lease is tied to the process: it ends with it.
    drop(hostile);
    assert!(wait_until(Duration::from_secs(10), || {
        !broker.list().unwrap().iter().any(|l| l.id == id)
    }));
}
