//! Reading what C passes: pointers are checked for NULL and strings for UTF-8 before use, and
//! a bad one becomes an error that names the function and the argument.

use std::ffi::{c_char, CStr};

use crate::error::Error;

/// An argument error of `function`.
pub(crate) fn bad(function: &'static str, problem: impl Into<String>) -> Error {
    Error::Argument {
        function,
        problem: problem.into(),
    }
}

/// The C string at `ptr`, or an error naming the argument `name` if `ptr` is NULL.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays unchanged for `'a`.
pub(crate) unsafe fn c_str<'a>(
    function: &'static str,
    name: &str,
    ptr: *const c_char,
) -> Result<&'a CStr, Error> {
    if ptr.is_null() {
        return Err(bad(function, format!("{name} is NULL")));
    }
    // SAFETY: not NULL, and the caller promises a NUL-terminated string that lives for 'a.
    Ok(unsafe { CStr::from_ptr(ptr) })
}

/// `id` as a lease id, or an error: ids the broker gives are positive.
pub(crate) fn lease_id(function: &'static str, id: i64) -> Result<client::LeaseId, Error> {
    match u64::try_from(id) {
        Ok(id) if id > 0 => Ok(client::LeaseId(id)),
        _ => Err(bad(
            function,
            format!("lease id {id} is no lease's: pass the id pb_lease returned (> 0)"),
        )),
    }
}
