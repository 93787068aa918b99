//! Who may change things and read the audit log: uid 0, or a member of
//! `api.group` (its primary group, a supplementary group in the group
//! database, or the peer's own gid from SO_PEERCRED). Anyone who can open
//! the socket (mode 0660, group `api.group`: root and the group's members)
//! may read the rest.

use super::error::Error;
use nix::unistd::{Gid, Group, Uid, User};
use std::ffi::CString;

/// The credentials of the process at the other end of a connection,
/// read once with SO_PEERCRED when it connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// What needs root or the API group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// Any change (every method but GET and HEAD).
    Change,
    /// Reading the audit log (`/v1/events`, `/v1/audit`): it names who
    /// changed what, and is mode 0640 on disk.
    Audit,
}

/// Checks that `peer` may make changes when the API group is `group`.
pub fn authorize_change(peer: Option<Peer>, group: &str) -> Result<(), Error> {
    authorize(peer, group, Privilege::Change)
}

/// Checks that `peer` has `what` when the API group is `group`.
pub fn authorize(peer: Option<Peer>, group: &str, what: Privilege) -> Result<(), Error> {
    let Some(peer) = peer else {
        return Err(Error::NoPeer);
    };
    if peer.uid == 0 || in_group(peer, group) {
        return Ok(());
    }
    Err(match what {
        Privilege::Change => Error::Forbidden {
            uid: peer.uid,
            group: group.to_string(),
        },
        Privilege::Audit => Error::ForbiddenAudit {
            uid: peer.uid,
            group: group.to_string(),
        },
    })
}

/// Whether the peer belongs to `group`. An unknown group has no members.
fn in_group(peer: Peer, group: &str) -> bool {
    let Ok(Some(g)) = Group::from_name(group) else {
        return false;
    };
    if peer.gid == g.gid.as_raw() {
        return true;
    }
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(peer.uid)) else {
        return false;
    };
    if user.gid == g.gid || g.mem.contains(&user.name) {
        return true;
    }
    let Ok(name) = CString::new(user.name.as_bytes()) else {
        return false;
    };
    nix::unistd::getgrouplist(&name, user.gid)
        .map(|gs| gs.contains(&g.gid))
        .unwrap_or(false)
}

/// The gid of a group by name, if it exists.
pub fn group_gid(group: &str) -> Option<Gid> {
    Group::from_name(group).ok().flatten().map(|g| g.gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> Option<Peer> {
        Some(Peer {
            uid,
            gid,
            pid: None,
        })
    }

    #[test]
    fn root_and_group_members_may_change() {
        assert!(authorize_change(peer(0, 0), "no-such-group-xyz").is_ok());
        // The peer's own gid counts.
        assert!(authorize_change(peer(65534, 0), "root").is_ok());
        let e = authorize_change(peer(65534, 65534), "root").unwrap_err();
        assert!(e.to_string().contains("uid 65534"), "{e}");
        assert!(matches!(authorize_change(None, "root"), Err(Error::NoPeer)));
        assert!(authorize_change(peer(65534, 65534), "no-such-group-xyz").is_err());
        let e = authorize(peer(65534, 65534), "root", Privilege::Audit).unwrap_err();
        assert!(e.to_string().contains("audit log"), "{e}");
        assert!(authorize(peer(65534, 0), "root", Privilege::Audit).is_ok());
    }
}
