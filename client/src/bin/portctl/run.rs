//! `portctl run`: lease sockets, run CMD with them, release when CMD ends.

use std::path::PathBuf;

use anyhow::Result;
use portbroker::{ErrorKind, GrantedSocket, LeasedSocket, SocketSpec};

use crate::cli::RunArgs;
use crate::exit::{describe, UsageError};
use crate::relay::SignalRelay;
use crate::spawn::{self, Program};
use crate::talk::{self, warn};

/// A spec from the command line, `[NAME=]PROTO:[ADDR:]PORT`.
#[derive(Debug, PartialEq)]
pub struct NamedSpec {
    pub name: Option<String>,
    pub spec: SocketSpec,
}

/// What `run` leases: the sockets of specs, or a service of the broker's policy.
#[derive(Debug, PartialEq)]
pub enum Target {
    /// `[NAME=]PROTO:[ADDR:]PORT` arguments, leased together.
    Specs(Vec<NamedSpec>),
    /// A service name, given alone.
    Service(String),
}

/// Sorts the SPEC arguments out. An argument with neither ':' nor '=' names a service (every
/// socket spec has a ':', and one with '=' but no ':' is a spec gone wrong); a service is
/// leased alone, so it must be the only argument.
pub fn parse_target(args: &[String]) -> Result<Target> {
    let is_service = |arg: &&String| !arg.contains([':', '=']);
    let services: Vec<&String> = args.iter().filter(is_service).collect();
    match services[..] {
        [] => Ok(Target::Specs(
            args.iter()
                .map(|text| parse_spec(text))
                .collect::<Result<_>>()?,
        )),
        [name] if args.len() == 1 => {
            check_name(name, "service name")?;
            Ok(Target::Service(name.clone()))
        }
        [name] => Err(UsageError(format!(
            "{name:?} is a service name, and a service is leased on its own: give either one \
             service name or socket specs ([NAME=]PROTO:[ADDR:]PORT), not both"
        ))
        .into()),
        [first, second, ..] => Err(UsageError(format!(
            "{first:?} and {second:?} are both service names: run leases one service at a time"
        ))
        .into()),
    }
}

pub fn parse_spec(text: &str) -> Result<NamedSpec> {
    let (name, spec) = match text.split_once('=') {
        Some((name, spec)) => {
            check_name(name, "socket name")?;
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
/// A service's name becomes its sockets' name, so it must pass too.
fn check_name(name: &str, what: &str) -> Result<(), UsageError> {
    let printable = |b: u8| (b' '..=b'~').contains(&b) && b != b':';
    if name.is_empty() || name.len() > 255 || !name.bytes().all(printable) {
        return Err(UsageError(format!(
            "bad {what} {name:?}: a name is 1 to 255 printable ASCII characters without ':'"
        )));
    }
    Ok(())
}

/// A service name that is a port number is most likely a spec without its protocol: say so.
fn unknown_service_hint(err: portbroker::Error, name: &str) -> anyhow::Error {
    if err.kind() == ErrorKind::UnknownService && name.parse::<u16>().is_ok() {
        // The context quotes the error, so `describe` does not repeat it; the exit code still
        // comes from the library error underneath.
        let text = format!("{err} (to lease port {name}, write tcp:{name} or udp:{name})");
        anyhow::Error::new(err).context(text)
    } else {
        err.into()
    }
}

fn default_name(granted: &GrantedSocket) -> String {
    format!("{}-{}", granted.transport, granted.addr.port())
}

pub fn run(socket: Option<PathBuf>, args: RunArgs) -> Result<u8> {
    // Everything that can be wrong with the command line is found before leasing anything.
    let target = parse_target(&args.specs)?;
    let program = Program::resolve(&args.command)?;

    let broker = talk::connect(socket)?;
    let (mut lease, names) = match &target {
        Target::Specs(specs) => {
            let lease = broker.lease(specs.iter().map(|named| named.spec))?;
            let names: Vec<String> = specs
                .iter()
                .zip(lease.granted())
                .map(|(named, granted)| named.name.clone().unwrap_or_else(|| default_name(granted)))
                .collect();
            (lease, names)
        }
        Target::Service(name) => {
            let lease = broker
                .lease_named(name)
                .map_err(|err| unknown_service_hint(err, name))?;
            // systemd allows a name to repeat: every socket of the service carries its name.
            let names = vec![name.clone(); lease.granted().len()];
            (lease, names)
        }
    };
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
    // Tied to CMD, the lease outlives this process if it is killed, and ends with CMD.
    let tied = match lease.tie_to_process(child.as_raw()) {
        Ok(_) => true,
        Err(err) => {
            warn(&format!(
                "warning: lease {} stays tied to portctl, not to the program: {}",
                lease.id(),
                describe(&err.into())
            ));
            false
        }
    };
    let status = relay.forward_until_exit(child)?;
    drop(relay);

    let id = lease.id();
    if tied {
        // The broker ends it as CMD exits (or keeps it for a sticky service's restart).
        lease.detach();
    } else if let Err(err) = lease.release() {
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

    fn target(args: &[&str]) -> Result<Target> {
        parse_target(&args.iter().map(|&arg| arg.to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn an_argument_without_a_colon_is_a_service() {
        assert_eq!(target(&["web"]).unwrap(), Target::Service("web".into()));
        assert_eq!(target(&["8080"]).unwrap(), Target::Service("8080".into()));
        assert_eq!(
            target(&["tcp:80", "dns=udp:[::1]:53"]).unwrap(),
            Target::Specs(vec![
                parse_spec("tcp:80").unwrap(),
                parse_spec("dns=udp:[::1]:53").unwrap()
            ])
        );
        // With '=' it is a spec gone wrong, and the spec's error says what is wrong with it.
        let err = target(&["http=8080"]).unwrap_err();
        assert_eq!(exit::code_for(&err), exit::USAGE);
        assert!(err.to_string().contains("8080"), "{err}");
    }

    #[test]
    fn a_service_is_leased_alone() {
        for args in [
            &["web", "tcp:80"][..],
            &["tcp:80", "web"],
            &["web", "http=tcp:0"],
        ] {
            let err = target(args).unwrap_err();
            assert_eq!(exit::code_for(&err), exit::USAGE, "{args:?}");
            let text = err.to_string();
            assert!(text.contains("\"web\" is a service name"), "{text}");
            assert!(text.contains("not both"), "{text}");
        }
        let err = target(&["web", "mail"]).unwrap_err();
        assert_eq!(exit::code_for(&err), exit::USAGE);
        assert!(err.to_string().contains("one service at a time"), "{err}");
    }

    #[test]
    fn service_names_must_fit_listen_fdnames() {
        for name in ["", "ä", &"x".repeat(256)] {
            let err = target(&[name]).unwrap_err();
            assert_eq!(exit::code_for(&err), exit::USAGE, "{name:?}");
            assert!(err.to_string().starts_with("bad service name"), "{err}");
        }
        assert!(target(&[&"x".repeat(255)]).is_ok());
    }

    #[test]
    fn an_unknown_numeric_service_hints_at_a_spec() {
        let unknown = |name: &str| {
            portbroker::Error::Refused(portbroker::Refusal::UnknownService { name: name.into() })
        };
        let err = unknown_service_hint(unknown("8080"), "8080");
        assert_eq!(exit::code_for(&err), exit::CONFIG);
        let text = exit::describe(&err);
        assert!(
            text.ends_with("(to lease port 8080, write tcp:8080 or udp:8080)"),
            "{text}"
        );
        assert_eq!(text.matches("no service named").count(), 1, "{text}");

        let err = unknown_service_hint(unknown("web"), "web");
        assert_eq!(exit::code_for(&err), exit::CONFIG);
        assert!(!exit::describe(&err).contains("write tcp:"), "{err}");
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
