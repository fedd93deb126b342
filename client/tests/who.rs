//! Who holds a port: `portctl who`, the daemon's refusal naming a process outside the broker,
//! and `list`'s filters and JSON schema.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use support::{free_port, Daemon};

/// A python3 process outside the broker that holds `tcp:127.0.0.1:PORT` (listening) until
/// killed; returned once it has bound.
fn python_holding(port: u16) -> Child {
    let code = format!(
        "import socket, sys\n\
         s = socket.socket()\n\
         s.bind(('127.0.0.1', {port}))\n\
         s.listen()\n\
         print('ready', flush=True)\n\
         sys.stdin.read()\n"
    );
    let mut child = Command::new("python3")
        .args(["-c", &code])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "python3 did not bind {port}");
    child
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn who_names_a_process_outside_the_broker() {
    let daemon = Daemon::start();
    let port = free_port();
    let python = python_holding(port);
    for target in [format!("127.0.0.1:{port}"), port.to_string()] {
        let out = daemon.portctl().args(["who", &target]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(
            stdout.contains(&format!("pid {} (python3)", python.id()))
                && stdout.contains("outside the broker"),
            "{target}: {stdout}"
        );
    }
    let out = daemon
        .portctl()
        .args(["who", &format!("0.0.0.0:{port}"), "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let holder = &json["holders"][0];
    assert_eq!(holder["kind"], "outside");
    assert_eq!(holder["pid"], python.id());
    assert_eq!(holder["name"], "python3");
    assert_eq!(holder["addr"], format!("127.0.0.1:{port}"));
    assert_eq!(holder["lease"], serde_json::Value::Null);
    // UDP is another space: nobody holds udp:PORT.
    let out = daemon
        .portctl()
        .args(["who", &port.to_string(), "--proto", "udp"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    stop(python);
}

#[test]
fn who_names_the_lease_holder_or_says_nobody() {
    let daemon = Daemon::start();
    let port = free_port();
    let lease = daemon
        .broker()
        .lease_str(&[&format!("tcp:127.0.0.1:{port}")])
        .unwrap();
    let out = daemon
        .portctl()
        .args(["who", &port.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout.contains(&format!("lease {}", lease.id().0))
            && stdout.contains(&format!("pid {}", std::process::id())),
        "{stdout}"
    );
    // The leased socket itself is not reported again as outside the broker.
    assert_eq!(stdout.lines().count(), 1, "{stdout}");

    let out = daemon
        .portctl()
        .args(["who", &port.to_string(), "--json"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["holders"][0]["kind"], "lease");
    assert_eq!(json["holders"][0]["lease"], lease.id().0);
    assert_eq!(json["holders"][0]["user"], "root");

    let free = free_port();
    let out = daemon
        .portctl()
        .args(["who", &format!("127.0.0.1:{free}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nobody"),
        "{out:?}"
    );
    let bad = daemon
        .portctl()
        .args(["who", "localhost:80"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64), "{bad:?}");
}

#[test]
fn a_refusal_names_the_process_outside_the_broker() {
    let daemon = Daemon::start();
    let port = free_port();
    let python = python_holding(port);
    let marker = daemon.dir().join("started");
    let out = daemon
        .portctl()
        .args(["run", &format!("tcp:127.0.0.1:{port}"), "--", "touch"])
        .arg(&marker)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let refusal = stderr
        .lines()
        .find(|line| line.contains("outside the broker"))
        .unwrap_or_else(|| panic!("no refusal line: {stderr}\n{}", daemon.log()));
    assert!(
        refusal.contains(&format!("pid {}", python.id())) && refusal.contains("python3"),
        "{refusal}\n{}",
        daemon.log()
    );
    assert!(!marker.exists());
    stop(python);
}

#[test]
fn list_filters_by_port_user_and_proto() {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let port = free_port();
    let _lease = broker
        .lease_str(&[&format!("tcp:127.0.0.1:{port}"), "udp:127.0.0.1:0"])
        .unwrap();
    let rows = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = daemon
            .portctl()
            .arg("list")
            .arg("--json")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(rows(&[]).len(), 2);
    let by_port = rows(&["--port", &port.to_string()]);
    assert_eq!(by_port.len(), 1);
    assert_eq!(by_port[0]["proto"], "tcp");
    let udp = rows(&["--proto", "udp"]);
    assert_eq!(udp.len(), 1);
    assert_eq!(udp[0]["proto"], "udp");
    let uid = nix::unistd::geteuid().as_raw().to_string();
    assert_eq!(rows(&["--user", &uid]).len(), 2);
    assert_eq!(rows(&["--user", "root"]).len(), 2);
    assert!(rows(&["--user", &support::NOBODY.to_string()]).is_empty());
    assert!(rows(&["--port", &port.to_string(), "--proto", "udp"]).is_empty());
    let unknown = daemon
        .portctl()
        .args(["list", "--user", "no-such-user-here"])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(64), "{unknown:?}");

    // The table: user names, ages, and no colour when not on a terminal.
    let out = daemon
        .portctl()
        .args(["list", "--port", &port.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("USER"), "{text}");
    assert!(
        lines[1].contains(" root ") && lines[1].contains(" ago "),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "{text:?}");
}

/// The documented schema of `list --json`: exactly these keys, with these JSON types.
#[test]
fn list_json_has_a_stable_schema() {
    let daemon = Daemon::start();
    let _lease = daemon.broker().lease_str(&["tcp:127.0.0.1:0"]).unwrap();
    let out = daemon.portctl().args(["list", "--json"]).output().unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let object = rows[0].as_object().unwrap();
    let types: Vec<(&str, &str)> = object
        .iter()
        .map(|(key, value)| {
            let kind = match value {
                serde_json::Value::Null => "null",
                serde_json::Value::Bool(_) => "bool",
                serde_json::Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
                serde_json::Value::Number(_) => "number",
                serde_json::Value::String(_) => "string",
                serde_json::Value::Array(_) => "array",
                serde_json::Value::Object(_) => "object",
            };
            (key.as_str(), kind)
        })
        .collect();
    let mut expected = vec![
        ("addr", "string"),
        ("expires_unix_ms", "null"),
        ("gid", "integer"),
        ("id", "integer"),
        ("lingering", "bool"),
        ("listening", "bool"),
        ("name", "string"),
        ("pid", "integer"),
        ("proto", "string"),
        ("since", "integer"),
        ("state", "string"),
        ("uid", "integer"),
        ("user", "string"),
        ("v6_only", "bool"),
    ];
    expected.sort();
    let mut types = types;
    types.sort();
    assert_eq!(types, expected);
}
