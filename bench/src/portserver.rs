//! Google's portserver, the peer we compare with: installed from PyPI (portpicker) into a
//! throwaway venv, and started on an abstract Unix socket as portpicker's clients expect.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Result};

use crate::harness::{wait_until, Server};

pub struct Portserver {
    python: PathBuf,
    script: PathBuf,
}

/// Installs portpicker, which brings `portserver.py`, into a venv under `dir`.
pub fn install(dir: &Path) -> Result<Portserver> {
    let venv = dir.join("venv");
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()?;
    ensure!(status.success(), "python3 -m venv failed");
    let status = Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "portpicker",
        ])
        .status()?;
    ensure!(status.success(), "pip install portpicker failed");
    let script = venv.join("bin/portserver.py");
    ensure!(script.exists(), "portpicker did not install portserver.py");
    Ok(Portserver {
        python: venv.join("bin/python"),
        script,
    })
}

impl Portserver {
    /// A portserver on the abstract socket `@name`, pinned like our servers, once it answers.
    pub fn start(&self, name: &str) -> Result<Server> {
        let child = Command::new(&self.python)
            .arg(&self.script)
            .arg("--portserver_static_pool=3000-32767")
            .arg(format!("--portserver_address=@{name}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut server = Server::pinned(child, "portserver")?;
        let addr = UnixAddr::from_abstract_name(name.as_bytes())?;
        let up = wait_until(Duration::from_secs(30), || {
            UnixStream::connect_addr(&addr).is_ok()
        });
        ensure!(up && server.is_running(), "portserver did not start");
        Ok(server)
    }
}
