//! Drives `capi/tests/probe.c`, which calls libportbroker through its header: one command a
//! line in, one answer a line out (the commands are listed at the top of probe.c).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

pub struct Probe {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Probe {
    /// Starts the probe with `PORTBROKER_SOCKET` set to `socket` (for `connect -`).
    pub fn start(program: &Path, socket: &Path) -> Probe {
        let mut child = Command::new(program)
            .env("PORTBROKER_SOCKET", socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the probe");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Probe {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends `command` and returns the answer's first line.
    pub fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("write to the probe");
        self.stdin.flush().unwrap();
        self.line(command)
    }

    /// Sends `command` and returns the lines of its answer up to `last` (not included).
    pub fn ask_until(&mut self, command: &str, last: &str) -> Vec<String> {
        let first = self.ask(command);
        let mut lines = vec![first];
        while lines.last().map(String::as_str) != Some(last) {
            lines.push(self.line(command));
        }
        lines.pop();
        lines
    }

    fn line(&mut self, command: &str) -> String {
        let mut line = String::new();
        let read = self
            .stdout
            .read_line(&mut line)
            .expect("read from the probe");
        if read == 0 {
            let status = self.child.wait().unwrap();
            panic!("the probe ended ({status}) instead of answering {command:?}");
        }
        line.trim_end_matches('\n').to_owned()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
