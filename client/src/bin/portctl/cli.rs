//! The command line.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Lease ports from portbrokerd and hand the bound sockets to programs.
#[derive(Debug, Parser)]
#[command(name = "portctl", version)]
pub struct Cli {
    /// The broker's socket [default: $PORTBROKER_SOCKET; else, for a user other than root,
    /// $XDG_RUNTIME_DIR/portbroker/portbroker.sock if a broker answers there; else
    /// /run/portbroker/portbroker.sock]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Lease sockets and run CMD with them as fds 3, 4, ... (systemd's LISTEN_FDS convention);
    /// the lease lasts as long as CMD (as long as portctl with --restart-on-exit or
    /// --restart-on-hup)
    Run(RunArgs),
    /// List the live leases, one row per socket
    ///
    /// STATE says what keeps a lease: live (its holder's connection), tied (its holder
    /// process), lingering (its holder is gone but a copy of a socket is still open), or kept
    /// for some time (the ports of a sticky service whose server ended). A lease with a time
    /// limit shows when it expires.
    List {
        /// Print a JSON array with one object per socket
        #[arg(long)]
        json: bool,
        /// Only sockets on this port
        #[arg(long, value_name = "N")]
        port: Option<u16>,
        /// Only leases of this user (a name or a uid)
        #[arg(long, value_name = "NAME|UID")]
        user: Option<String>,
        /// Only sockets of this transport
        #[arg(long, value_name = "PROTO", value_parser = ["tcp", "udp"])]
        proto: Option<String>,
    },
    /// Say who holds a port: a lease, a process outside the broker, or nobody (exit status 1)
    ///
    /// What no lease holds is looked up in the kernel's socket tables and /proc/*/fd, with
    /// your own rights: an ordinary user sees every user's sockets but only its own processes.
    Who {
        /// PORT (on any address), or ADDR:PORT (IPv6 addresses in brackets)
        #[arg(value_name = "[ADDR:]PORT")]
        target: String,
        /// The transport
        #[arg(long, value_name = "PROTO", value_parser = ["tcp", "udp"], default_value = "tcp")]
        proto: String,
        /// Print a JSON object
        #[arg(long)]
        json: bool,
    },
    /// Show the broker's state
    Status {
        /// Print a JSON object
        #[arg(long)]
        json: bool,
    },
    /// Release a lease by id (its holder's user, root or the policy's admin groups)
    Release {
        /// The lease id, as `portctl list` shows it
        id: u64,
    },
    /// Give a lease a time limit from now, or extend it (its holder's user or an administrator)
    ///
    /// Unless renewed again, the broker ends the lease when the time is up. Prints the new
    /// deadline in local time and the time left.
    Renew {
        /// The lease id, as `portctl list` shows it
        id: u64,
        /// Seconds from now (fractions allowed); 0 removes the limit
        seconds: f64,
        /// Print a JSON object with the deadline in milliseconds since the Unix epoch
        #[arg(long)]
        json: bool,
    },
    /// Take a lease away from its holder (root or the policy's admin groups only)
    ///
    /// The lease's listening sockets stop accepting: the holder's pending accept() fails and
    /// its library reports the lease as revoked.
    Revoke {
        /// The lease id, as `portctl list` shows it
        id: u64,
    },
    /// Make the broker re-read its policy file (root or the policy's admin groups only)
    ///
    /// Prints the number of rules and services loaded. A file that does not load leaves the
    /// policy in force as it was; the error names the file's line.
    Reload,
    /// Print the last events of leases from the broker's history, oldest first
    ///
    /// Grants, ties to a process, handovers, and ends with why each lease ended (released,
    /// connection closed, process exited, expired, revoked, ...), of every user, with the
    /// holder and the sockets. The broker keeps its history in its journal, a bounded number of
    /// files; a broker run with --no-journal has none.
    Log {
        /// Print one JSON object per event, one per line
        #[arg(long)]
        json: bool,
        /// How many of the last events, 1 to 10000
        #[arg(
            short = 'n',
            long = "count",
            value_name = "N",
            default_value_t = 100,
            value_parser = clap::value_parser!(u32).range(1..=10_000)
        )]
        count: u32,
    },
    /// Print the broker's events as they happen, one line each, until interrupted
    ///
    /// Grants, refusals, releases, expiries, revokes, leases starting to linger, and reserved
    /// ports taken back, of every user, as `list` shows them. A line saying how many events
    /// were missed stands where portctl read too slowly to get them all.
    Watch {
        /// Print one JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Run CMD with the bind shim preloaded: its own bind() of a TCP or UDP port leases that
    /// port from the broker, so an unmodified server gets a leased socket
    ///
    /// CMD runs in portctl's place (exec), with LD_PRELOAD naming the shim and
    /// PORTBROKER_SOCKET the broker that answered. Each bind() of CMD and its children then
    /// asks the broker for exactly that address and port (port 0: any port of the pool); a
    /// refused bind() fails with EADDRINUSE (EACCES for the policy) and one line on stderr
    /// naming the holder. The shim is $PORTBROKER_PRELOAD, else libportbroker_preload.so
    /// beside portctl, else ../lib/portbroker/libportbroker_preload.so from portctl's
    /// directory.
    Wrap(WrapArgs),
}

#[derive(Debug, Args)]
#[command(after_help = RUN_AFTER_HELP)]
pub struct RunArgs {
    /// Do not print the leased sockets before starting CMD
    #[arg(short, long)]
    pub quiet: bool,

    /// When CMD exits, for whatever reason, start it again on the same sockets (after a backoff
    /// of 100 ms doubling up to 5 s, reset once it ran 10 s); the lease is kept meanwhile.
    /// SIGTERM or SIGINT to portctl stops CMD for good
    #[arg(long)]
    pub restart_on_exit: bool,

    /// Give up after N restarts and exit with CMD's last status [default: no limit]
    #[arg(long, value_name = "N", requires = "restart_on_exit")]
    pub max_restarts: Option<u32>,

    /// On SIGHUP to portctl, start a new CMD on the same sockets and, once it is ready, SIGTERM
    /// the old one: a graceful restart that refuses no connection. CMD gets NOTIFY_SOCKET and
    /// is ready when it sends READY=1 there (sd_notify), or after --ready-timeout
    #[arg(long)]
    pub restart_on_hup: bool,

    /// Seconds to wait for a new CMD's READY=1 before taking it as ready
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 2.0,
        requires = "restart_on_hup",
        value_parser = parse_seconds
    )]
    pub ready_timeout: f64,

    // `help` rather than a doc comment: rustdoc would read the brackets as links.
    #[arg(
        required = true,
        value_name = "SPEC",
        help = "A socket to lease: [NAME=]PROTO:[ADDR:]PORT, such as tcp:8080, \
                http=tcp:127.0.0.1:0 or udp:[::1]:5353; port 0 takes any free port from the \
                broker's pool. Or, alone, the name of a service of the broker's policy (no ':'), \
                such as web, to lease that service's sockets"
    )]
    pub specs: Vec<String>,

    /// The command to run, and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
#[command(after_help = WRAP_AFTER_HELP)]
pub struct WrapArgs {
    /// The command to run, and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// The examples of `wrap --help`.
const WRAP_AFTER_HELP: &str = "\
Examples:

  portctl wrap -- redis-server --port 6379
      redis binds 6379 through the broker; a second one is refused at bind() with the holder
      named, and the lease ends when redis exits
  portctl wrap -- python3 -m http.server 0 --bind 127.0.0.1
      port 0 takes any free port of the broker's pool; the server prints the one it got
  portctl list
      shows each wrapped server's leases, held by the server itself (STATE tied)

With no broker reachable, wrap refuses to start CMD (exit status 69), unless \
PORTBROKER_SHIM_FALLBACK=1 is set: then CMD's binds go to the kernel unleased, as without the \
shim. The shim cannot reach programs that do not bind through libc's bind() (statically \
linked ones, Go programs) nor setuid programs, for which the loader ignores LD_PRELOAD.";

fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && (0.0..=86_400.0).contains(&seconds) => Ok(seconds),
        _ => Err(format!(
            "{text:?} is not a number of seconds from 0 to 86400"
        )),
    }
}

/// The examples of `run --help`. CMD must take its socket at fd 3 rather than bind a port of its
/// own (as `python3 -m http.server` would, leaving the lease unused), so every example runs
/// SERVE, an HTTP server that does. One line of Python, so that it survives being pasted from
/// the indented help text.
const RUN_AFTER_HELP: &str = "\
Examples, with SERVE an HTTP server that serves on the socket at fd 3 instead of binding one:

  SERVE='import socket, http.server as h; s = h.HTTPServer(None, h.SimpleHTTPRequestHandler, bind_and_activate=False); s.socket = socket.socket(fileno=3); s.serve_forever()'

  portctl run tcp:8080 -- python3 -c \"$SERVE\"
      HTTP on port 8080 of the default address
  portctl run http=tcp:127.0.0.1:0 -- python3 -c \"$SERVE\"
      on any free port of the broker's pool, on loopback, in a socket named http; portctl
      prints the port it got
  portctl run web -- python3 -c \"$SERVE\"
      on the sockets of the service web of the broker's policy (its first one at fd 3)

CMD gets LISTEN_FDS=n, LISTEN_PID=<its pid> and LISTEN_FDNAMES=name1:name2; a socket's \
default name is tcp-PORT or udp-PORT, and every socket of a service is named after the \
service.";

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("portctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_specs_then_the_command_after_the_separator() {
        let cli = parse(&[
            "--socket", "/s", "run", "-q", "tcp:80", "x=udp:0", "--", "prog", "--flag", "-x",
        ])
        .unwrap();
        assert_eq!(cli.socket, Some(PathBuf::from("/s")));
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert!(args.quiet);
        assert_eq!(args.specs, ["tcp:80", "x=udp:0"]);
        assert_eq!(args.command, ["prog", "--flag", "-x"]);
    }

    #[test]
    fn run_takes_restart_flags() {
        let cli = parse(&[
            "run",
            "--restart-on-exit",
            "--max-restarts",
            "3",
            "--restart-on-hup",
            "--ready-timeout",
            "0.5",
            "tcp:80",
            "--",
            "prog",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert!(args.restart_on_exit && args.restart_on_hup);
        assert_eq!(args.max_restarts, Some(3));
        assert_eq!(args.ready_timeout, 0.5);
        let Command::Run(args) = parse(&["run", "tcp:80", "--", "prog"]).unwrap().command else {
            panic!("not run")
        };
        assert!(!args.restart_on_exit && !args.restart_on_hup);
        assert_eq!(args.ready_timeout, 2.0);
        assert!(parse(&["run", "--max-restarts", "3", "tcp:80", "--", "prog"]).is_err());
        assert!(parse(&["run", "--ready-timeout", "1", "tcp:80", "--", "prog"]).is_err());
        assert!(parse(&[
            "run",
            "--restart-on-hup",
            "--ready-timeout",
            "-1",
            "tcp:80",
            "--",
            "p"
        ])
        .is_err());
    }

    #[test]
    fn run_needs_a_spec_and_a_command() {
        assert!(parse(&["run", "tcp:80"]).is_err());
        assert!(parse(&["run", "--", "prog"]).is_err());
    }

    #[test]
    fn run_takes_a_service_name_like_a_spec() {
        let cli = parse(&["run", "web", "--", "prog"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.specs, ["web"]);
        assert_eq!(args.command, ["prog"]);
    }

    #[test]
    fn renew_takes_a_lease_id_and_seconds() {
        assert!(matches!(
            parse(&["renew", "7", "1.5"]).unwrap().command,
            Command::Renew { id: 7, seconds, json: false } if seconds == 1.5
        ));
        assert!(parse(&["renew", "7"]).is_err());
    }

    #[test]
    fn revoke_takes_a_lease_id() {
        assert!(matches!(
            parse(&["revoke", "7"]).unwrap().command,
            Command::Revoke { id: 7 }
        ));
        assert!(parse(&["revoke"]).is_err());
        assert!(parse(&["revoke", "seven"]).is_err());
    }

    #[test]
    fn reload_takes_no_argument() {
        assert!(matches!(
            parse(&["reload"]).unwrap().command,
            Command::Reload
        ));
        let cli = parse(&["reload", "--socket", "/s"]).unwrap();
        assert_eq!(cli.socket, Some(PathBuf::from("/s")));
        assert!(parse(&["reload", "now"]).is_err());
    }

    #[test]
    fn socket_may_follow_the_subcommand() {
        let cli = parse(&["list", "--json", "--socket", "/s"]).unwrap();
        assert_eq!(cli.socket, Some(PathBuf::from("/s")));
        assert!(matches!(cli.command, Command::List { json: true, .. }));
    }

    #[test]
    fn list_takes_filters_and_who_a_port() {
        let cli = parse(&["list", "--port", "80", "--user", "alice", "--proto", "udp"]).unwrap();
        let Command::List {
            json,
            port,
            user,
            proto,
        } = cli.command
        else {
            panic!("not list")
        };
        assert!(!json);
        assert_eq!(port, Some(80));
        assert_eq!(user.as_deref(), Some("alice"));
        assert_eq!(proto.as_deref(), Some("udp"));
        assert!(parse(&["list", "--proto", "sctp"]).is_err());
        assert!(parse(&["list", "--port", "http"]).is_err());
        let cli = parse(&["who", "127.0.0.1:80", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Who { ref target, ref proto, json: true } if target == "127.0.0.1:80" && proto == "tcp"
        ));
        assert!(parse(&["who", "53", "--proto", "udp"]).is_ok());
        assert!(parse(&["who"]).is_err());
    }

    #[test]
    fn log_takes_a_count_and_json() {
        assert!(matches!(
            parse(&["log"]).unwrap().command,
            Command::Log {
                json: false,
                count: 100
            }
        ));
        assert!(matches!(
            parse(&["log", "-n", "5", "--json"]).unwrap().command,
            Command::Log {
                json: true,
                count: 5
            }
        ));
        assert!(matches!(
            parse(&["log", "--count", "10000"]).unwrap().command,
            Command::Log { count: 10_000, .. }
        ));
        for bad in ["0", "10001", "-1", "many"] {
            assert!(parse(&["log", "-n", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn wrap_takes_the_command_after_the_separator() {
        let cli = parse(&[
            "wrap",
            "--socket",
            "/s",
            "--",
            "redis-server",
            "--port",
            "7",
        ])
        .unwrap();
        assert_eq!(cli.socket, Some(PathBuf::from("/s")));
        let Command::Wrap(args) = cli.command else {
            panic!("not wrap")
        };
        assert_eq!(args.command, ["redis-server", "--port", "7"]);
        assert!(parse(&["wrap"]).is_err());
        assert!(parse(&["wrap", "redis-server"]).is_err());
    }

    #[test]
    fn help_and_version_are_not_usage_errors() {
        for args in [&["--help"][..], &["--version"], &["run", "--help"]] {
            let err = parse(args).unwrap_err();
            assert!(!err.use_stderr(), "{args:?}");
        }
        assert!(parse(&["frobnicate"]).unwrap_err().use_stderr());
        assert!(parse(&[]).unwrap_err().use_stderr());
    }
}
