//! `bind()` through the broker: decide, lease, set the program's options on the leased
//! socket, and put it in place of the program's; or fail the way the kernel would, with a line
//! on stderr saying why.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use libc::c_int;
use portbroker::{Broker, Error, Refusal};

use crate::broker::{self, Leased};
use crate::classify::{self, Decision, Target};
use crate::forkgate::Pass;
use crate::guard::Inside;
use crate::sys::{self, Address};
use crate::{install, own, records, report, settings};

/// The shim's `bind(fd, address)`; `kernel` is the real `bind()` of the same arguments.
pub fn bind(fd: c_int, address: Address, kernel: impl FnOnce() -> c_int) -> c_int {
    // The client library's own sockets, and binds of a signal handler that interrupted one of
    // ours, go straight to the kernel.
    let Some(_inside) = Inside::enter() else {
        return kernel();
    };
    match classify::decide(fd, address) {
        Decision::PassThrough => kernel(),
        Decision::Refuse { errno, what, why } => {
            report::refused(fd, &what, &why);
            fail(errno)
        }
        Decision::Lease(target) => lease_in_place(&target, kernel),
    }
}

/// Returns -1 with `errno`, as a failed `bind()` does.
fn fail(errno: c_int) -> c_int {
    sys::set_errno(errno);
    -1
}

/// Whether a fallback bind was already reported: once per process is enough to notice.
static FELL_BACK: AtomicBool = AtomicBool::new(false);

fn lease_in_place(target: &Target, kernel: impl FnOnce() -> c_int) -> c_int {
    let _pass = Pass::enter();
    let settings = settings::get();
    let what = classify::describe(target);
    let broker = match broker::connect(settings) {
        Ok(broker) => broker,
        Err(err) if err.is_unreachable() && settings.fallback => {
            if !FELL_BACK.swap(true, Ordering::Relaxed) || settings.verbose {
                report::fallback(target.fd, &what, &err);
            }
            return kernel();
        }
        Err(err) => {
            report::failed(target.fd, &what, &err);
            return fail(report::errno_for(&err));
        }
    };
    // Read before leasing; forgotten only once the bind succeeded, so that a program that
    // tries another port on the same socket after EADDRINUSE keeps its options.
    let records = records::recorded(target.cookie);
    let Leased { lease, socket } = match lease_again_if_let_go(&broker, target) {
        Ok(leased) => leased,
        Err(err) => {
            report::failed(target.fd, &what, &err);
            return fail(report::errno_for(&err));
        }
    };
    let granted = lease.granted()[0].to_string();
    let outcomes = install::replay(
        socket.as_raw_fd(),
        lease.local_addr(),
        records.as_deref().unwrap_or_default(),
    );
    match install::put_in_place(socket, target.fd) {
        Ok(()) => {
            records::forget(target.cookie);
            if let Ok(cookie) = sys::cookie(target.fd) {
                own::remember(lease.id().0, cookie);
            }
            report::leased(
                target.fd,
                &granted,
                lease.id().0,
                &outcomes,
                records.is_none(),
                settings.verbose,
            );
            // Tied to this process: the broker ends it when the process (and every copy of
            // the socket) is gone.
            lease.detach();
            0
        }
        Err(err) => {
            report::not_in_place(target.fd, &granted, &err);
            let _ = lease.release();
            fail(err.raw_os_error().unwrap_or(libc::EIO))
        }
    }
}

/// Leases `target`; if the broker names a lease of this very process whose socket the program
/// has closed since, releases that lease and asks once more (see [`own`]).
fn lease_again_if_let_go(broker: &Broker, target: &Target) -> Result<Leased, Error> {
    match broker::lease(broker, target) {
        Err(Error::Refused(Refusal::InUse { lease, holder, .. }))
            if holder.pid == sys::pid() && own::take_if_let_go(lease.0) =>
        {
            broker.release(lease)?;
            broker::lease(broker, target)
        }
        other => other,
    }
}
