//! `portctl`: lease ports from `portbrokerd`, run programs with them, inspect the broker.
#![deny(unsafe_code)]

mod assets;
mod cli;
mod exit;
#[allow(unsafe_code)]
mod localtime;
mod log;
mod output;
#[allow(unsafe_code)]
mod relay;
mod run;
#[allow(unsafe_code)]
mod spawn;
mod talk;
mod users;
mod watch;
mod who;
mod wrap;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use portbroker::LeaseId;

use crate::cli::{Cli, Command};
use crate::exit::UsageError;
use crate::talk::{connect, warn};

fn main() -> ExitCode {
    if let Some(dir) = assets::requested() {
        return assets::generate_or_report(<Cli as clap::CommandFactory>::command(), &dir);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version are not errors; clap prints those to stdout.
            let code = if err.use_stderr() { exit::USAGE } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            warn(&exit::describe(&err));
            ExitCode::from(exit::code_for(&err))
        }
    }
}

fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Run(args) => run::run(cli.socket, args),
        Command::List {
            json,
            port,
            user,
            proto,
        } => {
            let mut users = users::Users::default();
            let filter = output::ListFilter::new(port, user.as_deref(), proto.as_deref())?;
            let leases = filter.apply(connect(cli.socket)?.list()?);
            output::print_stdout(&if json {
                output::leases_json(&leases, &mut users)?
            } else {
                output::leases_table(
                    &leases,
                    output::unix_now(),
                    &mut users,
                    output::colour_wanted(),
                )
            })?;
            Ok(0)
        }
        Command::Who {
            target,
            proto,
            json,
        } => {
            let transport = if proto == "udp" {
                portbroker::Transport::Udp
            } else {
                portbroker::Transport::Tcp
            };
            let target = who::Target::parse(&target, transport)?;
            let leases = connect(cli.socket)?.list()?;
            let kernel = who::kernel_sockets(&target);
            let inodes: Vec<u64> = kernel.iter().map(|s| s.inode).collect();
            let processes = who::processes_holding(&inodes);
            let mut users = users::Users::default();
            let found = who::find(
                &target,
                &leases,
                &kernel,
                &processes,
                who::process_name,
                &mut users,
            );
            output::print_stdout(&if json {
                who::json(&target, &found)?
            } else {
                who::text(&target, &found)
            })?;
            Ok(if found.is_empty() { exit::NOBODY } else { 0 })
        }
        Command::Status { json } => {
            let broker = connect(cli.socket)?;
            let status = broker.status()?;
            output::print_stdout(&if json {
                output::status_json(&status)?
            } else {
                output::status_text(&status, broker.socket_path())
            })?;
            Ok(0)
        }
        Command::Release { id } => {
            connect(cli.socket)?.release(LeaseId(id))?;
            Ok(0)
        }
        Command::Renew { id, seconds, json } => {
            if !(seconds.is_finite() && (0.0..=4_000_000.0).contains(&seconds)) {
                return Err(anyhow::Error::new(UsageError(format!(
                    "renew: {seconds} is not a number of seconds from 0 to 4000000"
                ))));
            }
            let expires =
                connect(cli.socket)?.renew(LeaseId(id), Duration::from_secs_f64(seconds))?;
            output::print_stdout(&if json {
                output::renewed_json(id, expires)?
            } else {
                output::renewed_text(id, expires, std::time::SystemTime::now())
            })?;
            Ok(0)
        }
        Command::Revoke { id } => {
            connect(cli.socket)?.revoke(LeaseId(id))?;
            Ok(0)
        }
        Command::Log { json, count } => {
            let entries = connect(cli.socket)?.history(count)?;
            let mut users = users::Users::default();
            output::print_stdout(&if json {
                log::json_lines(&entries, &mut users)?
            } else {
                log::text(&entries, &mut users)
            })?;
            Ok(0)
        }
        Command::Watch { json } => watch::watch(cli.socket, json),
        Command::Wrap(args) => wrap::wrap(cli.socket, args),
        Command::Reload => {
            let (rules, services) = connect(cli.socket)?.reload()?;
            output::print_stdout(&output::reloaded_text(rules, services))?;
            Ok(0)
        }
    }
}
