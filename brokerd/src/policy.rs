//! Who may lease what: the policy file, its built-in defaults, and the checks made per request.
//!
//! The file is TOML (see `systemd/portbroker.toml`, a commented example). Unknown keys are
//! errors. Names of users and groups are resolved when the file is loaded, so a request costs
//! no lookup: the checks below are a walk over a few rules.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use nix::unistd::{Group, User};
use portbroker_proto::{PortRange, SocketSpec, Transport};
use serde::Deserialize;

/// Where the policy lives unless `--config` or `PORTBROKER_CONFIG` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/portbroker/portbroker.toml";
/// The group whose members may use the socket by default, when it exists.
const DEFAULT_GROUP: &str = "portbroker";

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileSocket {
    path: Option<PathBuf>,
    mode: Option<String>,
    group: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileMetrics {
    listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePortserver {
    #[serde(default = "default_true")]
    enabled: bool,
    address: Option<String>,
}

fn default_true() -> bool {
    true
}

impl Default for FilePortserver {
    fn default() -> Self {
        FilePortserver {
            enabled: true,
            address: None,
        }
    }
}

/// Where the portserver (Google portpicker's protocol) listens unless the policy says
/// otherwise: an abstract Unix address of the daemon's network namespace.
pub const DEFAULT_PORTSERVER: &str = "@portserver";

/// A portserver address: `@name` (abstract) or an absolute path.
pub fn parse_portserver_address(text: &str) -> Result<String, String> {
    let ok = match text.strip_prefix('@') {
        Some(name) => !name.is_empty() && name.len() < 100,
        None => text.starts_with('/') && text.len() < 100,
    };
    if ok && !text.contains('\0') {
        Ok(text.to_owned())
    } else {
        Err("expected @name (an abstract Unix address) or an absolute path, under 100 bytes".into())
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FilePool {
    range: Option<String>,
    #[serde(default)]
    reserve_in_kernel: bool,
}

/// The `[limits]` table; every field has a safe default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub leases_per_uid: u64,
    /// Live leased sockets of one non-root user: a lease holds up to 64, so the lease quota
    /// alone would let one user hold 64 times as many ports.
    pub sockets_per_uid: u64,
    pub connections_per_uid: u64,
    pub leases_total: u64,
    pub hello_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    pub requests_per_sec_per_uid: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            leases_per_uid: 1024,
            sockets_per_uid: 1024,
            connections_per_uid: 256,
            leases_total: 65_536,
            hello_timeout_secs: 10,
            idle_timeout_secs: 600,
            requests_per_sec_per_uid: 5000,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    who: String,
    ports: Vec<String>,
    transports: Option<Vec<String>>,
    addresses: Option<Vec<IpAddr>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileService {
    sockets: Vec<String>,
    who: Option<Vec<String>>,
    #[serde(default)]
    sticky_secs: u64,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    socket: FileSocket,
    #[serde(default)]
    pool: FilePool,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    metrics: FileMetrics,
    #[serde(default)]
    portserver: FilePortserver,
    #[serde(default)]
    admin: FileAdmin,
    #[serde(default, rename = "rule")]
    rules: Vec<FileRule>,
    #[serde(default)]
    services: BTreeMap<String, FileService>,
    #[serde(default)]
    reserve: FileReserve,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileReserve {
    #[serde(default)]
    tcp: Vec<String>,
    #[serde(default)]
    udp: Vec<String>,
}

/// The most ports a policy may reserve: each is an fd the daemon holds.
const MAX_RESERVED: usize = 4096;

/// The longest service name, in bytes. A name asked for that is longer names no service, and
/// the refusal (which every watcher is told of) repeats only this much of it.
pub const MAX_SERVICE_NAME: usize = 255;

/// Whom a rule or service names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Everyone,
    Uid(u32),
    Gid(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ports {
    /// Any-port leases (port 0), served from the pool.
    Pool,
    Range(u16, u16),
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// As written, for messages.
    text: String,
    who: Who,
    ports: Vec<Ports>,
    transports: Option<Vec<Transport>>,
    addresses: Option<Vec<IpAddr>>,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub sockets: Vec<SocketSpec>,
    who: Option<Vec<Who>>,
    /// How long a lease of the service that ended with its holder (a crash) stays reserved
    /// for the same user and service; 0 for not at all.
    pub sticky: std::time::Duration,
}

/// The peer of a connection as the kernel reported it, with its groups from `/proc`.
#[derive(Debug, Clone)]
pub struct Identity {
    pub uid: u32,
    /// The primary and the supplementary groups.
    pub groups: Vec<u32>,
}

impl Identity {
    fn is(&self, who: &Who) -> bool {
        match who {
            Who::Everyone => true,
            Who::Uid(uid) => *uid == self.uid,
            Who::Gid(gid) => self.groups.contains(gid),
        }
    }
}

/// The policy in force.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The file it came from; `None` for the built-in defaults.
    pub source: Option<PathBuf>,
    pub socket_path: Option<PathBuf>,
    pub socket_mode: u32,
    pub socket_gid: Option<u32>,
    pub pool: Option<PortRange>,
    /// Add the pool to `net.ipv4.ip_local_reserved_ports`, so that the kernel's own ephemeral
    /// picker never lands on a pool port (matters where the pool overlaps the ephemeral range).
    pub reserve_pool_in_kernel: bool,
    pub limits: Limits,
    /// Where the Prometheus endpoint listens (`[metrics] listen`, loopback only); `None`: off.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the portserver listens (`[portserver] address`, `@name` or a path); `None`: off
    /// (`[portserver] enabled = false`).
    pub portserver: Option<String>,
    admin_gids: Vec<u32>,
    rules: Vec<Rule>,
    pub services: BTreeMap<String, Service>,
    /// Ports the broker holds bound (not listening, on every address) from start-up, so that
    /// nothing outside it can take them; a lease of one gets the held socket.
    pub reserved: Vec<(Transport, u16)>,
}

/// A policy file could not be used. The message names the file, and the key, line and column
/// where the TOML parser knows them.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

fn parse_who(text: &str) -> Result<Who, String> {
    let bad = || {
        format!("who = {text:?}: expected \"everyone\", \"uid:N\", \"user:NAME\", \"gid:N\" or \"group:NAME\"")
    };
    if text == "everyone" {
        return Ok(Who::Everyone);
    }
    let (kind, value) = text.split_once(':').ok_or_else(bad)?;
    match kind {
        "uid" => value.parse().map(Who::Uid).map_err(|_| bad()),
        "gid" => value.parse().map(Who::Gid).map_err(|_| bad()),
        "user" => match User::from_name(value) {
            Ok(Some(user)) => Ok(Who::Uid(user.uid.as_raw())),
            _ => Err(format!("who = {text:?}: no user named {value:?}")),
        },
        "group" => group_gid(value).map(Who::Gid),
        _ => Err(bad()),
    }
}

fn group_gid(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    match Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        _ => Err(format!("no group named {name:?}")),
    }
}

fn parse_ports(text: &str) -> Result<Ports, String> {
    if text == "pool" {
        return Ok(Ports::Pool);
    }
    let bad = || {
        format!("ports entry {text:?}: expected \"pool\", a port such as \"80\", or a range such as \"8000-8099\"")
    };
    let (lo, hi) = text.split_once('-').unwrap_or((text, text));
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok(Ports::Range(lo, hi))
}

/// The address of the metrics endpoint: a loopback address and a port other than 0, as the
/// endpoint is unauthenticated.
pub fn parse_metrics_listen(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text
        .parse()
        .map_err(|_| "expected an address and port such as \"127.0.0.1:9464\"".to_owned())?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{} is not a loopback address: the metrics endpoint is unauthenticated, so it \
             listens on 127.0.0.1 or ::1 only",
            addr.ip()
        ));
    }
    if addr.port() == 0 {
        return Err("port 0: give the port to listen on".to_owned());
    }
    Ok(addr)
}

pub fn parse_range(text: &str) -> Result<PortRange, String> {
    let (lo, hi) = text
        .split_once('-')
        .ok_or("expected LO-HI, such as 61000-65535")?;
    let port = |s: &str| {
        s.trim()
            .parse::<u16>()
            .map_err(|_| format!("{s:?} is not a port number (1-65535)"))
    };
    let range = PortRange {
        lo: port(lo)?,
        hi: port(hi)?,
    };
    if range.lo == 0 || range.lo > range.hi {
        return Err(format!("{text}: need 1 <= LO <= HI <= 65535"));
    }
    Ok(range)
}

impl Policy {
    /// The built-in policy: root may lease anything; everyone else the pool and the ports from
    /// `unprivileged_start` up, within the default limits.
    pub fn defaults(unprivileged_start: u16) -> Policy {
        let everyone = Rule {
            text: format!(
                "built-in: everyone may lease the pool and ports {unprivileged_start}-65535"
            ),
            who: Who::Everyone,
            ports: vec![
                Ports::Pool,
                Ports::Range(unprivileged_start.max(1), u16::MAX),
            ],
            transports: None,
            addresses: None,
        };
        Policy {
            source: None,
            socket_path: None,
            socket_mode: 0,
            socket_gid: None,
            pool: None,
            reserve_pool_in_kernel: false,
            limits: Limits::default(),
            metrics_listen: None,
            portserver: Some(DEFAULT_PORTSERVER.to_owned()),
            admin_gids: Vec::new(),
            rules: vec![everyone],
            services: BTreeMap::new(),
            reserved: Vec::new(),
        }
        .with_socket_defaults(None, None)
    }

    fn with_socket_defaults(mut self, mode: Option<u32>, gid: Option<u32>) -> Policy {
        let gid = gid.or_else(|| group_gid(DEFAULT_GROUP).ok());
        self.socket_gid = gid;
        self.socket_mode = mode.unwrap_or(if gid.is_some() { 0o660 } else { 0o666 });
        self
    }

    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Policy, PolicyError> {
        let file: File = toml::from_str(text).map_err(|source| PolicyError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |what: String| PolicyError::Invalid {
            path: path.to_owned(),
            what,
        };
        let mode = match &file.socket.mode {
            Some(text) => Some(
                u32::from_str_radix(text.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| {
                        invalid(format!(
                            "[socket] mode = {text:?}: expected octal such as \"0660\""
                        ))
                    })?,
            ),
            None => None,
        };
        let gid = match &file.socket.group {
            Some(name) => {
                Some(group_gid(name).map_err(|e| invalid(format!("[socket] group: {e}")))?)
            }
            None => None,
        };
        let pool = match &file.pool.range {
            Some(text) => {
                Some(parse_range(text).map_err(|e| invalid(format!("[pool] range: {e}")))?)
            }
            None => None,
        };
        let metrics_listen = match &file.metrics.listen {
            Some(text) => Some(
                parse_metrics_listen(text)
                    .map_err(|e| invalid(format!("[metrics] listen = {text:?}: {e}")))?,
            ),
            None => None,
        };
        let portserver = match (&file.portserver.enabled, &file.portserver.address) {
            (false, _) => None,
            (true, None) => Some(DEFAULT_PORTSERVER.to_owned()),
            (true, Some(text)) => Some(
                parse_portserver_address(text)
                    .map_err(|e| invalid(format!("[portserver] address = {text:?}: {e}")))?,
            ),
        };
        let admin_gids = file
            .admin
            .groups
            .iter()
            .map(|name| group_gid(name).map_err(|e| invalid(format!("[admin] groups: {e}"))))
            .collect::<Result<_, _>>()?;
        let mut rules = Vec::with_capacity(file.rules.len());
        for (index, rule) in file.rules.iter().enumerate() {
            let number = index + 1;
            let context = |e: String| invalid(format!("rule #{number}: {e}"));
            let who = parse_who(&rule.who).map_err(context)?;
            let ports = rule
                .ports
                .iter()
                .map(|p| parse_ports(p))
                .collect::<Result<_, _>>()
                .map_err(context)?;
            let transports = match &rule.transports {
                Some(list) => Some(
                    list.iter()
                        .map(|t| {
                            t.parse::<Transport>()
                                .map_err(|e| context(format!("transports: {t:?}: {e}")))
                        })
                        .collect::<Result<_, _>>()?,
                ),
                None => None,
            };
            rules.push(Rule {
                text: format!("rule #{number} (who = {:?})", rule.who),
                who,
                ports,
                transports,
                addresses: rule.addresses.clone(),
            });
        }
        let mut services = BTreeMap::new();
        for (name, service) in &file.services {
            let context = |e: String| invalid(format!("[services.{name}]: {e}"));
            if name.len() > MAX_SERVICE_NAME {
                return Err(context(format!(
                    "a service name is at most {MAX_SERVICE_NAME} bytes"
                )));
            }
            if service.sockets.is_empty() {
                return Err(context("sockets must name at least one socket".into()));
            }
            let sockets = service
                .sockets
                .iter()
                .map(|s| s.parse::<SocketSpec>().map_err(|e| context(e.to_string())))
                .collect::<Result<_, _>>()?;
            let who = match &service.who {
                Some(list) => Some(
                    list.iter()
                        .map(|w| parse_who(w))
                        .collect::<Result<_, _>>()
                        .map_err(context)?,
                ),
                None => None,
            };
            let sticky = std::time::Duration::from_secs(service.sticky_secs);
            services.insert(
                name.clone(),
                Service {
                    sockets,
                    who,
                    sticky,
                },
            );
        }
        let mut reserved = Vec::new();
        for (transport, ranges) in [
            (Transport::Tcp, &file.reserve.tcp),
            (Transport::Udp, &file.reserve.udp),
        ] {
            for text in ranges {
                match parse_ports(text) {
                    Ok(Ports::Range(lo, hi)) => reserved.extend((lo..=hi).map(|port| (transport, port))),
                    _ => return Err(invalid(format!("[reserve] {transport}: {text:?} is not a port or a range such as \"20000-20009\""))),
                }
            }
        }
        if reserved.len() > MAX_RESERVED {
            return Err(invalid(format!(
                "[reserve] names {} ports; at most {MAX_RESERVED}",
                reserved.len()
            )));
        }
        reserved.sort_unstable();
        reserved.dedup();
        Ok(Policy {
            source: Some(path.to_owned()),
            socket_path: file.socket.path,
            socket_mode: 0,
            socket_gid: None,
            pool,
            reserve_pool_in_kernel: file.pool.reserve_in_kernel,
            limits: file.limits,
            metrics_listen,
            portserver,
            admin_gids,
            rules,
            services,
            reserved,
        }
        .with_socket_defaults(mode, gid))
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Root, or a member of an admin group.
    pub fn is_admin(&self, who: &Identity) -> bool {
        who.uid == 0 || who.groups.iter().any(|g| self.admin_gids.contains(g))
    }

    /// Whether `who` may lease `spec` bound to `ip`; the refusal says which rules decided.
    pub fn permits(&self, who: &Identity, spec: &SocketSpec, ip: IpAddr) -> Result<(), String> {
        if who.uid == 0 {
            return Ok(());
        }
        let mut named = Vec::new();
        for rule in &self.rules {
            if !who.is(&rule.who) {
                continue;
            }
            let transport_ok = rule
                .transports
                .as_ref()
                .is_none_or(|t| t.contains(&spec.transport));
            let address_ok = rule.addresses.as_ref().is_none_or(|a| a.contains(&ip));
            let port_ok = rule.ports.iter().any(|p| match (p, spec.port) {
                (Ports::Pool, 0) => true,
                (Ports::Range(lo, hi), port) => port != 0 && (*lo..=*hi).contains(&port),
                (Ports::Pool, _) => false,
            });
            if transport_ok && address_ok && port_ok {
                return Ok(());
            }
            named.push(rule.text.as_str());
        }
        let asked = SpecAt { spec, ip };
        let source = self
            .source
            .as_ref()
            .map_or("the built-in policy".to_owned(), |p| {
                p.display().to_string()
            });
        Err(if named.is_empty() {
            format!(
                "no rule allows uid {} to lease {asked} (rules: {}) in {source}; the uid's groups: {:?}",
                who.uid,
                self.rules.len(),
                who.groups
            )
        } else {
            format!(
                "{} of {source} do not cover {asked} for uid {}",
                named.join(", "),
                who.uid
            )
        })
    }

    /// Whether `who` may lease the service by name: `Ok(true)` when the service's own `who`
    /// list admits it (its sockets need no rule), `Ok(false)` when the rules decide.
    pub fn may_use_service(
        &self,
        who: &Identity,
        name: &str,
        service: &Service,
    ) -> Result<bool, String> {
        match &service.who {
            None => Ok(who.uid == 0),
            Some(list) if who.uid == 0 || list.iter().any(|w| who.is(w)) => Ok(true),
            Some(_) => Err(format!(
                "the service {name:?} is not open to uid {}",
                who.uid
            )),
        }
    }
}

struct SpecAt<'a> {
    spec: &'a SocketSpec,
    ip: IpAddr,
}

impl fmt::Display for SpecAt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spec = SocketSpec {
            addr: Some(self.ip),
            ..*self.spec
        };
        write!(f, "{spec}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn user(uid: u32) -> Identity {
        Identity {
            uid,
            groups: vec![uid],
        }
    }

    fn spec(text: &str) -> SocketSpec {
        text.parse().unwrap()
    }

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn the_built_in_policy_allows_the_pool_and_unprivileged_ports() {
        let policy = Policy::defaults(1024);
        assert!(policy
            .permits(&user(1000), &spec("tcp:127.0.0.1:0"), LO)
            .is_ok());
        assert!(policy
            .permits(&user(1000), &spec("udp:127.0.0.1:5353"), LO)
            .is_ok());
        let err = policy
            .permits(&user(1000), &spec("tcp:127.0.0.1:80"), LO)
            .unwrap_err();
        assert!(
            err.contains("built-in") && err.contains("tcp:127.0.0.1:80"),
            "{err}"
        );
        assert!(policy
            .permits(&user(0), &spec("tcp:127.0.0.1:80"), LO)
            .is_ok());
    }

    #[test]
    fn rules_decide_and_the_refusal_names_them() {
        let text = r#"
            [[rule]]
            who = "uid:65534"
            ports = ["80", "8000-8099"]
            transports = ["tcp"]
            addresses = ["127.0.0.1"]
        "#;
        let policy = Policy::parse(Path::new("test.toml"), text).unwrap();
        assert!(policy
            .permits(&user(65534), &spec("tcp:127.0.0.1:80"), LO)
            .is_ok());
        assert!(policy
            .permits(&user(65534), &spec("tcp:127.0.0.1:8050"), LO)
            .is_ok());
        let err = policy
            .permits(&user(65534), &spec("udp:127.0.0.1:80"), LO)
            .unwrap_err();
        assert!(err.contains("rule #1 (who = \"uid:65534\")"), "{err}");
        let err = policy
            .permits(&user(65534), &spec("tcp:127.0.0.1:0"), LO)
            .unwrap_err();
        assert!(err.contains("rule #1"), "the pool is not granted: {err}");
        let err = policy
            .permits(&user(65533), &spec("tcp:127.0.0.1:80"), LO)
            .unwrap_err();
        assert!(
            err.contains(
                "no rule allows uid 65533 to lease tcp:127.0.0.1:80 (rules: 1) in test.toml"
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_their_line() {
        let text = "[limits]\nleases_per_uid = 3\ncolour = \"red\"\n";
        let err = Policy::parse(Path::new("p.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour") && err.contains("line 3"), "{err}");
        let err = Policy::parse(
            Path::new("p.toml"),
            "[[rule]]\nwho = \"nobody-at-all\"\nports = [\"80\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("rule #1") && err.contains("nobody-at-all"),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/portbroker.toml");
        let policy = Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(policy.rule_count() >= 1);
        assert!(policy.services.contains_key("web"));
        assert_eq!(
            policy.limits.sockets_per_uid,
            Limits::default().sockets_per_uid,
            "the example shows the default"
        );
    }

    #[test]
    fn the_portserver_is_on_by_default_and_moves_or_turns_off() {
        let path = Path::new("/etc/portbroker.toml");
        let at = |text: &str| Policy::parse(path, text).map(|p| p.portserver);
        assert_eq!(at("").unwrap().as_deref(), Some("@portserver"));
        assert_eq!(
            Policy::defaults(1024).portserver.as_deref(),
            Some("@portserver")
        );
        assert_eq!(
            at("[portserver]\naddress = \"@farm\"\n")
                .unwrap()
                .as_deref(),
            Some("@farm")
        );
        assert_eq!(
            at("[portserver]\naddress = \"/run/ps.sock\"\n")
                .unwrap()
                .as_deref(),
            Some("/run/ps.sock")
        );
        assert_eq!(at("[portserver]\nenabled = false\n").unwrap(), None);
        for bad in ["@", "relative", ""] {
            let err = at(&format!("[portserver]\naddress = {bad:?}\n")).unwrap_err();
            assert!(
                err.to_string().contains("[portserver] address"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_metrics_endpoint_listens_on_loopback_only() {
        let path = Path::new("test.toml");
        let policy = Policy::parse(path, "[metrics]\nlisten = \"127.0.0.1:9464\"\n").unwrap();
        assert_eq!(
            policy.metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(Policy::parse(path, "").unwrap().metrics_listen, None);
        for bad in [
            "0.0.0.0:9464",
            "192.0.2.1:9464",
            "[::]:9464",
            "127.0.0.1:0",
            "localhost",
        ] {
            let text = format!("[metrics]\nlisten = {bad:?}\n");
            let err = Policy::parse(path, &text).unwrap_err().to_string();
            assert!(err.contains("[metrics] listen"), "{bad}: {err}");
        }
        let err = Policy::parse(path, "[metrics]\nport = 9464\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("port"), "{err}");
    }
}
