//! `portctl run`: lease sockets, run CMD with them, release when CMD ends.

use std::path::PathBuf;

use anyhow::Result;
use portbroker::{GrantedSocket, LeasedSocket, SocketSpec};

use crate::exit::{describe, UsageError};
use crate::relay::SignalRelay;
use crate::spawn::{self, Program};
use crate::{cli::RunArgs, warn};

/// A spec from the command line, `[NAME=]PROTO:[ADDR:]PORT`.
#[derive(Debug, PartialEq)]
pub struct NamedSpec {
    pub name: Option<String>,
    pub spec: SocketSpec,
}

pub fn parse_spec(text: &str) -> Result<NamedSpec> {
    let (name, spec) = match text.split_once('=') {
        Some((name, spec)) => {
            check_name(name)?;
            (Some(name.to_owned()), spec)
        }
        None => (None, text),
    };
    let spec = spec
        .parse::<SocketSpec>()
        .map_err(portbroker::Error::from)?;
    Ok(NamedSpec { name, spec })
}

/// `LISTEN_FDNAMES` is `:`-separated, and systemd accepts 1 to 255 printable ASCII characters.
fn check_name(name: &str) -> Result<(), UsageError> {
    let printable = |b: u8| (b' '..=b'~').contains(&b) && b != b':';
    if name.is_empty() || name.len() > 255 || !name.bytes().all(printable) {
        return Err(UsageError(format!(
            "bad socket name {name:?}: a name is 1 to 255 printable ASCII characters without ':'"
        )));
    }
    Ok(())
}

fn default_name(granted: &GrantedSocket) -> String {
    format!("{}-{}", granted.transport, granted.addr.port())
}

pub fn run(socket: Option<PathBuf>, args: RunArgs) -> Result<u8> {
    // Everything that can be wrong with the command line is found before leasing anything.
    let specs = args
        .specs
        .iter()
        .map(|text| parse_spec(text))
        .collect::<Result<Vec<_>>>()?;
    let program = Program::resolve(&args.command)?;

    let broker = crate::connect(socket)?;
    let mut lease = broker.lease(specs.iter().map(|named| named.spec))?;
    let names: Vec<String> = specs
        .iter()
        .zip(lease.granted())
        .map(|(named, granted)| named.name.clone().unwrap_or_else(|| default_name(granted)))
        .collect();
    if !args.quiet {
        for (index, (granted, name)) in lease.granted().iter().zip(&names).enumerate() {
            warn(&format!(
                "lease {}: {granted} as fd {} ({name})",
                lease.id(),
                3 + index
            ));
        }
    }

    // Before the fork, so that no signal meant for CMD and no exit of CMD goes unseen.
    let relay = SignalRelay::install()?;
    let sockets = lease
        .take_sockets()
        .into_iter()
        .map(LeasedSocket::into_owned_fd)
        .collect();
    // The lease (and its connection) stays with us: it lasts exactly as long as CMD.
    let child = spawn::spawn(&program, sockets, &names)?;
    let status = relay.forward_until_exit(child)?;
    drop(relay);

    let id = lease.id();
    if let Err(err) = lease.release() {
        warn(&format!(
            "warning: cannot release lease {id}: {}",
            describe(&err.into())
        ));
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit;
    use portbroker::Transport;

    #[test]
    fn specs_may_carry_a_name() {
        let named = parse_spec("http=tcp:127.0.0.1:0").unwrap();
        assert_eq!(named.name.as_deref(), Some("http"));
        assert_eq!(named.spec, "tcp:127.0.0.1:0".parse().unwrap());
        let plain = parse_spec("udp:[::1]:5353").unwrap();
        assert_eq!(plain.name, None);
        assert_eq!(plain.spec.transport, Transport::Udp);
    }

    #[test]
    fn bad_specs_and_names_are_usage_errors() {
        for text in [
            "tcp:nope:80",
            "sctp:80",
            "a:b=tcp:80",
            "=tcp:80",
            "ä=tcp:80",
            "8080",
        ] {
            let err = parse_spec(text).unwrap_err();
            assert_eq!(exit::code_for(&err), exit::USAGE, "{text}: {err}");
        }
    }

    #[test]
    fn default_names_use_the_granted_port() {
        let granted = GrantedSocket {
            transport: Transport::Udp,
            addr: "[::]:40123".parse().unwrap(),
            listening: false,
        };
        assert_eq!(default_name(&granted), "udp-40123");
    }
}
