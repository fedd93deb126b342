//! The text form of a socket spec: `PROTO:[ADDR:]PORT`.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use crate::{Listen, SocketSpec, Transport};

/// A socket spec in text form could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad socket spec {spec:?}: {reason}; expected PROTO:[ADDR:]PORT such as tcp:8080, tcp:127.0.0.1:0 or udp:[::1]:5353")]
pub struct SpecError {
    spec: String,
    reason: &'static str,
}

impl FromStr for Transport {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Transport::Tcp),
            "udp" => Ok(Transport::Udp),
            _ => Err("the protocol must be tcp or udp"),
        }
    }
}

impl FromStr for SocketSpec {
    type Err = SpecError;

    /// Parses `tcp:8080`, `tcp:127.0.0.1:0`, `udp:[::1]:5353`. Port 0 means any port from the pool;
    /// without an address the broker's default wildcard is used. IPv4-mapped IPv6 addresses are
    /// refused: write the IPv4 address.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason| SpecError {
            spec: text.to_owned(),
            reason,
        };
        let (proto, rest) = text.split_once(':').ok_or_else(|| fail("no protocol"))?;
        let transport = proto.parse().map_err(fail)?;
        let (addr, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (ip, port) = bracketed
                .split_once("]:")
                .ok_or_else(|| fail("an IPv6 address in brackets must be followed by :PORT"))?;
            let ip: Ipv6Addr = ip.parse().map_err(|_| fail("not an IPv6 address"))?;
            (Some(IpAddr::V6(ip)), port)
        } else if let Some((ip, port)) = rest.rsplit_once(':') {
            if ip.contains(':') {
                return Err(fail("write IPv6 addresses in brackets, as [::1]"));
            }
            let ip: IpAddr = ip.parse().map_err(|_| fail("not an IPv4 address"))?;
            (Some(ip), port)
        } else {
            (None, rest)
        };
        if let Some(IpAddr::V6(v6)) = addr {
            if v6.to_ipv4_mapped().is_some() {
                return Err(fail(
                    "IPv4-mapped IPv6 addresses are not supported; write the IPv4 address",
                ));
            }
        }
        let port = port
            .parse()
            .map_err(|_| fail("the port must be a number from 0 to 65535"))?;
        Ok(SocketSpec {
            transport,
            addr,
            port,
            listen: Listen::Default,
            v6_only: false,
        })
    }
}

impl fmt::Display for SocketSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            None => write!(f, "{}:{}", self.transport, self.port)?,
            Some(IpAddr::V4(ip)) => write!(f, "{}:{ip}:{}", self.transport, self.port)?,
            Some(IpAddr::V6(ip)) => write!(f, "{}:[{ip}]:{}", self.transport, self.port)?,
        }
        if self.v6_only {
            // No text form parses to this: it is set by programs (the bind shim), not typed.
            f.write_str(" (IPv6 only)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(
            "tcp:8080".parse::<SocketSpec>().unwrap(),
            SocketSpec::tcp(None, 8080)
        );
        assert_eq!(
            "tcp:127.0.0.1:0".parse::<SocketSpec>().unwrap(),
            SocketSpec::tcp(Some(Ipv4Addr::LOCALHOST.into()), 0)
        );
        assert_eq!(
            "udp:[::1]:5353".parse::<SocketSpec>().unwrap(),
            SocketSpec::udp(Some(Ipv6Addr::LOCALHOST.into()), 5353)
        );
        for text in [
            "tcp:8080",
            "tcp:127.0.0.1:0",
            "udp:[::1]:5353",
            "udp:[::]:1",
        ] {
            assert_eq!(text.parse::<SocketSpec>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn refuses_malformed_specs_with_a_reason() {
        for (text, reason) in [
            ("8080", "no protocol"),
            ("sctp:80", "tcp or udp"),
            ("tcp:65536", "0 to 65535"),
            ("tcp:", "0 to 65535"),
            ("tcp:::1:80", "brackets"),
            ("tcp:[::1]80", "followed by :PORT"),
            ("tcp:localhost:80", "not an IPv4 address"),
            ("tcp:[::ffff:127.0.0.1]:80", "IPv4-mapped"),
        ] {
            let err = text.parse::<SocketSpec>().unwrap_err().to_string();
            assert!(err.contains(reason), "{text}: {err}");
            assert!(err.contains(text), "{text}: {err}");
        }
    }
}
