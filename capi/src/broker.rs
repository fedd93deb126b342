//! Connecting to the broker and closing the connection: the `pb_broker` handle.

use std::collections::HashMap;
use std::ffi::{c_char, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use client::{Broker, Lease, LeaseId};

use crate::args;
use crate::error::Error;
use crate::guard;

/// A connection to portbrokerd and the leases taken through it. Opaque: made by `pb_connect`,
/// ended by `pb_close`.
pub struct PbBroker {
    pub(crate) broker: Broker,
    /// The leases taken through this handle and not yet released: dropping one ends it.
    leases: Mutex<HashMap<LeaseId, Lease>>,
}

// The header promises that several threads may use one pb_broker at once: the compiler checks
// that everything in it may be shared between threads.
const _: fn() = || {
    fn shared_between_threads<T: Send + Sync>() {}
    shared_between_threads::<PbBroker>();
};

impl PbBroker {
    /// The leases still held through this handle. A panic while the lock was held (stopped at
    /// the boundary) leaves the table as valid as before, so poisoning is ignored.
    pub(crate) fn leases(&self) -> MutexGuard<'_, HashMap<LeaseId, Lease>> {
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The handle at `ptr`, or an error naming `function` if it is NULL.
///
/// # Safety
/// `ptr` is NULL or a handle from `pb_connect` not yet passed to `pb_close`.
pub(crate) unsafe fn handle<'a>(
    function: &'static str,
    ptr: *const PbBroker,
) -> Result<&'a PbBroker, Error> {
    // SAFETY: the caller promises NULL or a live handle, which pb_close alone frees.
    unsafe { ptr.as_ref() }.ok_or_else(|| {
        args::bad(
            function,
            "broker is NULL: pass the handle pb_connect returned",
        )
    })
}

/// Connects to the broker. `socket_path` is the path of its socket, or NULL to find it the way
/// the library and portctl do: `$PORTBROKER_SOCKET` if set; else, for a user other than root,
/// `$XDG_RUNTIME_DIR/portbroker/portbroker.sock` if a broker answers there; else
/// `/run/portbroker/portbroker.sock`.
///
/// Only a broker running as root or as this user is trusted (`PORTBROKER_TRUST_UID=UID` trusts
/// one more). Requests time out after 30 s. Returns a handle to pass to the other functions and
/// finally to `pb_close`, or NULL on failure (`PB_ERROR_UNREACHABLE` when nothing answers;
/// `pb_last_error()` says where it looked).
///
/// # Safety
/// `socket_path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn pb_connect(socket_path: *const c_char) -> *mut PbBroker {
    guard::call("pb_connect", std::ptr::null_mut(), || {
        let broker = if socket_path.is_null() {
            Broker::connect()?
        } else {
            // SAFETY: not NULL, and the caller promises a NUL-terminated string.
            let path = unsafe { args::c_str("pb_connect", "socket_path", socket_path) }?;
            Broker::connect_to(OsStr::from_bytes(path.to_bytes()))?
        };
        let handle = PbBroker {
            broker,
            leases: Mutex::new(HashMap::new()),
        };
        Ok(Box::into_raw(Box::new(handle)))
    })
}

/// Closes the connection and frees `broker`. The leases still held through it end, as when a
/// Rust `Lease` is dropped: the release is sent without waiting for the answer, and the broker
/// ends whatever is left when the connection closes. Close their fds first, or the kernel keeps
/// the ports bound until they are closed. `broker` must not be used afterwards, by any thread.
/// NULL does nothing.
///
/// # Safety
/// `broker` is NULL or a handle from `pb_connect` not yet closed, which no other thread is
/// using.
#[no_mangle]
pub unsafe extern "C" fn pb_close(broker: *mut PbBroker) {
    guard::call("pb_close", (), || {
        if !broker.is_null() {
            // SAFETY: the caller promises a live handle from pb_connect (Box::into_raw) that
            // nobody else uses: this takes back the box, and dropping it frees it.
            drop(unsafe { Box::from_raw(broker) });
        }
        Ok(())
    })
}
