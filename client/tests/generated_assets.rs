//! The man pages and shell completions that `portctl --generate-assets DIR` and
//! `portbrokerd --generate-assets DIR` write for the package (debian/build-deb): every file is
//! there and parses. `bash -n` always; `zsh -n` and `fish --no-execute` where those shells are
//! installed (a `SKIPPED` line otherwise); the man pages are rendered by `man -l` (package
//! man-db, which `.ci/run` installs), else by `groff` or `mandoc` if one of them is installed.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{portbrokerd_bin, portctl_bin};

/// The files both binaries generate into one fresh directory.
fn generate() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    for bin in [Path::new(portctl_bin()), portbrokerd_bin()] {
        let out = Command::new(bin)
            .arg("--generate-assets")
            .arg(dir.path().join("assets"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} --generate-assets: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path().join("assets"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    (dir, files)
}

fn named<'a>(files: &'a [PathBuf], pred: impl Fn(&str) -> bool + 'a) -> Vec<&'a PathBuf> {
    files
        .iter()
        .filter(|f| pred(f.file_name().unwrap().to_str().unwrap()))
        .collect()
}

fn has_tool(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

/// Runs `cmd`, which must succeed without a word on stderr.
fn quiet_success(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{cmd:?}: {}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn every_page_and_completion_is_generated_without_the_hidden_option() {
    let (_dir, files) = generate();
    let names: Vec<&str> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_str().unwrap())
        .collect();
    for want in [
        "portctl.1",
        "portctl-run.1",
        "portctl-renew.1",
        "portctl-log.1",
        "portbrokerd.1",
        "portctl.bash",
        "_portctl",
        "portctl.fish",
        "portbrokerd.bash",
        "_portbrokerd",
        "portbrokerd.fish",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            !text.contains("generate-assets"),
            "{} offers the packaging option",
            file.display()
        );
    }
    let bash = std::fs::read_to_string(files.iter().find(|f| f.ends_with("portctl.bash")).unwrap())
        .unwrap();
    for sub in [
        "run", "list", "status", "release", "renew", "revoke", "reload", "--socket",
    ] {
        assert!(bash.contains(sub), "the bash completion lacks {sub}");
    }
}

#[test]
fn bash_completions_parse() {
    let (_dir, files) = generate();
    let scripts = named(&files, |n| n.ends_with(".bash"));
    assert_eq!(scripts.len(), 2);
    for script in scripts {
        quiet_success(Command::new("bash").arg("-n").arg(script));
        // Sourced, it registers the completion function for the command.
        let out = quiet_success(
            Command::new("bash")
                .arg("-c")
                .arg(r#"source "$1" && complete -p "$2""#)
                .arg("bash")
                .arg(script)
                .arg(script.file_stem().unwrap()),
        );
        assert!(!out.stdout.is_empty(), "{}", script.display());
    }
}

#[test]
fn zsh_completions_parse() {
    if !has_tool("zsh") {
        println!("SKIPPED zsh_completions_parse: zsh is not installed");
        return;
    }
    let (_dir, files) = generate();
    let scripts = named(&files, |n| n.starts_with('_'));
    assert_eq!(scripts.len(), 2);
    for script in scripts {
        quiet_success(Command::new("zsh").arg("-n").arg(script));
    }
}

#[test]
fn fish_completions_parse() {
    if !has_tool("fish") {
        println!("SKIPPED fish_completions_parse: fish is not installed");
        return;
    }
    let (_dir, files) = generate();
    let scripts = named(&files, |n| n.ends_with(".fish"));
    assert_eq!(scripts.len(), 2);
    for script in scripts {
        quiet_success(Command::new("fish").arg("--no-execute").arg(script));
    }
}

#[test]
fn man_pages_render_without_warnings() {
    let (_dir, files) = generate();
    let pages = named(&files, |n| n.ends_with(".1"));
    assert!(pages.len() >= 3, "{pages:?}");
    for page in pages {
        let name = page.file_stem().unwrap().to_str().unwrap();
        let out = if has_tool("man") {
            quiet_success(
                Command::new("man")
                    .args(["--warnings", "-E", "UTF-8", "-l", "-P", "cat"])
                    .arg(page)
                    .env("MANWIDTH", "80"),
            )
        } else if has_tool("groff") {
            quiet_success(
                Command::new("groff")
                    .args(["-man", "-Tutf8", "-ww"])
                    .arg(page),
            )
        } else if has_tool("mandoc") {
            quiet_success(
                Command::new("mandoc")
                    .args(["-T", "lint", "-W", "warning"])
                    .arg(page),
            );
            quiet_success(Command::new("mandoc").args(["-T", "utf8"]).arg(page))
        } else {
            panic!("no man, groff or mandoc: apt-get install man-db (.ci/run does)");
        };
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("NAME") && text.contains(name) && text.contains("SYNOPSIS"),
            "{name}:\n{text}"
        );
    }
}
