//! The C ABI of portbroker: `libportbroker.so`, over the Rust client library.
//!
//! Every exported function is `pb_*`, takes and returns C types only, and reports failure
//! through a return value plus a thread-local last error ([`pb_last_error`],
//! [`pb_last_error_code`]). The header `include/portbroker.h` is generated from these sources by
//! cbindgen, with these doc comments as its documentation; `tests/header.rs` fails when the
//! committed header differs from what cbindgen makes now.
//!
//! One file per job: [`guard`] runs each call (no panic crosses the boundary, the last error
//! is set), [`args`] checks C arguments, [`code`] numbers the errors, [`last_error`] keeps the
//! last one per thread, [`broker`] connects and closes, [`lease`] leases, releases and renews.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod args;
mod broker;
mod code;
mod error;
mod guard;
mod last_error;
mod lease;

pub use broker::{pb_close, pb_connect, PbBroker};
pub use code::PbError;
pub use last_error::{pb_last_error, pb_last_error_code, pb_last_error_holder, PbHolder};
pub use lease::{pb_lease, pb_release, pb_renew};
