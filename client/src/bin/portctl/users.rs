//! User names for uids (`/etc/passwd` and the rest of NSS, through `getpwuid_r`), looked up once
//! per uid.

use std::collections::HashMap;

use nix::unistd::{Uid, User};

#[derive(Default)]
pub struct Users {
    names: HashMap<u32, Option<String>>,
}

impl Users {
    /// The name of `uid`; `None` if it has none.
    pub fn name(&mut self, uid: u32) -> Option<String> {
        self.names
            .entry(uid)
            .or_insert_with(|| {
                User::from_uid(Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .clone()
    }

    /// The name of `uid`, or the number when it has none.
    pub fn name_or_number(&mut self, uid: u32) -> String {
        self.name(uid).unwrap_or_else(|| uid.to_string())
    }

    /// The uid a `--user` filter names: a number, or a user name.
    pub fn parse_user(text: &str) -> Option<u32> {
        text.parse()
            .ok()
            .or_else(|| User::from_name(text).ok().flatten().map(|u| u.uid.as_raw()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_a_name_and_unknown_uids_fall_back_to_numbers() {
        let mut users = Users::default();
        assert_eq!(users.name(0).as_deref(), Some("root"));
        assert_eq!(users.name_or_number(4_000_000_123), "4000000123");
        assert_eq!(Users::parse_user("root"), Some(0));
        assert_eq!(Users::parse_user("1234"), Some(1234));
        assert_eq!(Users::parse_user("no-such-user-here"), None);
    }
}
