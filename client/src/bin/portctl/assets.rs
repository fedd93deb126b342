//! `portctl --generate-assets DIR` and `portbrokerd --generate-assets DIR` (which builds this
//! very file): write the program's man pages and shell completions, generated from the clap
//! definition that parses its command line, so that they cannot drift from it.
//! `debian/build-deb` runs both for the package. The option is not part of that definition (and
//! so of neither the help, the man pages nor the completions): `main` looks for it first.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap_complete::Shell;

/// The option, which must come first and alone with its directory.
pub const OPTION: &str = "--generate-assets";

/// DIR when the command line is exactly `PROG --generate-assets DIR`.
pub fn requested() -> Option<PathBuf> {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match &args[..] {
        [option, dir] if option == OPTION => Some(PathBuf::from(dir)),
        _ => None,
    }
}

/// Writes into `dir` (created if missing) the man pages of `cmd` and of each of its visible
/// subcommands (`NAME.1`, `NAME-SUB.1`) and its completions for bash (`NAME.bash`), zsh
/// (`_NAME`) and fish (`NAME.fish`).
pub fn generate(mut cmd: clap::Command, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = cmd.get_name().to_string();
    clap_mangen::generate_to(cmd.clone(), dir)
        .with_context(|| format!("cannot write the man pages to {}", dir.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, &name, dir)
            .with_context(|| format!("cannot write the {shell} completion to {}", dir.display()))?;
    }
    Ok(())
}

/// `generate`, reporting a failure on stderr as `NAME: error` with exit status 1.
pub fn generate_or_report(cmd: clap::Command, dir: &Path) -> ExitCode {
    let name = cmd.get_name().to_string();
    match generate(cmd, dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{name}: {err:#}");
            ExitCode::FAILURE
        }
    }
}
