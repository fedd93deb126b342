//! The shim's environment variables, read once when the library loads: a program that later
//! clears or rewrites its environment still binds through the same broker, the same way.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;

/// With `1`, a bind that finds no broker goes to the kernel as if the shim were absent.
pub const FALLBACK_ENV: &str = "PORTBROKER_SHIM_FALLBACK";
/// With `1`, every leased bind is reported on stderr with the options set again.
pub const VERBOSE_ENV: &str = "PORTBROKER_SHIM_VERBOSE";
/// The broker's socket, as for every client of the broker.
pub const SOCKET_ENV: &str = "PORTBROKER_SOCKET";

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `PORTBROKER_SOCKET`, if set and not empty; else the library's default paths.
    pub socket: Option<PathBuf>,
    pub fallback: bool,
    pub verbose: bool,
}

impl Settings {
    fn from_env(get: impl Fn(&str) -> Option<OsString>) -> Settings {
        let is_one = |name: &str| get(name).is_some_and(|value| value == "1");
        Settings {
            socket: get(SOCKET_ENV)
                .filter(|path| !path.is_empty())
                .map(PathBuf::from),
            fallback: is_one(FALLBACK_ENV),
            verbose: is_one(VERBOSE_ENV),
        }
    }
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Reads the environment, once (the library's constructor calls this).
pub fn capture() {
    SETTINGS.get_or_init(|| Settings::from_env(|name| std::env::var_os(name)));
}

pub fn get() -> &'static Settings {
    SETTINGS.get_or_init(|| Settings::from_env(|name| std::env::var_os(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_one_turns_a_switch_on_and_an_empty_socket_is_unset() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| OsString::from(value))
            }
        };
        let on = Settings::from_env(env(&[
            (FALLBACK_ENV, "1"),
            (VERBOSE_ENV, "1"),
            (SOCKET_ENV, "/x.sock"),
        ]));
        assert!(on.fallback && on.verbose);
        assert_eq!(on.socket, Some(PathBuf::from("/x.sock")));
        let off = Settings::from_env(env(&[
            (FALLBACK_ENV, "yes"),
            (VERBOSE_ENV, "0"),
            (SOCKET_ENV, ""),
        ]));
        assert_eq!(off, Settings::default());
    }
}
