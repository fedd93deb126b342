//! Log lines go to a buffer that the event loop writes to stderr a moment later (see
//! `server::LOG_DELAY`), so logging costs the lease path no `write` of its own and the daemon
//! no thread.

use std::io::{self, Write};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tracing_subscriber::fmt::MakeWriter;

/// Past this much, a line forces a write at once, so a flood cannot grow the buffer.
const FLUSH_AT: usize = 64 * 1024;

static BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());

fn buffer() -> MutexGuard<'static, Vec<u8>> {
    BUFFER.lock().unwrap_or_else(PoisonError::into_inner)
}

fn write_out(buffer: &mut Vec<u8>) {
    // Nowhere to report a failure to write the log; the lines are dropped.
    let _ = io::stderr().lock().write_all(buffer);
    buffer.clear();
}

/// Whether lines are waiting to be written.
pub fn pending() -> bool {
    !buffer().is_empty()
}

/// Writes the buffered lines to stderr.
pub fn flush() {
    let mut buffer = buffer();
    if !buffer.is_empty() {
        write_out(&mut buffer);
    }
}

/// The `tracing_subscriber` writer for the buffer.
pub struct BufferedStderr;

impl<'a> MakeWriter<'a> for BufferedStderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter
    }
}

/// Appends what `tracing` formats (a whole line per write) to the buffer.
pub struct LineWriter;

impl Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut buffer = buffer();
        buffer.extend_from_slice(bytes);
        if buffer.len() >= FLUSH_AT {
            write_out(&mut buffer);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
