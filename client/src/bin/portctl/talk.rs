//! How portctl reaches the broker and its user: the connection that `--socket` chooses, and
//! one-line messages on stderr.

use std::io::Write;
use std::path::PathBuf;

use portbroker::Broker;

/// Connects to `--socket PATH` if given, else to the default path.
pub fn connect(socket: Option<PathBuf>) -> Result<Broker, portbroker::Error> {
    match socket {
        Some(path) => Broker::connect_to(path),
        None => Broker::connect(),
    }
}

/// One line on stderr, prefixed with the program name. A closed stderr is not worth dying for.
pub fn warn(message: &str) {
    let _ = writeln!(std::io::stderr().lock(), "portctl: {message}");
}
