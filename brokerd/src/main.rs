//! portbrokerd: owns the authoritative table of port leases and hands out bound sockets.
#![forbid(unsafe_code)]

// portctl's generator of man pages and completions, the one file both binaries build, so that
// the two cannot drift apart (brokerd does not depend on the client crate).
#[path = "../../client/src/bin/portctl/assets.rs"]
mod assets;
mod bind;
mod budget;
mod conn;
mod connections;
mod grant;
mod handlers;
mod journal;
mod lease;
mod log_buffer;
mod metrics;
mod metrics_http;
mod peer;
mod pidfd;
mod policy;
mod pool;
mod portserver;
mod procfs;
mod refusals;
mod server;
mod side_conns;
mod socket_copies;
mod socket_file;
mod state;
mod state_dir;
mod summary;
mod systemd;
mod table;
mod throttle;
mod watchers;
mod watches;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use portbroker_proto::PortRange;
use tracing_subscriber::EnvFilter;

use crate::server::{Config, Server};

/// The portbroker daemon: grants port leases and passes the bound sockets to their holders.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The Unix socket to listen on [default: $PORTBROKER_SOCKET, else
    /// /run/portbroker/portbroker.sock for root, else $XDG_RUNTIME_DIR/portbroker/portbroker.sock]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The dynamic pool that port 0 draws from [default: above the kernel's ephemeral range,
    /// or the 10,000 ports below it where too few ports lie above]
    #[arg(long, value_name = "LO-HI", value_parser = parse_range)]
    pool: Option<PortRange>,
    /// The policy file [default: $PORTBROKER_CONFIG, else /etc/portbroker/portbroker.toml
    /// when it exists, else the built-in policy]
    #[arg(long, value_name = "FILE", conflicts_with = "no_config")]
    config: Option<PathBuf>,
    /// Run on the built-in policy, whatever files exist.
    #[arg(long)]
    no_config: bool,
    /// Where the lease journal lives, so that leases survive a restart [default: the socket's
    /// directory]. Like the socket's directory, it must belong to the daemon's user and be
    /// writable by no one else; it is created (mode 0755) if missing.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Keep no journal: a restart forgets every lease.
    #[arg(long, conflicts_with = "state_dir")]
    no_journal: bool,
    /// On SIGTERM or SIGINT, end every lease instead of keeping them for the next start.
    #[arg(long)]
    release_on_exit: bool,
    /// Log at debug level (RUST_LOG overrides).
    #[arg(short, long)]
    verbose: bool,
}

use crate::policy::{parse_range, Policy};

/// The policy the daemon starts with, from the first of: --no-config, --config,
/// $PORTBROKER_CONFIG, the default file if it exists, the built-in policy.
fn initial_policy(args: &Args, unprivileged_start: u16) -> Result<Policy> {
    let named = args.config.clone().or_else(|| {
        std::env::var_os("PORTBROKER_CONFIG")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    });
    let path = match named {
        _ if args.no_config => None,
        Some(path) => Some(path),
        None => Some(PathBuf::from(policy::DEFAULT_CONFIG)).filter(|p| p.exists()),
    };
    match path {
        Some(path) => Ok(Policy::load(&path)?),
        None => Ok(Policy::defaults(unprivileged_start)),
    }
}

fn read_sysctl(path: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))
}

/// The kernel's ephemeral port range, from which outgoing connections take their source ports.
fn ephemeral_range() -> Result<PortRange> {
    let text = read_sysctl("/proc/sys/net/ipv4/ip_local_port_range")?;
    let mut fields = text.split_whitespace().map(str::parse::<u16>);
    match (fields.next(), fields.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => Ok(PortRange { lo, hi }),
        _ => bail!("cannot parse ip_local_port_range: {text:?}"),
    }
}

/// A pool outside the ephemeral range, so that no outgoing connection can be sitting on a pool
/// port: the ports above it if at least 1,000 are left there, else the 10,000 ports below it.
fn default_pool(ephemeral: PortRange, unprivileged_start: u16) -> Result<PortRange> {
    if u16::MAX - ephemeral.hi >= 1000 {
        return Ok(PortRange {
            lo: ephemeral.hi + 1,
            hi: u16::MAX,
        });
    }
    let hi = ephemeral.lo.saturating_sub(1);
    let lo = hi.saturating_sub(9_999).max(unprivileged_start).max(1);
    if lo >= hi {
        bail!("no room for a pool outside the ephemeral range {ephemeral}; pass --pool LO-HI");
    }
    Ok(PortRange { lo, hi })
}

const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Adds the pool to the kernel's reserved ports of this network namespace (keeping what is
/// there), so that no outgoing connection or bind(0) takes a pool port as its own.
fn reserve_in_kernel(pool: PortRange) -> Result<()> {
    let current = read_sysctl(RESERVED_PORTS)?;
    let ours = format!("{}-{}", pool.lo, pool.hi);
    let mut entries: Vec<&str> = current
        .trim()
        .split(',')
        .filter(|e| !e.is_empty())
        .collect();
    if !entries.contains(&ours.as_str()) {
        entries.push(&ours);
    }
    std::fs::write(RESERVED_PORTS, entries.join(","))
        .with_context(|| format!("cannot add the pool {pool} to {RESERVED_PORTS}"))?;
    tracing::info!("the kernel reserves the pool {pool} ({RESERVED_PORTS})");
    Ok(())
}

/// Every connection is an fd: take the hard limit rather than the usual soft 1,024.
fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(err) => {
                tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {err}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

fn run(args: Args) -> Result<()> {
    // First, before anything could start a thread or a child: what systemd passed and how to
    // talk to it, taken out of the environment.
    let passed = systemd::take_listen_fds()?;
    let notify = systemd::Notifier::from_env();
    let unprivileged_port_start = read_sysctl("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    let policy = initial_policy(&args, unprivileged_port_start)?;
    match &policy.source {
        Some(path) => tracing::info!("policy: {} ({} rules)", path.display(), policy.rule_count()),
        None => tracing::info!("policy: built-in (no policy file)"),
    }
    if let Err(err) = pidfd::can_copy_fds() {
        tracing::warn!(
            "cannot fetch sockets from other processes (pidfd_getfd: {err}): a revoke shuts \
             nothing down, a handover finds no socket, and after a restart leases come back \
             lingering instead of tied to their holders. Under systemd, SystemCallFilter= must \
             allow pidfd_getfd (Linux 5.6 or later)"
        );
    }
    let socket = match args.socket.or_else(|| policy.socket_path.clone()) {
        Some(path) => path,
        None => portbroker_proto::default_socket_path()?,
    };
    let socket_dir = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(PathBuf::from);
    let journal = match (args.no_journal, args.state_dir, &socket_dir) {
        (true, _, _) => None,
        (false, Some(dir), _) => Some(dir),
        (false, None, Some(dir)) => Some(dir.clone()),
        (false, None, None) => None,
    };
    // Before anything is created, bound or reserved: a root daemon keeps its files only where
    // no other user can plant links or swap them (see state_dir).
    // Under socket activation the socket's directory is systemd's (RuntimeDirectory=), and
    // the daemon creates nothing there; a journal kept in it is still checked.
    let activated = passed.listener.is_some();
    let socket_dir_or_cwd = socket_dir.clone().unwrap_or_else(|| PathBuf::from("."));
    if !activated {
        state_dir::prepare(&socket_dir_or_cwd, "socket directory", "--socket")?;
    }
    if let Some(dir) = journal
        .as_ref()
        .filter(|&dir| activated || *dir != socket_dir_or_cwd)
    {
        state_dir::prepare(dir, "state directory", "--state-dir")?;
    }
    let ephemeral = ephemeral_range()?;
    let pool = match args.pool.or(policy.pool) {
        Some(pool) => {
            if pool.lo <= ephemeral.hi && ephemeral.lo <= pool.hi {
                tracing::warn!(
                    "the pool {pool} overlaps the ephemeral range {ephemeral}: outgoing connections \
                     may hold pool ports, and such ports will be skipped"
                );
            }
            pool
        }
        None => default_pool(ephemeral, unprivileged_port_start)?,
    };
    if policy.reserve_pool_in_kernel {
        reserve_in_kernel(pool)?;
    }
    let fd_limit = raise_fd_limit();
    let default_addr = if bind::ipv6_available() {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    let config = Config {
        socket,
        pool,
        default_addr,
        // Each connection is an fd; a quarter of the limit is kept for granted sockets that
        // clients have not read yet, and some for the daemon's own fds.
        max_connections: usize::try_from((fd_limit - fd_limit / 4).saturating_sub(64))
            .unwrap_or(usize::MAX)
            .clamp(16, 65_536),
        max_queued_fds: usize::try_from(fd_limit / 4).unwrap_or(usize::MAX).max(64),
        journal: journal.map(|dir| dir.join("leases.journal")),
        release_on_exit: args.release_on_exit,
        policy,
    };
    Server::new(config, passed, notify)?.run()
}

fn main() -> ExitCode {
    if let Some(dir) = assets::requested() {
        return assets::generate_or_report(<Args as clap::CommandFactory>::command(), &dir);
    }
    let args = Args::parse();
    let default_level = if args.verbose { "debug" } else { "info" };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let format = tracing_subscriber::fmt()
        .with_writer(log_buffer::BufferedStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_env_filter(filter);
    // Under systemd the journal stamps each line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        format.without_time().init();
    } else {
        format.init();
    }
    // The lines logged before a panic belong before its message.
    let report_panic = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        log_buffer::flush();
        report_panic(info);
    }));
    let result = run(args);
    log_buffer::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("portbrokerd: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_ranges_parse_and_reject_nonsense() {
        assert_eq!(
            parse_range("61000-65535").unwrap(),
            PortRange {
                lo: 61000,
                hi: 65535
            }
        );
        for bad in ["61000", "0-10", "10-5", "1-70000", "a-b"] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
    }

    fn range(lo: u16, hi: u16) -> PortRange {
        PortRange { lo, hi }
    }

    #[test]
    fn default_pool_avoids_the_ephemeral_range() {
        let debian = range(32768, 60999);
        assert_eq!(default_pool(debian, 1024).unwrap(), range(61000, 65535));
        let wide = range(32768, 65000);
        assert_eq!(default_pool(wide, 1024).unwrap(), range(22768, 32767));
        assert!(default_pool(range(1024, 65535), 1024).is_err());
    }
}
