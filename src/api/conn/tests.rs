//! Unit tests of `conn` (beside it, out of its file).
#![allow(clippy::unwrap_used)]
use super::*;

fn limiter(max: usize, per: usize, reserved: usize) -> Limiter {
    Limiter::new(
        Limits {
            max_connections: max,
            per_peer: per,
            reserved_for_root: reserved,
        },
        "test",
    )
}

fn quiet(t: &Ticket) {
    t.state.drained.store(true, Ordering::Release);
}

#[test]
fn a_peer_over_its_share_closes_its_own_quietest_or_is_refused() {
    let l = limiter(10, 2, 2);
    let a1 = l.admit(1000, false).unwrap();
    let a2 = l.admit(1000, false).unwrap();
    // Neither is quiet yet (their requests may be on the way).
    assert_eq!(l.admit(1000, false).err(), Some(Refused::PeerFull));
    quiet(&a2);
    quiet(&a1);
    a1.state.last.store(5, Ordering::Relaxed);
    a2.state.last.store(3, Ordering::Relaxed);
    let b = l.admit(1001, false).unwrap();
    quiet(&b);
    // The oldest quiet of the same peer goes, never another peer's.
    let a3 = l.admit(1000, false).unwrap();
    assert!(a2.state.evict.is_cancelled());
    assert!(!a1.state.evict.is_cancelled() && !b.state.evict.is_cancelled());
    assert_eq!(l.open(), 3);
    drop(a2);
    assert_eq!(l.open(), 3, "an evicted ticket frees nothing twice");
    drop((a1, a3, b));
    assert_eq!(l.open(), 0);
}

#[test]
fn root_has_reserved_slots_and_may_close_anyone_quiet() {
    let l = limiter(4, 4, 2);
    let users: Vec<Ticket> = (0..2).map(|_| l.admit(7, false).unwrap()).collect();
    // The non-root share (4 - 2) is full.
    assert_eq!(l.admit(8, false).err(), Some(Refused::Full));
    let r1 = l.admit(0, true).unwrap();
    let r2 = l.admit(0, true).unwrap();
    // All full, nothing quiet: root is refused too.
    assert_eq!(l.admit(0, true).err(), Some(Refused::Full));
    quiet(&r1);
    quiet(&users[1]);
    // Root closes a quiet non-root connection before a root one.
    let r3 = l.admit(0, true).unwrap();
    assert!(users[1].state.evict.is_cancelled());
    assert!(!r1.state.evict.is_cancelled());
    // A non-root peer never closes root's connections.
    assert_eq!(l.admit(9, false).err(), Some(Refused::Full));
    // With only root's quiet ones left, root takes one of those.
    let _r4 = l.admit(0, true).unwrap();
    assert!(r1.state.evict.is_cancelled());
    drop((r2, r3));
}

#[test]
fn a_connection_handling_a_request_is_never_closed() {
    let l = limiter(1, 1, 0);
    let a = l.admit(0, true).unwrap();
    quiet(&a);
    let busy = a.state.busy();
    assert_eq!(l.admit(0, true).err(), Some(Refused::Full));
    drop(busy);
    let _b = l.admit(0, true).unwrap();
    assert!(a.state.evict.is_cancelled());
}
