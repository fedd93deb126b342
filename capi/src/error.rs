//! What can go wrong in a call: the client library's errors and the C side's own.

use std::fmt;

use crate::code::PbError;

/// A failed call, before it becomes the thread's last error.
#[derive(Debug)]
pub(crate) enum Error {
    /// The client library failed; its message already says what, on what and what to do.
    Library(client::Error),
    /// An argument the C caller passed cannot be used (a NULL pointer, a buffer too small, an
    /// id that is no lease's); nothing was sent to the broker.
    Argument {
        /// The `pb_*` function called.
        function: &'static str,
        /// What is wrong with which argument, and what to pass instead.
        problem: String,
    },
    /// A spec is not text the library can read (not UTF-8); nothing was sent to the broker.
    SpecText {
        /// The `pb_*` function called.
        function: &'static str,
        /// The spec's index in the caller's array.
        index: usize,
    },
    /// A bug: the call panicked (the panic was stopped at the boundary) or met something it
    /// believed impossible.
    Internal {
        /// The `pb_*` function called.
        function: &'static str,
        /// The panic's message, or what was impossible.
        message: String,
    },
}

impl Error {
    /// The C code of this error.
    pub(crate) fn code(&self) -> PbError {
        match self {
            Error::Library(err) => PbError::from(err.kind()),
            Error::Argument { .. } => PbError::InvalidArgument,
            Error::SpecText { .. } => PbError::InvalidSpec,
            Error::Internal { .. } => PbError::Internal,
        }
    }

    /// The process the address is held by, for an "in use" refusal where the broker named it,
    /// with the lease that holds it (`None` outside the broker).
    pub(crate) fn holder(&self) -> Option<(&client::Holder, Option<client::LeaseId>)> {
        match self {
            Error::Library(client::Error::Refused(client::Refusal::InUse {
                holder,
                lease,
                ..
            })) => Some((holder, Some(*lease))),
            Error::Library(err) => err.holder().map(|holder| (holder, None)),
            _ => None,
        }
    }
}

impl From<client::Error> for Error {
    fn from(err: client::Error) -> Self {
        Error::Library(err)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Library(err) => write!(f, "{err}"),
            Error::Argument { function, problem } => write!(f, "{function}: {problem}"),
            Error::SpecText { function, index } => write!(
                f,
                "{function}: specs[{index}] is not UTF-8 text; a spec is PROTO:[ADDR:]PORT, \
                 such as tcp:127.0.0.1:0"
            ),
            Error::Internal { function, message } => write!(
                f,
                "{function}: internal error in libportbroker (a bug; please report it): {message}"
            ),
        }
    }
}
