//! Leasing sockets by spec, releasing and renewing leases.

use std::ffi::{c_char, c_int};
use std::os::fd::IntoRawFd;
use std::time::Duration;

use crate::args;
use crate::broker::{self, PbBroker};
use crate::error::Error;
use crate::guard;

/// Leases the sockets of `specs` as one lease: all are granted, or none and the last error
/// says why. A spec is text as portctl takes it, `PROTO:[ADDR:]PORT`: `tcp:8080` (on the broker's
/// default address, `[::]`, or `0.0.0.0` on a host without IPv6), `tcp:127.0.0.1:0` (any free
/// port of the broker's pool), `udp:[::1]:5353`. At most 64 specs.
///
/// On success, returns the lease id (> 0) and writes the `n_specs` bound sockets to
/// `fds_out[0..n_specs]` in the order of `specs`: TCP sockets listening, UDP sockets bound, all
/// blocking and close-on-exec. The caller owns these fds and closes them. If `ports_out` is not
/// NULL, the granted ports go to `ports_out[0..n_specs]` (useful for port 0).
///
/// The lease lives until `pb_release`, `pb_close` or the end of the process, whether or not the
/// fds are still open; while the fds are open, the kernel keeps the ports bound even after the
/// lease ended, so close them before releasing.
///
/// On failure returns -1 and writes nothing: `PB_ERROR_IN_USE` and `PB_ERROR_IN_USE_OUTSIDE`
/// when an address is taken (`pb_last_error_holder` says by whom), `PB_ERROR_INVALID_SPEC` for
/// a malformed spec (nothing is sent to the broker), `PB_ERROR_INVALID_ARGUMENT` for a NULL
/// `broker`, `specs`, `specs[i]` or `fds_out`, or `fds_cap < n_specs`.
///
/// # Safety
/// `broker` is NULL or a live handle from `pb_connect`. `specs` is NULL or points to `n_specs`
/// pointers, each NULL or a NUL-terminated string. `fds_out` is NULL or points to `fds_cap`
/// writable ints. `ports_out` is NULL or points to `n_specs` writable `uint16_t`s.
#[no_mangle]
pub unsafe extern "C" fn pb_lease(
    broker: *mut PbBroker,
    specs: *const *const c_char,
    n_specs: usize,
    fds_out: *mut c_int,
    fds_cap: usize,
    ports_out: *mut u16,
) -> i64 {
    const F: &str = "pb_lease";
    guard::call(F, -1, || {
        // SAFETY: the caller promises NULL or a live handle.
        let handle = unsafe { broker::handle(F, broker) }?;
        if specs.is_null() && n_specs > 0 {
            return Err(args::bad(F, format!("specs is NULL, n_specs is {n_specs}")));
        }
        let mut texts = Vec::with_capacity(n_specs);
        for index in 0..n_specs {
            // SAFETY: specs is not NULL (checked above, n_specs > 0 here) and the caller
            // promises n_specs readable pointers there.
            let ptr = unsafe { *specs.add(index) };
            // SAFETY: the caller promises NULL or a NUL-terminated string.
            let text = unsafe { args::c_str(F, &format!("specs[{index}]"), ptr) }?;
            let text = text
                .to_str()
                .map_err(|_| Error::SpecText { function: F, index })?;
            texts.push(text);
        }
        if fds_out.is_null() {
            return Err(args::bad(F, "fds_out is NULL"));
        }
        if fds_cap < n_specs {
            return Err(args::bad(
                F,
                format!("fds_cap is {fds_cap}, too small for the {n_specs} sockets asked for"),
            ));
        }
        let mut lease = handle.broker.lease_str(&texts)?;
        let id = lease.id();
        let Ok(id_out) = i64::try_from(id.0) else {
            // Dropping the lease releases it: the caller could not name it.
            return Err(Error::Internal {
                function: F,
                message: format!("the broker granted lease {id}, beyond int64_t"),
            });
        };
        let ports: Vec<u16> = lease.granted().iter().map(|g| g.addr.port()).collect();
        let sockets = lease.take_sockets();
        // The library checked the grant against the request: one socket per spec.
        if sockets.len() != n_specs || ports.len() != n_specs {
            return Err(Error::Internal {
                function: F,
                message: format!(
                    "asked for {n_specs} sockets, the lease has {} sockets and {} ports",
                    sockets.len(),
                    ports.len()
                ),
            });
        }
        for (index, socket) in sockets.into_iter().enumerate() {
            let fd = socket.into_owned_fd().into_raw_fd();
            // SAFETY: index < n_specs <= fds_cap, and the caller promises fds_cap writable ints.
            unsafe { fds_out.add(index).write(fd) };
        }
        if !ports_out.is_null() {
            // SAFETY: not NULL, and the caller promises n_specs writable uint16_t there.
            unsafe { std::ptr::copy_nonoverlapping(ports.as_ptr(), ports_out, n_specs) };
        }
        handle.leases().insert(id, lease);
        Ok(id_out)
    })
}

/// Ends lease `lease_id` and waits for the broker to confirm. For a lease taken through
/// `broker`, that is its own; any other id is released as `portctl release` would, which the
/// broker allows to the lease holder's user and to administrators. Close the lease's fds
/// first: the port is free for others once they are closed and the lease has ended.
///
/// Returns 0, or -1 on failure: `PB_ERROR_UNKNOWN_LEASE` when no live lease has the id,
/// `PB_ERROR_NOT_YOUR_LEASE` for another user's, `PB_ERROR_INVALID_ARGUMENT` for a NULL
/// `broker` or an id that is not positive.
///
/// # Safety
/// `broker` is NULL or a live handle from `pb_connect`.
#[no_mangle]
pub unsafe extern "C" fn pb_release(broker: *mut PbBroker, lease_id: i64) -> c_int {
    const F: &str = "pb_release";
    guard::call(F, -1, || {
        // SAFETY: the caller promises NULL or a live handle.
        let handle = unsafe { broker::handle(F, broker) }?;
        let id = args::lease_id(F, lease_id)?;
        // Taken out of the table before the round trip, so the lock is not held across it.
        let own = handle.leases().remove(&id);
        match own {
            Some(lease) => lease.release()?,
            None => handle.broker.release(id)?,
        }
        Ok(0)
    })
}

/// Gives lease `lease_id` a time limit of `ttl_ms` milliseconds from now, or extends it:
/// unless renewed again, the broker ends the lease then. `ttl_ms` 0 removes the limit. The
/// holder should close the lease's fds when it expires. For a lease taken through `broker`
/// that is its own; any other id is renewed as `portctl renew` would, which the broker allows
/// to the lease holder's user and to administrators.
///
/// Returns 0, or -1 on failure (`PB_ERROR_UNKNOWN_LEASE`, `PB_ERROR_NOT_YOUR_LEASE`,
/// `PB_ERROR_INVALID_ARGUMENT` as for `pb_release`).
///
/// # Safety
/// `broker` is NULL or a live handle from `pb_connect`.
#[no_mangle]
pub unsafe extern "C" fn pb_renew(broker: *mut PbBroker, lease_id: i64, ttl_ms: u64) -> c_int {
    const F: &str = "pb_renew";
    guard::call(F, -1, || {
        // SAFETY: the caller promises NULL or a live handle.
        let handle = unsafe { broker::handle(F, broker) }?;
        let id = args::lease_id(F, lease_id)?;
        let ttl = Duration::from_millis(ttl_ms);
        // The lock is held across the round trip: requests of one handle take turns on its
        // one connection anyway, and a concurrent pb_release must not end the lease meanwhile.
        let leases = handle.leases();
        match leases.get(&id) {
            Some(lease) => lease.renew(ttl)?,
            None => handle.broker.renew(id, ttl)?,
        };
        Ok(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code::PbError;

    fn last() -> (i32, String) {
        // SAFETY: pb_last_error returns a NUL-terminated string, never NULL.
        let text = unsafe { std::ffi::CStr::from_ptr(crate::pb_last_error()) };
        (
            crate::pb_last_error_code(),
            text.to_string_lossy().into_owned(),
        )
    }

    #[test]
    fn a_null_broker_is_an_argument_error() {
        let spec = c"tcp:127.0.0.1:0".as_ptr();
        let mut fd = -1;
        // SAFETY: every pointer is NULL or valid for what the function reads and writes.
        let id = unsafe {
            pb_lease(
                std::ptr::null_mut(),
                &spec,
                1,
                &mut fd,
                1,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(id, -1);
        assert_eq!(fd, -1, "nothing written on failure");
        let (code, text) = last();
        assert_eq!(code, PbError::InvalidArgument as i32);
        assert_eq!(
            text,
            "pb_lease: broker is NULL: pass the handle pb_connect returned"
        );
        // SAFETY: NULL is allowed and reported.
        assert_eq!(unsafe { pb_release(std::ptr::null_mut(), 1) }, -1);
        assert_eq!(last().0, PbError::InvalidArgument as i32);
        // SAFETY: NULL is allowed and reported.
        assert_eq!(unsafe { pb_renew(std::ptr::null_mut(), 1, 1000) }, -1);
        assert!(
            last().1.starts_with("pb_renew: broker is NULL"),
            "{}",
            last().1
        );
    }

    #[test]
    fn an_unreachable_socket_is_reported_as_such() {
        // SAFETY: a NUL-terminated path.
        let broker = unsafe { crate::pb_connect(c"/nonexistent/portbroker.sock".as_ptr()) };
        assert!(broker.is_null());
        let (code, text) = last();
        assert_eq!(code, PbError::Unreachable as i32);
        assert!(text.contains("/nonexistent/portbroker.sock"), "{text}");
        assert!(text.contains("is portbrokerd running?"), "{text}");
        // SAFETY: NULL is allowed and does nothing.
        unsafe { crate::pb_close(broker) };
        assert_eq!(last().0, 0);
    }
}
