//! Starting CMD with the leased sockets at fds 3, 4, ... (systemd's `LISTEN_FDS` convention).
//!
//! Written with fork and execve rather than `std::process::Command`: the sockets must land at
//! fixed fd numbers, and `LISTEN_PID` must hold the child's own pid, which only the child knows.
//! Everything the child needs is prepared before the fork, so that between fork and exec it
//! only makes async-signal-safe system calls and touches memory that already exists.

use std::env;
use std::ffi::{c_char, c_int, CStr, CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::ptr;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::wait::waitpid;
use nix::unistd::{access, fork, getpid, pipe2, read, AccessFlags, ForkResult, Pid};

use crate::exit::{CannotRun, UsageError};

/// The first fd of the convention; stdin, stdout and stderr come before it.
const FIRST_LISTEN_FD: RawFd = 3;
/// Searched when PATH is unset or empty, as execvp does.
const DEFAULT_PATH: &str = "/bin:/usr/bin";
const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";
/// The prefix, up to 10 digits of a pid, and the terminating NUL.
const LISTEN_PID_ENTRY_LEN: usize = LISTEN_PID_PREFIX.len() + 10 + 1;

/// A command resolved against PATH, with its argv ready for execve.
#[derive(Debug)]
pub struct Program {
    name: String,
    path: CString,
    argv: Vec<CString>,
}

impl Program {
    /// Looks `command[0]` up in PATH (unless it holds a `/`) and converts the arguments.
    pub fn resolve(command: &[OsString]) -> Result<Program> {
        let name_os = command.first().context("no command given")?;
        let name = name_os.to_string_lossy().into_owned();
        let argv = command
            .iter()
            .map(|arg| CString::new(arg.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| UsageError(format!("an argument of {name} contains a NUL byte")))?;
        let path = find_executable(name_os).map_err(|errno| CannotRun::new(name.clone(), errno))?;
        let path = CString::new(path.into_os_string().into_vec())
            .map_err(|_| UsageError(format!("the path of {name} contains a NUL byte")))?;
        Ok(Program { name, path, argv })
    }
}

fn find_executable(name: &OsStr) -> Result<PathBuf, Errno> {
    if name.is_empty() {
        return Err(Errno::ENOENT);
    }
    if name.as_bytes().contains(&b'/') {
        // Checked now so that nothing is leased for a typo; execve has the last word.
        let path = PathBuf::from(name);
        access(&path, AccessFlags::X_OK)?;
        return if path.is_dir() {
            Err(Errno::EACCES)
        } else {
            Ok(path)
        };
    }
    let search = env::var_os("PATH")
        .filter(|path| !path.is_empty())
        .unwrap_or_else(|| DEFAULT_PATH.into());
    let mut denied = false;
    for dir in env::split_paths(&search) {
        // An empty PATH entry means the current directory.
        let candidate = if dir.as_os_str().is_empty() {
            PathBuf::from(".").join(name)
        } else {
            dir.join(name)
        };
        match access(&candidate, AccessFlags::X_OK) {
            Ok(()) if candidate.is_file() => return Ok(candidate),
            Err(Errno::EACCES) => denied = true,
            _ => {}
        }
    }
    Err(if denied { Errno::EACCES } else { Errno::ENOENT })
}

/// Starts `program` with `sockets` at fds 3, 4, ... and the `LISTEN_*` variables set, and
/// returns its pid once it has exec'd. The caller's copies of the sockets are closed.
pub fn spawn(program: &Program, sockets: Vec<OwnedFd>, names: &[String]) -> Result<Pid> {
    spawn_with(program, &sockets, names, &[])
}

/// [`spawn`], but the caller keeps its copies of the sockets (to start the next CMD on them),
/// and `extra_env` (`KEY=value` entries) replaces any inherited variable of the same name.
pub fn spawn_with(
    program: &Program,
    sockets: &[OwnedFd],
    names: &[String],
    extra_env: &[String],
) -> Result<Pid> {
    let count = sockets.len();
    let first_free = FIRST_LISTEN_FD + RawFd::try_from(count).context("too many sockets")?;
    // Every fd the child still reads from after its first dup2 must lie above the range the
    // dup2s fill, or one of them could overwrite a socket not yet copied.
    let high_sockets = sockets
        .iter()
        .map(|fd| dup_at_or_above(fd, first_free))
        .collect::<nix::Result<Vec<_>>>()
        .context("cannot duplicate the leased sockets")?;
    let (report_read, low_report_write) =
        pipe2(OFlag::O_CLOEXEC).context("cannot create a pipe")?;
    let report_write =
        dup_at_or_above(&low_report_write, first_free).context("cannot duplicate a pipe")?;
    // Every write end must be closed in the parent, or reading the report never sees EOF.
    drop(low_report_write);

    let env = child_environment(count, names, extra_env)?;
    let argv: Vec<*const c_char> = program
        .argv
        .iter()
        .map(|arg| arg.as_ptr())
        .chain([ptr::null()])
        .collect();
    let mut envp: Vec<*const c_char> = env.iter().map(|entry| entry.as_ptr()).collect();
    let pid_slot = envp.len();
    envp.extend([ptr::null(), ptr::null()]); // LISTEN_PID, filled in by the child; terminator
    let mut pid_entry = [0u8; LISTEN_PID_ENTRY_LEN];
    pid_entry[..LISTEN_PID_PREFIX.len()].copy_from_slice(LISTEN_PID_PREFIX);
    let socket_fds: Vec<RawFd> = high_sockets.iter().map(AsRawFd::as_raw_fd).collect();

    // SAFETY: the child branch only calls async-signal-safe functions (dup2, signal, getpid,
    // execve, write, _exit) on memory allocated before the fork, and ends in execve or _exit
    // without returning or unwinding. That is sound even if other threads exist (portctl has
    // none; the test harness has): no lock or allocator state they left behind is touched.
    match unsafe { fork() }.context("cannot fork")? {
        ForkResult::Child => exec_child(ChildPlan {
            program: &program.path,
            argv: &argv,
            envp: &mut envp,
            pid_slot,
            pid_entry: &mut pid_entry,
            sockets: &socket_fds,
            report: report_write.as_raw_fd(),
        }),
        ForkResult::Parent { child } => {
            // The child has its own copies now; ours would keep the report pipe open forever.
            drop(report_write);
            drop(high_sockets);
            match read_exec_report(&report_read).context("cannot learn whether CMD started")? {
                None => Ok(child),
                Some(errno) => {
                    reap(child);
                    Err(CannotRun::new(program.name.clone(), errno).into())
                }
            }
        }
    }
}

fn dup_at_or_above(fd: &OwnedFd, lowest: RawFd) -> nix::Result<OwnedFd> {
    let raw = fcntl(fd.as_fd(), FcntlArg::F_DUPFD_CLOEXEC(lowest))?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Our environment without inherited `LISTEN_*` variables and those `extra` sets, plus
/// `LISTEN_FDS`, `LISTEN_FDNAMES` and `extra` (`LISTEN_PID` is added by the child).
fn child_environment(count: usize, names: &[String], extra: &[String]) -> Result<Vec<CString>> {
    let replaced = |key: &[u8]| {
        extra
            .iter()
            .any(|entry| entry.split_once('=').map(|(k, _)| k.as_bytes()) == Some(key))
    };
    let mut env: Vec<CString> = env::vars_os()
        .filter(|(key, _)| {
            !matches!(
                key.as_bytes(),
                b"LISTEN_FDS" | b"LISTEN_PID" | b"LISTEN_FDNAMES"
            ) && !replaced(key.as_bytes())
        })
        .filter_map(|(key, value)| {
            let mut entry = key.into_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            CString::new(entry).ok()
        })
        .collect();
    env.push(CString::new(format!("LISTEN_FDS={count}"))?);
    env.push(
        CString::new(format!("LISTEN_FDNAMES={}", names.join(":")))
            .map_err(|_| UsageError("a socket name contains a NUL byte".into()))?,
    );
    for entry in extra {
        env.push(CString::new(entry.as_str())?);
    }
    Ok(env)
}

/// What the child needs, all of it allocated before the fork.
struct ChildPlan<'a> {
    program: &'a CStr,
    argv: &'a [*const c_char],
    envp: &'a mut [*const c_char],
    pid_slot: usize,
    pid_entry: &'a mut [u8; LISTEN_PID_ENTRY_LEN],
    sockets: &'a [RawFd],
    report: RawFd,
}

/// Runs in the child between fork and exec: no allocation, no locks, no return.
fn exec_child(plan: ChildPlan<'_>) -> ! {
    for (index, &fd) in plan.sockets.iter().enumerate() {
        // All sources lie at or above 3 + count, so source and target always differ, and the
        // copy does not inherit FD_CLOEXEC: it survives execve while the source does not.
        // SAFETY: dup2 on two plain fd numbers; it touches no memory.
        if unsafe { libc::dup2(fd, FIRST_LISTEN_FD + index as c_int) } == -1 {
            report_and_exit(plan.report);
        }
    }
    // Rust ignores SIGPIPE at startup, and an ignored signal stays ignored across execve.
    // SAFETY: restoring a default disposition is async-signal-safe and installs no handler.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    write_listen_pid(plan.pid_entry, getpid().as_raw());
    plan.envp[plan.pid_slot] = plan.pid_entry.as_ptr().cast();
    // SAFETY: program, argv and envp are NUL-terminated strings in NULL-terminated arrays that
    // live until execve replaces the process image.
    unsafe {
        libc::execve(
            plan.program.as_ptr(),
            plan.argv.as_ptr(),
            plan.envp.as_ptr(),
        )
    };
    report_and_exit(plan.report)
}

/// Sends errno to the parent through the close-on-exec pipe, and exits.
fn report_and_exit(report: RawFd) -> ! {
    let errno = Errno::last_raw().to_ne_bytes();
    // SAFETY: write and _exit are async-signal-safe; the buffer is a local array. A failed
    // write leaves the parent reading EOF, which it takes for success; nothing better exists.
    unsafe {
        libc::write(report, errno.as_ptr().cast(), errno.len());
        libc::_exit(127)
    }
}

/// Writes `LISTEN_PID=<pid>` and a NUL into `entry` without allocating or formatting.
fn write_listen_pid(entry: &mut [u8; LISTEN_PID_ENTRY_LEN], pid: i32) {
    let mut digits = [0u8; 10];
    let mut rest = pid.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (rest % 10) as u8;
        rest /= 10;
        len += 1;
        if rest == 0 {
            break;
        }
    }
    let start = LISTEN_PID_PREFIX.len();
    for (slot, digit) in entry[start..start + len]
        .iter_mut()
        .zip(digits[..len].iter().rev())
    {
        *slot = *digit;
    }
    entry[start + len] = 0;
}

/// Waits for the exec: EOF means it happened (the pipe was close-on-exec), four bytes are the
/// errno of a failed attempt.
fn read_exec_report(pipe: &OwnedFd) -> nix::Result<Option<Errno>> {
    let mut buf = [0u8; 4];
    let mut filled = 0;
    while filled < buf.len() {
        match read(pipe, &mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno),
        }
    }
    Ok((filled == buf.len()).then(|| Errno::from_raw(i32::from_ne_bytes(buf))))
}

fn reap(child: Pid) {
    while let Err(Errno::EINTR) = waitpid(child, None) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_text(pid: i32) -> String {
        let mut entry = [0xffu8; LISTEN_PID_ENTRY_LEN];
        entry[..LISTEN_PID_PREFIX.len()].copy_from_slice(LISTEN_PID_PREFIX);
        write_listen_pid(&mut entry, pid);
        CStr::from_bytes_until_nul(&entry)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    }

    fn exit_status(child: Pid) -> i32 {
        match waitpid(child, None).unwrap() {
            nix::sys::wait::WaitStatus::Exited(_, code) => code,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn the_child_gets_the_sockets_from_fd_3_and_its_own_pid() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let script = r#"test "$LISTEN_FDS" = 2 || exit 10
            test "$LISTEN_PID" = "$$" || exit 11
            test "$LISTEN_FDNAMES" = "dns:web" || exit 12
            test -S /proc/$$/fd/3 && test -S /proc/$$/fd/4 || exit 13
            test "$(readlink /proc/$$/fd/3)" = "$UDP" || exit 14"#;
        let udp_inode = std::fs::read_link(format!("/proc/self/fd/{}", udp.as_raw_fd())).unwrap();
        // The child environment is built from ours, so this reaches the script.
        let program = Program::resolve(&[
            "env".into(),
            format!("UDP={}", udp_inode.display()).into(),
            "sh".into(),
            "-c".into(),
            script.into(),
        ])
        .unwrap();
        let names = ["dns".to_owned(), "web".to_owned()];
        let child = spawn(&program, vec![udp.into(), tcp.into()], &names).unwrap();
        assert_eq!(exit_status(child), 0);
    }

    #[test]
    fn exec_failures_are_reported_with_the_shell_statuses() {
        // Resolving checks too; a Program built by hand shows what execve itself reports.
        let missing = Program {
            name: "/nonexistent/program".into(),
            path: c"/nonexistent/program".into(),
            argv: vec![c"/nonexistent/program".into()],
        };
        let err = spawn(&missing, Vec::new(), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot run /nonexistent/program: No such file or directory"
        );
        assert_eq!(err.downcast_ref::<CannotRun>().unwrap().exit_code(), 127);

        let dir = tempfile::tempdir().unwrap();
        let not_executable = dir.path().join("script");
        std::fs::write(&not_executable, "#!/bin/sh\n").unwrap();
        let err = Program::resolve(&[not_executable.into()]).unwrap_err();
        assert_eq!(err.downcast_ref::<CannotRun>().unwrap().exit_code(), 126);
        assert!(
            err.to_string().ends_with("script: Permission denied"),
            "{err}"
        );
    }

    #[test]
    fn listen_pid_is_written_in_decimal() {
        assert_eq!(entry_text(1), "LISTEN_PID=1");
        assert_eq!(entry_text(40_123), "LISTEN_PID=40123");
        assert_eq!(entry_text(i32::MAX), "LISTEN_PID=2147483647");
    }

    #[test]
    fn commands_are_found_in_path_or_not() {
        let sh = find_executable(OsStr::new("sh")).unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
        assert_eq!(
            find_executable(OsStr::new("portctl-test-no-such-command")),
            Err(Errno::ENOENT)
        );
        assert_eq!(
            find_executable(OsStr::new("/bin/sh")).unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert_eq!(
            find_executable(OsStr::new("./portctl-test-no-such-command")),
            Err(Errno::ENOENT)
        );
        assert_eq!(find_executable(OsStr::new("/")), Err(Errno::EACCES));
        let err = Program::resolve(&["portctl-test-no-such-command".into()]).unwrap_err();
        let cannot_run = err.downcast_ref::<CannotRun>().unwrap();
        assert_eq!(cannot_run.exit_code(), 127);
        assert_eq!(
            err.to_string(),
            "cannot run portctl-test-no-such-command: No such file or directory"
        );
    }
}
