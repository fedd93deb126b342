//! portbroker's benchmark: the lease path against its physical limit and against Google's
//! portserver, measured in one run and reported as ratios to baselines of that same run.
//!
//! `cargo run --release -p portbroker-bench` (see the README's Performance section).

mod floor;
mod harness;
mod minimal;
mod portserver;
mod report;
mod scenarios;
mod statistics;
mod targets;
mod worker;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::harness::{raise_fd_limit, say, Bench};
use crate::report::Report;

#[derive(Debug, Parser)]
#[command(about = "Benchmark portbrokerd against its baselines and Google's portserver")]
struct Args {
    #[command(subcommand)]
    role: Option<Role>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 1.5)]
    seconds: f64,
    /// Repetitions of each measurement; the report gives the median.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// A tiny run for CI: one and two clients, a 1,000-port pool to fill, 400 leases to list and
    /// recover. With `--seconds 0.1 --reps 1`, as CI runs it, every scenario once, briefly. Its
    /// numbers mean nothing.
    #[arg(long)]
    smoke: bool,
    /// Leave out Google's portserver (it needs python3 and PyPI).
    #[arg(long)]
    skip_portserver: bool,
    /// Where report.md and report.json go [default: target/bench].
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// (internal) A client process.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        kind: String,
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        #[arg(long, default_value_t = 5_000_000)]
        max_ops: u64,
        #[arg(long, default_value_t = 0)]
        count: usize,
    },
    /// (internal) Baseline (c), the kernel's floor: raw system calls, 4-byte messages.
    #[command(hide = true)]
    FloorServer {
        #[arg(long)]
        socket: PathBuf,
    },
    /// (internal) Baseline (b), the minimal fd-passing server.
    #[command(hide = true)]
    MinimalServer {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        lo: u16,
        #[arg(long)]
        hi: u16,
    },
}

/// The whole benchmark: every scenario, then the report.
fn run_bench(args: Args) -> Result<()> {
    raise_fd_limit();
    let mut bench = Bench::new(args.seconds, args.reps)?;
    let out_dir = args.out.unwrap_or_else(|| PathBuf::from("target/bench"));
    let machine = report::machine();
    say(&machine);
    let bare_bind_ns = scenarios::bare_bind(&bench)?;
    let portserver = if args.skip_portserver {
        None
    } else {
        say("installing portpicker into a throwaway venv");
        Some(portserver::install(bench.dir())?)
    };
    let clients = scenarios::lease_round_trips(&mut bench, portserver.as_ref(), args.smoke)?;
    let fill = scenarios::pool_fill(&mut bench, args.smoke)?;
    let scale = scenarios::scale(&mut bench, args.smoke)?;
    let report = Report {
        machine,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        bare_bind_ns,
        clients,
        fill,
        scale,
    };
    report::publish(&report, args.smoke, &out_dir)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.role {
        Some(Role::Worker {
            kind,
            target,
            seconds,
            max_ops,
            count,
        }) => {
            raise_fd_limit();
            let duration = Duration::from_secs_f64(*seconds);
            match kind.as_str() {
                "lease" => worker::lease_loop(Path::new(target), duration, *max_ops),
                "hold" => worker::hold(Path::new(target), *count),
                "portserver" => worker::portserver_loop(target, duration, *max_ops),
                "floor" => floor::request_loop(Path::new(target), duration, *max_ops),
                other => Err(anyhow::anyhow!("unknown worker kind {other}")),
            }
        }
        Some(Role::FloorServer { socket }) => floor::serve(socket),
        Some(Role::MinimalServer { socket, lo, hi }) => minimal::serve(socket, (*lo, *hi)),
        None => run_bench(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("portbroker-bench: {err:#}");
            let _ = std::io::stderr().flush();
            ExitCode::FAILURE
        }
    }
}
