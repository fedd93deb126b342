//! The last error of each thread, and the functions that read it.
//!
//! Every `pb_*` call but these readers clears it first and sets it on failure, so what they
//! return describes the latest call on the same thread; the text and the holder's name live
//! here until that thread's next such call.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};

use crate::code::PbError;
use crate::error::Error;

/// The process holding an address, as `pb_last_error_holder` reports it after a refusal.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PbHolder {
    /// Its process id.
    pub pid: i32,
    /// The user id it runs as (of the lease's holder, for a lease).
    pub uid: u32,
    /// Its group id.
    pub gid: u32,
    /// Its process name (`/proc/PID/comm`), empty if unknown, as that process set it: it may
    /// hold control characters, so escape it before it reaches a terminal or a log
    /// (`pb_last_error()` names the holder with them escaped). Owned by the library and valid
    /// until the next call on this thread other than the `pb_last_error*` functions.
    pub name: *const c_char,
    /// The lease that holds the address, or 0 when the holder is outside the broker.
    pub lease_id: i64,
}

/// The last error of one thread, kept in the C form that the readers hand out.
struct LastError {
    code: PbError,
    message: CString,
    holder: Option<(PbHolder, CString)>,
}

thread_local! {
    static LAST: RefCell<Option<LastError>> = const { RefCell::new(None) };
}

/// Forgets this thread's last error: a new call begins.
pub(crate) fn clear() {
    LAST.with(|last| last.replace(None));
}

/// Makes `err` this thread's last error.
pub(crate) fn set(err: &Error) {
    let holder = err.holder().map(|(holder, lease)| {
        let name = c_text(&holder.name);
        let view = PbHolder {
            pid: holder.pid,
            uid: holder.uid,
            gid: holder.gid,
            // Points into the CString's heap buffer, which moving the CString does not move.
            name: name.as_ptr(),
            lease_id: lease.map_or(0, |id| i64::try_from(id.0).unwrap_or(i64::MAX)),
        };
        (view, name)
    });
    let last = LastError {
        code: err.code(),
        message: c_text(&err.to_string()),
        holder,
    };
    LAST.with(|cell| cell.replace(Some(last)));
}

/// `text` as a C string; a NUL inside (which no message of ours has) would end C's reading of
/// it, so it is shown as U+FFFD instead.
fn c_text(text: &str) -> CString {
    CString::new(text.replace('\0', "\u{FFFD}")).unwrap_or_default()
}

/// The message of the last failed call on this thread: what failed, on what, and what to do
/// (for a refusal of an address in use, the holder's pid, name and uid); an empty string if
/// the last call succeeded or there was none. Never NULL.
///
/// The text is owned by the library: do not free it. It stays valid until the next call on
/// this thread other than `pb_last_error`, `pb_last_error_code` and `pb_last_error_holder`.
#[no_mangle]
pub extern "C" fn pb_last_error() -> *const c_char {
    // A panic cannot happen here (no allocation, no borrow held elsewhere); the readers still
    // never unwind, as `try_with` and `try_borrow` fail instead of panicking.
    let ptr = LAST.try_with(|last| match last.try_borrow() {
        Ok(last) => last.as_ref().map(|last| last.message.as_ptr()),
        Err(_) => None,
    });
    ptr.ok().flatten().unwrap_or(c"".as_ptr())
}

/// The code of the last failed call on this thread, a `pb_error` value; `PB_ERROR_OK` (0) if
/// the last call succeeded or there was none.
#[no_mangle]
pub extern "C" fn pb_last_error_code() -> c_int {
    let code = LAST.try_with(|last| match last.try_borrow() {
        Ok(last) => last.as_ref().map_or(PbError::Ok, |last| last.code),
        Err(_) => PbError::Ok,
    });
    code.unwrap_or(PbError::Ok) as c_int
}

/// Fills `*out` with the process that holds the address, when the last failed call on this
/// thread was refused because the address is in use (`PB_ERROR_IN_USE`, or
/// `PB_ERROR_IN_USE_OUTSIDE` where the broker could find the process). Returns 1 if it did,
/// 0 if the last error names no holder (`*out` is left alone), and -1 if `out` is NULL.
///
/// It leaves the last error as it is. `out->name` is valid as long as `pb_last_error()`'s text.
///
/// # Safety
/// `out` is NULL or points to a writable `pb_holder`.
#[no_mangle]
pub unsafe extern "C" fn pb_last_error_holder(out: *mut PbHolder) -> c_int {
    if out.is_null() {
        return -1;
    }
    let holder = LAST.try_with(|last| match last.try_borrow() {
        Ok(last) => last
            .as_ref()
            .and_then(|last| last.holder.as_ref().map(|(view, _)| *view)),
        Err(_) => None,
    });
    match holder.ok().flatten() {
        Some(view) => {
            // SAFETY: `out` is not NULL, and the caller promises it points to a writable
            // pb_holder; PbHolder is Copy, so nothing is dropped in its place.
            unsafe { out.write(view) };
            1
        }
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn text() -> String {
        // SAFETY: pb_last_error never returns NULL and its text is NUL-terminated.
        unsafe { CStr::from_ptr(pb_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn no_error_reads_as_ok_and_empty() {
        clear();
        assert_eq!(pb_last_error_code(), 0);
        assert_eq!(text(), "");
        let mut holder = std::mem::MaybeUninit::<PbHolder>::uninit();
        // SAFETY: a pointer to writable space for one PbHolder.
        assert_eq!(unsafe { pb_last_error_holder(holder.as_mut_ptr()) }, 0);
        // SAFETY: NULL is allowed and reported.
        assert_eq!(unsafe { pb_last_error_holder(std::ptr::null_mut()) }, -1);
    }

    #[test]
    fn the_last_error_is_per_thread() {
        set(&Error::Argument {
            function: "pb_test",
            problem: "x is NULL".into(),
        });
        assert_eq!(pb_last_error_code(), PbError::InvalidArgument as c_int);
        assert_eq!(text(), "pb_test: x is NULL");
        let other = std::thread::spawn(|| (pb_last_error_code(), text()))
            .join()
            .unwrap();
        assert_eq!(other, (0, String::new()));
        assert_eq!(text(), "pb_test: x is NULL");
    }

    #[test]
    fn a_refusal_in_use_names_its_holder() {
        let err = Error::Library(client::Error::Refused(client::Refusal::InUse {
            transport: client::Transport::Tcp,
            requested: "127.0.0.1:8080".parse().unwrap(),
            held: "0.0.0.0:8080".parse().unwrap(),
            lease: client::LeaseId(7),
            holder: client::Holder {
                pid: 4242,
                uid: 1000,
                gid: 1001,
                name: "nginx".into(),
            },
        }));
        set(&err);
        assert_eq!(pb_last_error_code(), PbError::InUse as c_int);
        assert!(text().contains("pid 4242 (nginx"), "{}", text());
        let mut holder = std::mem::MaybeUninit::<PbHolder>::uninit();
        // SAFETY: a pointer to writable space for one PbHolder.
        assert_eq!(unsafe { pb_last_error_holder(holder.as_mut_ptr()) }, 1);
        // SAFETY: pb_last_error_holder returned 1, so it wrote the whole struct.
        let holder = unsafe { holder.assume_init() };
        assert_eq!((holder.pid, holder.uid, holder.gid), (4242, 1000, 1001));
        assert_eq!(holder.lease_id, 7);
        // SAFETY: the name points at a NUL-terminated string kept until the next call.
        let name = unsafe { CStr::from_ptr(holder.name) };
        assert_eq!(name.to_str(), Ok("nginx"));
    }
}
