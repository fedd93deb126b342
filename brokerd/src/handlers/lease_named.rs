//! `LeaseNamed`: leases a named service of the policy, giving back the ports kept for the
//! same user since its server ended.

use portbroker_proto::{EndReason, Event, Holder, LeaseId, Refusal, Response};
use tracing::debug;

use super::lease::granted_or_refused;
use super::Reply;
use crate::grant::grant;
use crate::lease::Keeper;
use crate::peer::Peer;
use crate::policy::MAX_SERVICE_NAME;
use crate::state::State;

/// `name` as a refusal repeats it: at most `MAX_SERVICE_NAME` bytes of it, and "..." if cut.
fn shown(name: &str) -> String {
    if name.len() <= MAX_SERVICE_NAME {
        return name.to_owned();
    }
    let mut end = MAX_SERVICE_NAME;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &name[..end])
}

pub fn lease_named(state: &mut State, peer: &Peer, name: &str) -> Reply {
    let policy = &state.policy;
    let checked = match policy.services.get(name) {
        None => Err(Refusal::UnknownService { name: shown(name) }),
        Some(service) => match policy.may_use_service(&peer.identity, name, service) {
            Ok(admitted) => Ok((service.sockets.clone(), !admitted)),
            Err(reason) => Err(Refusal::NotPermitted { reason }),
        },
    };
    let (specs, by_rules) = match checked {
        Ok(checked) => checked,
        Err(refusal) => {
            state
                .refusals
                .lease(format_args!("refused {}: {refusal}", peer.holder));
            state.watchers.emit(|| Event::Refused {
                asker: Holder::clone(&peer.holder),
                refusal: refusal.clone(),
            });
            return Reply::answer(Response::Refused(refusal));
        }
    };
    // A restarted server gets back the ports kept for it since its crash.
    let uid = peer.identity.uid;
    let kept: Vec<LeaseId> = state
        .table
        .leases()
        .filter(|l| {
            l.keeper == Keeper::Kept && l.holder.uid == uid && l.service.as_deref() == Some(name)
        })
        .map(|l| l.id)
        .collect();
    for lease in kept {
        state.table.end(lease, EndReason::KeptReturned);
        state.watchers.emit(|| Event::Released { id: lease });
        debug!(
            lease = lease.0,
            "kept ports of service {name:?} go back to uid {uid}"
        );
    }
    let mut binds = 0;
    let granted = grant(state, peer, &specs, by_rules, Some(name), &mut binds);
    granted_or_refused(granted, binds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::fixture::{me, state_with, stranger};
    use portbroker_proto::LeaseState;

    const POLICY: &str = r#"
[services.web]
sockets = ["tcp:127.0.0.1:0"]
who = ["uid:4242"]
sticky_secs = 60
"#;

    #[test]
    fn a_service_is_granted_to_whom_it_names() {
        let mut state = state_with(POLICY);
        let reply = lease_named(&mut state, &stranger(1, 4242), "web");
        assert_eq!(reply.work, 1, "one bind");
        let Response::Granted { id, .. } = reply.response else {
            panic!("not granted: {:?}", reply.response);
        };
        assert_eq!(state.table.get(id).unwrap().service.as_deref(), Some("web"));
        let other = lease_named(&mut state, &stranger(2, 4343), "web");
        assert!(matches!(
            other.response,
            Response::Refused(Refusal::NotPermitted { .. })
        ));
        let unknown = lease_named(&mut state, &me(3), "db");
        assert!(matches!(
            unknown.response,
            Response::Refused(Refusal::UnknownService { .. })
        ));
    }

    /// A client's name comes back in the refusal, which every watcher is told of: a long one
    /// is cut, so that it cannot make each watcher's queue hold a frame's worth per event.
    #[test]
    fn a_long_unknown_name_comes_back_cut() {
        let mut state = state_with(POLICY);
        let long = "é".repeat(30_000);
        let reply = lease_named(&mut state, &me(1), &long);
        let Response::Refused(Refusal::UnknownService { name }) = reply.response else {
            panic!("not refused as unknown: {:?}", reply.response);
        };
        assert!(name.len() <= MAX_SERVICE_NAME + 3, "{} bytes", name.len());
        assert!(name.ends_with("...") && long.starts_with(name.trim_end_matches("...")));
        let short = lease_named(&mut state, &me(1), "db");
        assert!(matches!(
            short.response,
            Response::Refused(Refusal::UnknownService { name }) if name == "db"
        ));
    }

    #[test]
    fn kept_ports_go_back_to_the_same_user() {
        let mut state = state_with(POLICY);
        let peer = stranger(1, 4242);
        let Response::Granted { id, .. } = lease_named(&mut state, &peer, "web").response else {
            panic!("not granted");
        };
        // Its server crashed: the sockets are closed (the fds were dropped) and the lease
        // is kept for uid 4242.
        state.end_truthfully(id, EndReason::ConnectionClosed, "test crash");
        assert_eq!(state.table.get(id).unwrap().state(), LeaseState::Kept);
        let Response::Granted { id: again, .. } = lease_named(&mut state, &peer, "web").response
        else {
            panic!("not granted again");
        };
        assert!(state.table.get(id).is_none(), "the kept lease gave way");
        assert!(state.table.get(again).is_some());
    }
}
