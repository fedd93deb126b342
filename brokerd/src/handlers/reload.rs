//! `Reload`: re-reads the policy file (administrators only).

use portbroker_proto::{Failure, Response};
use tracing::warn;

use super::Reply;
use crate::peer::Peer;
use crate::state::State;

pub fn reload(state: &mut State, peer: &Peer) -> Reply {
    if !state.policy.is_admin(&peer.identity) {
        state.refusals.request(format_args!(
            "refused to reload the policy for {}: not an administrator",
            peer.holder
        ));
        return Reply::failed(Failure::NotPermitted {
            reason: "reloading the policy needs root or a member of an [admin] group".into(),
        });
    }
    match state.reload() {
        Ok((rules, services)) => Reply::answer(Response::Reloaded { rules, services }),
        Err(error) => {
            warn!("the policy was not reloaded and stays as it was: {error}");
            Reply::failed(Failure::ReloadFailed { error })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::fixture::{state, stranger};
    use crate::peer::Peer;
    use crate::policy::Identity;
    use std::rc::Rc;

    fn root() -> Peer {
        let mut peer = stranger(1, 4242);
        peer.identity = Rc::new(Identity {
            uid: 0,
            groups: vec![0],
        });
        peer
    }

    #[test]
    fn only_administrators_reload_and_a_built_in_policy_has_no_file() {
        let mut state = state();
        let refused = reload(&mut state, &stranger(1, 4242));
        assert!(matches!(
            refused.response,
            Response::Failed(Failure::NotPermitted { .. })
        ));
        let no_file = reload(&mut state, &root());
        assert!(matches!(
            no_file.response,
            Response::Failed(Failure::ReloadFailed { .. })
        ));
    }

    #[test]
    fn a_policy_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "[services.a]\nsockets = [\"tcp:0\"]\n").unwrap();
        let mut state = state();
        state.policy = crate::policy::Policy::load(&path).unwrap();
        std::fs::write(
            &path,
            "[services.a]\nsockets = [\"tcp:0\"]\n[services.b]\nsockets = [\"udp:0\"]\n",
        )
        .unwrap();
        let reply = reload(&mut state, &root());
        assert!(matches!(
            reply.response,
            Response::Reloaded { services: 2, .. }
        ));
        std::fs::write(&path, "nonsense = [").unwrap();
        let broken = reload(&mut state, &root());
        assert!(matches!(
            broken.response,
            Response::Failed(Failure::ReloadFailed { .. })
        ));
        assert_eq!(state.policy.services.len(), 2, "the policy in force stays");
    }
}
