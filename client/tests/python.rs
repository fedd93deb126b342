//! The Python package (`python/`): its own unit tests (golden frames read from
//! `proto/tests/wire.rs`, hostile frames, a scripted broker), then, against a real daemon, an
//! example suite that adopts the pytest plugin with the one line of its `conftest.py`, run with
//! `pytest -n 16` (pytest-xdist). After that run no port may have been given twice, every
//! worker must have taken part, a server started under `portctl wrap` must have taken its
//! leased number over, and no lease may be left.
//!
//! The tests run in a venv under the target directory, made on the first run (and kept) with
//! `pip install ./python pytest pytest-xdist`; later runs reinstall the package only when its
//! files changed. Without a `python3` that can make a venv, or without PyPI, the test fails
//! when `CI` is set and is skipped, saying why, otherwise.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use support::{wait_until, Daemon};

/// The example suite's parametrized tests (`TESTS` in `test_parallel.py`), and its workers.
const EXAMPLE_TESTS: usize = 64;
const WORKERS: usize = 16;
/// The example daemon's pool: above the 61000-64999 slices of the other tests' daemons, and
/// with room for every port the suite leases at once, so that ports cannot be handed out
/// twice for want of others.
const POOL: (u16, u16) = (65000, 65535);

#[test]
fn the_python_package_and_its_pytest_plugin_under_pytest_xdist() {
    // Held to the end: another run sharing the target directory waits rather than reinstall
    // the package under this one's feet.
    let (python, _venv_lock) = match venv() {
        Ok(venv) => venv,
        Err(reason) => return python_unusable(&reason),
    };
    unit_tests(&python);
    the_plugin_says_what_to_do_without_a_broker(&python);
    a_broker_keeps_its_lease_through_a_daemon_restart(&python);
    example_suite(&python);
}

/// A `portbroker.Broker` holding a lease while the daemon is killed and started again (with
/// its journal): its next request connects again by itself, the lease is taken back, and it
/// renews and releases as before.
fn a_broker_keeps_its_lease_through_a_daemon_restart(python: &Path) {
    use std::io::{BufRead, BufReader, Write};
    const SCRIPT: &str = "import sys, portbroker\n\
                          broker = portbroker.connect(sys.argv[1])\n\
                          lease = broker.lease('tcp:127.0.0.1:0')\n\
                          print(lease.id, flush=True)\n\
                          sys.stdin.readline()\n\
                          print(sorted(l.id for l in broker.list()), flush=True)\n\
                          print(lease.renew(60) is not None, flush=True)\n\
                          print(lease.release(), flush=True)\n";
    let mut daemon = Daemon::start();
    let mut child = Command::new(python)
        .args(["-c", SCRIPT])
        .arg(&daemon.socket)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || lines.next().map(Result::unwrap).unwrap_or_default();
    let id: u64 = next()
        .parse()
        .unwrap_or_else(|e| panic!("no lease id: {e}"));

    daemon.kill9();
    let again = Daemon::start_with(&["--socket", daemon.socket.to_str().unwrap()]);
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    let listed = next();
    let renewed = next();
    let released = next();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "the script failed ({status}):\n{}",
        again.log()
    );
    assert_eq!(
        listed,
        format!("[{id}]"),
        "the lease is back on the new connection"
    );
    assert_eq!(renewed, "True", "renewed after the restart");
    assert_eq!(released, "True", "released after the restart");
    assert!(
        again.broker().list().unwrap().is_empty(),
        "the release reached the restarted daemon"
    );
    again.assert_logged(
        "re-attached 1 of 1 leases",
        Duration::from_secs(2),
        "the Python package re-attached its lease",
    );
}

/// Fails under CI; otherwise says why the test does nothing.
fn python_unusable(reason: &str) {
    if std::env::var_os("CI").is_some_and(|ci| !ci.is_empty()) {
        panic!("{reason}\n(CI is set, so this fails instead of being skipped)");
    }
    eprintln!("SKIPPED: {reason}; install python3 with venv and pip (Debian: python3-venv)");
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the client crate lies in the workspace")
        .to_owned()
}

/// The venv's python, with the package (as its files are now), pytest and pytest-xdist, and
/// the lock that keeps the venv to this test while held.
fn venv() -> Result<(PathBuf, Flock<std::fs::File>), String> {
    let dir = support::target_dir().join("python-venv");
    // Two `cargo test` runs may share the target directory: one makes, updates and uses the
    // venv (and builds the package in python/) at a time.
    let lock = std::fs::File::create(support::target_dir().join("python-venv.lock"))
        .map_err(|e| format!("cannot create the venv's lock file: {e}"))?;
    let lock = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, errno)| format!("cannot lock the venv: {errno}"))?;
    let python = dir.join("bin").join("python");
    let stamp_file = dir.join("portbroker-package.stamp");
    let stamp = package_stamp();
    let has_tools = python.exists()
        && command_ok(Command::new(&python).args(["-c", "import pytest, xdist"])).is_ok();
    if !has_tools {
        make_venv(&dir)?;
        pip(&python, &["install", "./python", "pytest", "pytest-xdist"])?;
    } else if std::fs::read_to_string(&stamp_file).ok() != Some(stamp.clone()) {
        pip(
            &python,
            &["install", "--no-deps", "--force-reinstall", "./python"],
        )?;
    }
    std::fs::write(&stamp_file, stamp).map_err(|e| format!("cannot write the stamp: {e}"))?;
    Ok((python, lock))
}

/// A fresh venv at `dir`, made by the first python3 that can: the one on PATH (CI's
/// toolchain python), else Debian's.
fn make_venv(dir: &Path) -> Result<(), String> {
    let mut failures = Vec::new();
    for candidate in ["python3", "/usr/bin/python3"] {
        let made = command_ok(
            Command::new(candidate)
                .args(["-m", "venv", "--clear"])
                .arg(dir),
        );
        match made {
            Ok(_) => return Ok(()),
            Err(why) => failures.push(format!("{candidate} -m venv: {why}")),
        }
    }
    Err(format!(
        "cannot make a Python venv at {}: {}",
        dir.display(),
        failures.join("; ")
    ))
}

fn pip(python: &Path, args: &[&str]) -> Result<(), String> {
    // pip builds ./python in place, and setuptools would put back into the package whatever
    // an earlier build left in python/build, files removed since included.
    let _ = std::fs::remove_dir_all(repo().join("python").join("build"));
    command_ok(
        Command::new(python)
            .args(["-m", "pip", "--quiet", "--disable-pip-version-check"])
            .args(args)
            .current_dir(repo())
            .env("PYTHONDONTWRITEBYTECODE", "1"),
    )
    .map(drop)
    .map_err(|why| format!("pip {} failed (is PyPI reachable?): {why}", args.join(" ")))
}

/// The command's output if it ran and succeeded; else what went wrong, with its stderr.
fn command_ok(command: &mut Command) -> Result<Output, String> {
    let out = command
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", command.get_program()))?;
    if out.status.success() {
        return Ok(out);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
    Err(format!(
        "{} ({})",
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    ))
}

/// A digest of the package's files: a change means the venv's copy is stale.
fn package_stamp() -> String {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if name != "__pycache__" && !name.ends_with(".egg-info") {
                    walk(&path, files);
                }
            } else {
                files.push(path);
            }
        }
    }
    let root = repo().join("python");
    let mut files = vec![root.join("pyproject.toml"), root.join("README.md")];
    walk(&root.join("src"), &mut files);
    files.sort();
    let mut hasher = DefaultHasher::new();
    for file in &files {
        hasher.write(file.to_string_lossy().as_bytes());
        hasher.write(&std::fs::read(file).unwrap_or_default());
    }
    format!("{:016x}\n", hasher.finish())
}

fn pytest(python: &Path) -> Command {
    let mut command = Command::new(python);
    command
        .args(["-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs"])
        .current_dir(repo().join("python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PORTBROKER_SOCKET")
        .env_remove("PORTBROKER_TRUST_UID");
    command
}

fn run_pytest(command: &mut Command, what: &str) -> String {
    let out = command.output().expect("run pytest");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!("{what}:\n{}", stdout.trim_end());
    stdout
}

fn unit_tests(python: &Path) {
    let wire_rs = repo().join("proto").join("tests").join("wire.rs");
    let out = run_pytest(
        pytest(python)
            .arg("tests")
            .env("PORTBROKER_WIRE_RS", &wire_rs),
        "the Python package's unit tests",
    );
    assert!(
        !out.contains("wire.rs not found"),
        "the golden tests did not find {}:\n{out}",
        wire_rs.display()
    );
}

fn the_plugin_says_what_to_do_without_a_broker(python: &Path) {
    let nowhere = tempfile::tempdir().unwrap();
    let out = pytest(python)
        .arg("examples/xdist/test_parallel.py::test_a_leased_socket_serves_and_a_leased_number_is_held[0]")
        .env("PORTBROKER_SOCKET", nowhere.path().join("portbroker.sock"))
        .output()
        .expect("run pytest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a test passed with no broker:\n{stdout}"
    );
    for text in [
        "portbroker: the fixtures need a running broker: cannot reach the broker at",
        "No such file or directory",
        "is portbrokerd running?",
        "PORTBROKER_SOCKET",
    ] {
        assert!(stdout.contains(text), "no {text:?} in:\n{stdout}");
    }
    assert!(
        !stdout.contains("Traceback") && !stdout.contains("During handling"),
        "the error comes with noise:\n{stdout}"
    );
}

fn example_suite(python: &Path) {
    let policy = "[socket]\nmode = \"0666\"\n\
                  [[rule]]\nwho = \"everyone\"\nports = [\"pool\", \"1024-65535\"]\n";
    let pool = format!("{}-{}", POOL.0, POOL.1);
    // Reachable by other users: the suite checks that another user is refused a leased port.
    let daemon = Daemon::start_for_all_users(Some(policy), &["--pool", &pool]);
    let records = tempfile::tempdir().unwrap();
    let portctl_dir = Path::new(support::portctl_bin()).parent().unwrap();
    let path = format!(
        "{}:{}",
        portctl_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Beside portctl, where `portctl wrap` finds it: the suite starts a server under the shim.
    support::preload_shim();
    let out = run_pytest(
        pytest(python)
            .args(["-n", &WORKERS.to_string(), "examples/xdist"])
            .env("PORTBROKER_SOCKET", &daemon.socket)
            .env("PORTBROKER_EXAMPLE_RECORDS", records.path())
            .env("PATH", path),
        "the example suite under pytest -n 16",
    );

    let records = read_records(records.path());
    let parallel: Vec<_> = records
        .keys()
        .filter(|name| name.starts_with("parallel-"))
        .collect();
    assert_eq!(
        parallel.len(),
        EXAMPLE_TESTS,
        "not every test recorded its ports:\n{out}"
    );
    let workers: BTreeSet<&str> = records.values().map(|r| r.worker.as_str()).collect();
    assert_eq!(
        workers.len(),
        WORKERS,
        "the tests did not run on {WORKERS} workers: {workers:?}"
    );
    let mut given = BTreeMap::new();
    for (test, record) in &records {
        for port in &record.ports {
            assert!(
                (POOL.0..=POOL.1).contains(port),
                "{test}: port {port} is not from the broker's pool {POOL:?}"
            );
            if let Some(other) = given.insert(*port, test) {
                panic!("port {port} was given to both {other} and {test}");
            }
        }
    }
    if nix::unistd::geteuid().is_root() {
        assert!(
            records.contains_key("another-user"),
            "the other-user test did not run:\n{out}"
        );
    }
    assert!(
        records.contains_key("shim"),
        "the server under portctl wrap did not take its number over:\n{out}"
    );

    // The fixtures leave nothing behind: every worker's leases ended with its test or session.
    let broker = daemon.broker();
    let mut left = Vec::new();
    let empty = wait_until(Duration::from_secs(10), || {
        left = broker.list().unwrap();
        left.is_empty()
    });
    assert!(empty, "leases left after the run: {left:?}");
}

struct Record {
    worker: String,
    ports: Vec<u16>,
}

/// The records the example suite wrote: test name -> its worker and ports.
fn read_records(dir: &Path) -> BTreeMap<String, Record> {
    let mut records = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let ports = ["socket", "number"]
            .iter()
            .filter_map(|key| json[key].as_u64())
            .map(|port| u16::try_from(port).unwrap())
            .collect();
        let record = Record {
            worker: json["worker"].as_str().unwrap().to_owned(),
            ports,
        };
        records.insert(json["test"].as_str().unwrap().to_owned(), record);
    }
    records
}
