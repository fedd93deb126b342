//! Builds what the C tests run: libportbroker.so with cargo, and C programs against its
//! header with the system's C compiler, as a C user would.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The top of the workspace (client/..).
fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("client/ lies in the workspace")
}

/// The directory holding a freshly built `libportbroker.so`.
///
/// Built by `cargo build -p portbroker-c` on every run of the tests, never taken as found: a
/// library left by an earlier build would test old code, and an up-to-date build costs a
/// moment. The path comes from cargo's own report of the artefact, so it is right whatever
/// the target directory. The build must not warn of an output filename collision (the
/// library's name is the Rust client library's too).
pub fn library_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo
            .args(["build", "-p", "portbroker-c", "--message-format=json"])
            .current_dir(workspace());
        if cfg!(not(debug_assertions)) {
            cargo.arg("--release");
        }
        let out = cargo.output().expect("run cargo build -p portbroker-c");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "cargo build -p portbroker-c failed:\n{stderr}"
        );
        assert!(
            !stderr.contains("collision"),
            "building libportbroker.so warns of a collision:\n{stderr}"
        );
        let library = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|message| message["reason"] == "compiler-artifact")
            .flat_map(|message| message["filenames"].as_array().cloned().unwrap_or_default())
            .filter_map(|name| name.as_str().map(PathBuf::from))
            .find(|path| path.file_name().is_some_and(|n| n == "libportbroker.so"))
            .expect("cargo build -p portbroker-c reports libportbroker.so");
        library.parent().unwrap().to_owned()
    })
}

/// Compiles the C program `source` (relative to the workspace) against `capi/include` and
/// libportbroker.so, with every warning an error, into the library's directory; returns the
/// program. The library is found at run time through an rpath, as an uninstalled build is.
pub fn compile(source: &str) -> PathBuf {
    let lib = library_dir();
    let out_dir = lib.join("capi-c");
    std::fs::create_dir_all(&out_dir).unwrap();
    let stem = Path::new(source).file_stem().unwrap().to_str().unwrap();
    let program = out_dir.join(stem);
    // Written under a name of this process's, then renamed: another test binary compiling
    // the same program meanwhile never runs a half-written one.
    let partial = out_dir.join(format!("{stem}.{}.partial", std::process::id()));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(workspace().join("capi/include"))
        .arg(workspace().join(source))
        .arg("-o")
        .arg(&partial)
        .arg("-L")
        .arg(lib)
        .arg("-lportbroker")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .output()
        .unwrap_or_else(|e| panic!("run {cc} (a C compiler is needed): {e}"));
    assert!(
        out.status.success(),
        "{cc} {source} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&partial, &program).unwrap();
    program
}
