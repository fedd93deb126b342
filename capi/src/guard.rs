//! Runs the body of every `pb_*` call that can fail: no panic unwinds into C, and the thread's
//! last error says how the call ended.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};

use crate::error::Error;
use crate::last_error;

/// Clears the last error, runs `body`, and returns its value; on an error or a panic, makes
/// that the last error and returns `failed` (the C function's failure value).
///
/// `AssertUnwindSafe`: after a panic the call reports INTERNAL and returns; what it touched is
/// either the caller's (reported as failed) or a `pb_broker`'s lease table, whose lock
/// tolerates poisoning and whose leases stay valid values.
pub(crate) fn call<T>(
    function: &'static str,
    failed: T,
    body: impl FnOnce() -> Result<T, Error>,
) -> T {
    last_error::clear();
    let err = match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => return value,
        Ok(Err(err)) => err,
        Err(payload) => Error::Internal {
            function,
            message: panic_message(payload),
        },
    };
    last_error::set(&err);
    failed
}

/// The text a panic was raised with; the payload is dropped under `catch_unwind` too, since
/// dropping an arbitrary payload may itself panic.
fn panic_message(payload: Box<dyn Any + Send>) -> String {
    let message = payload
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
    format!("panicked: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code::PbError;

    #[test]
    fn a_panic_becomes_an_internal_error() {
        let got = call("pb_test", -1, || -> Result<i32, Error> { panic!("boom") });
        assert_eq!(got, -1);
        assert_eq!(crate::pb_last_error_code(), PbError::Internal as i32);
        // SAFETY: pb_last_error returns a NUL-terminated string, never NULL.
        let text = unsafe { std::ffi::CStr::from_ptr(crate::pb_last_error()) };
        let text = text.to_str().unwrap();
        assert!(text.starts_with("pb_test: internal error"), "{text}");
        assert!(text.contains("panicked: boom"), "{text}");
    }

    #[test]
    fn success_clears_the_last_error() {
        let _ = call("pb_test", -1, || -> Result<i32, Error> {
            Err(Error::Argument {
                function: "pb_test",
                problem: "x is NULL".into(),
            })
        });
        assert_eq!(crate::pb_last_error_code(), PbError::InvalidArgument as i32);
        assert_eq!(call("pb_test", -1, || Ok(5)), 5);
        assert_eq!(crate::pb_last_error_code(), 0);
    }
}
