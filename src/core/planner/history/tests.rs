use super::*;
use crate::core::model::Reason;

#[test]
fn a_change_copies_only_the_map_it_changes() {
    let mut prev = History::default();
    let admission = Admission {
        pool: "p".into(),
        seq: 0,
    };
    Arc::make_mut(&mut prev.admitted).insert("u".into(), admission);
    Arc::make_mut(&mut prev.originals).insert("u".into(), Originals::default());
    let mut next = prev.clone();
    next.record(&set_vcpus(2, 3), true, 10);
    next.retain(|u| u == "u");
    assert_eq!(next.vcpu_changed_at.get("u"), Some(&10));
    assert!(
        prev.vcpu_changed_at.is_empty(),
        "the earlier history is unchanged"
    );
    assert!(Arc::ptr_eq(&prev.admitted, &next.admitted));
    assert!(Arc::ptr_eq(&prev.originals, &next.originals));
    next.retain(|_| false);
    assert!(next.admitted.is_empty() && next.originals.is_empty());
    assert_eq!(prev.admitted.len(), 1, "the earlier history is unchanged");
}

fn set_vcpus(from: u64, to: u64) -> Action {
    Action::SetVcpus {
        uuid: "u".into(),
        domain: "d".into(),
        from,
        to,
        reason: Reason::Share,
        persist: false,
    }
}

fn obs(vcpus: u64, id: Option<u32>) -> DomainObs {
    let mut d = crate::core::planner::testing::domain("d", None);
    d.uuid = "u".into();
    d.vcpus = vcpus;
    d.id = id;
    d
}

#[test]
fn timed_out_removal_freezes_the_run() {
    let mut h = History::default();
    h.record(&set_vcpus(4, 2), Outcome::Timeout, 100);
    h.observe(&[obs(4, Some(7))]);
    assert_eq!(h.vcpu_pending["u"].run, Some(7), "run pinned");
    // Still 4: nothing at all, however long it has been.
    for want in [1, 2, 3, 5] {
        assert!(h.vcpus_frozen(&obs(4, Some(7)), want).is_some());
    }
    assert!(h.vcpus_frozen(&obs(4, Some(7)), 4).is_some());
    // Shows 3 (neither old nor requested): still frozen.
    assert!(h.vcpus_frozen(&obs(3, Some(7)), 2).is_some());
    // Shows the requested 2: further removals go, re-adding does not.
    assert!(h.vcpus_frozen(&obs(2, Some(7)), 1).is_none());
    assert!(h.vcpus_frozen(&obs(2, Some(7)), 3).is_some());
    // A later successful removal does not lift the ban on re-adding.
    h.record(&set_vcpus(2, 1), Outcome::Ok, 500);
    assert!(h.vcpus_frozen(&obs(1, Some(7)), 2).is_some());
    // A new run (restart: new libvirt ID) starts clean ...
    assert!(h.vcpus_frozen(&obs(4, Some(8)), 2).is_none());
    // ... and observing it forgets the change; so does a stop.
    h.observe(&[obs(4, Some(8))]);
    assert!(h.vcpu_pending.is_empty());
    h.record(&set_vcpus(4, 2), Outcome::Timeout, 600);
    let mut off = obs(0, None);
    off.state = crate::core::model::DomainState::Shutoff;
    h.observe(&[off]);
    assert!(h.vcpu_pending.is_empty());
}

#[test]
fn timed_out_addition_holds_until_it_shows() {
    let mut h = History::default();
    h.record(&set_vcpus(1, 2), Outcome::Timeout, 100);
    h.observe(&[obs(1, Some(3))]);
    assert!(h.vcpus_frozen(&obs(1, Some(3)), 2).is_some());
    assert!(h.vcpus_frozen(&obs(2, Some(3)), 4).is_none());
    assert!(h.vcpus_frozen(&obs(2, Some(3)), 1).is_none());
    h.record(&set_vcpus(2, 4), true, 200);
    assert!(h.vcpu_pending.is_empty());
    assert!(h.in_cooldown("u", 259, 60));
    assert!(!h.in_cooldown("u", 260, 60));
}

#[test]
fn bool_outcomes_still_accepted() {
    let mut h = History::default();
    h.record(&set_vcpus(1, 2), false, 5);
    assert_eq!(h.vcpu_changed_at.get("u"), Some(&5));
    h.retain(|_| false);
    assert_eq!(h, History::default());
}

#[test]
fn all_alive_says_whether_retain_would_change_anything() {
    let mut h = History::default();
    assert!(h.all_alive(|_| false), "empty");
    h.record(&set_vcpus(1, 2), Outcome::Timeout, 5);
    Arc::make_mut(&mut h.reclaim).insert("r".into(), 1);
    assert!(h.all_alive(|u| u == "u" || u == "r"));
    for gone in ["u", "r"] {
        assert!(!h.all_alive(|u| u != gone), "{gone}");
    }
    let before = h.clone();
    h.retain(|u| u == "u" || u == "r");
    assert_eq!(h, before);
}
