//! The change transactions on a report built here: no socket, no agent.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::agent::report::{LibvirtStatus, PlanBasis, Report};
use crate::core::config::Mode;
use crate::core::planner::testing::{self, *};
use crate::core::units::Bytes;
use std::sync::Arc;

const GIB: u64 = 1 << 30;

/// Pool `web` (8 vCPUs, 12 GiB) with web-1 and web-2 (4 vCPUs and 8 GiB
/// at most, 2 GiB of it used) and pool `db` with db-1, on a host
/// observed once.
fn ctx(connected: bool) -> Ctx {
    let web = with_budget(testing::pool("web"), Resource::Vcpus, 8, shares(1));
    let web = with_budget(web, Resource::Memory, 12 * GIB, shares(1));
    let db = with_budget(testing::pool("db"), Resource::Memory, 16 * GIB, shares(1));
    let cfg = config(16, 64 * GIB, vec![web, db]);
    let domains = ["web-1", "web-2", "db-1"]
        .iter()
        .map(|n| {
            let mut d = domain(n, Some(&n[..n.find('-').unwrap()]));
            d.vcpus_max = 4;
            d.vcpus = 2;
            d.memory_max = 8 * GIB;
            d.memory = 4 * GIB;
            d.balloon = Some(balloon(4 * GIB, 2 * GIB));
            d
        })
        .collect();
    let status = Report {
        cycle: 1,
        mode: Mode::Enforce,
        paused: false,
        libvirt: LibvirtStatus {
            uri: "test:///default".into(),
            connected,
            error: (!connected).then(|| "connection refused".into()),
        },
        host: Some(host(16, 64 * GIB)),
        capacity: None,
        last_cycle: None,
        plan: None,
        domains,
        results: Vec::new(),
        config_error: None,
        basis: PlanBasis::default(),
    };
    Ctx {
        status: Arc::new(status),
        config: Arc::new(cfg),
    }
}

fn reserve(domain: &str, vcpus: Option<u64>, memory: Option<u64>) -> Reservation {
    Reservation {
        domain: domain.into(),
        vcpus,
        memory: memory.map(Bytes),
        disk_bytes_sec: None,
        disk_iops_sec: None,
        cpu: None,
    }
}

fn does_not_fit(e: Error) -> String {
    match e {
        Error::DoesNotFit(m) => m,
        other => panic!("not a does-not-fit refusal: {other:?}"),
    }
}

#[test]
fn allocate_sets_a_reservation_that_fits_and_says_so() {
    let c = ctx(true);
    let mut rt = RuntimeState::new();
    let out = allocate(&c, &mut rt, "web", &reserve("web-1", Some(3), None)).unwrap();
    assert!(out.changed);
    assert_eq!(out.value.reservation.vcpus, Some(3));
    assert_eq!(rt.reservations["web"]["web-1"].vcpus, Some(3));
    // The same again changes nothing.
    let again = allocate(&c, &mut rt, "web", &reserve("web-1", Some(3), None)).unwrap();
    assert!(!again.changed);
}

#[test]
fn allocate_refuses_beyond_what_the_domain_can_have() {
    let c = ctx(true);
    let mut rt = RuntimeState::new();
    let e = allocate(&c, &mut rt, "web", &reserve("web-1", Some(5), None)).unwrap_err();
    let m = does_not_fit(e);
    assert!(m.contains("above what the domain can have (4"), "{m}");
    let e = allocate(&c, &mut rt, "web", &reserve("web-1", None, Some(9 * GIB))).unwrap_err();
    let m = does_not_fit(e);
    assert!(
        m.contains("above what the domain can have (8.0 GiB)"),
        "{m}"
    );
}

#[test]
fn allocate_names_the_budget_the_admitted_neighbours_hold() {
    let c = ctx(true);
    let mut rt = RuntimeState::new();
    allocate(&c, &mut rt, "web", &reserve("web-2", None, Some(8 * GIB))).unwrap();
    // A refused transaction's copy of the state is dropped by its caller.
    let before = rt.clone();
    let e = allocate(&c, &mut rt, "web", &reserve("web-1", None, Some(6 * GIB))).unwrap_err();
    let m = does_not_fit(e);
    assert!(
        m.contains(
            "the other admitted members hold 8.0 GiB of its 12.0 GiB budget, 4.0 GiB is free"
        ),
        "{m}"
    );
    let mut rt = before;
    allocate(&c, &mut rt, "web", &reserve("web-1", None, Some(4 * GIB))).unwrap();
}

#[test]
fn allocate_needs_libvirt_and_a_managed_resource() {
    let mut rt = RuntimeState::new();
    let e = allocate(
        &ctx(false),
        &mut rt,
        "web",
        &reserve("web-1", Some(2), None),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::LibvirtDown(ref m) if m.contains("connection refused")),
        "{e:?}"
    );
    let e = allocate(&ctx(true), &mut rt, "db", &reserve("db-1", Some(2), None)).unwrap_err();
    assert!(
        matches!(e, Error::BadRequest(ref m) if m.contains("does not manage vcpus")),
        "{e:?}"
    );
    let e = allocate(&ctx(true), &mut rt, "web", &reserve("db-1", Some(2), None)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::NotFound(_) | Error::Conflict(_) | Error::BadRequest(_)
        ),
        "{e:?}"
    );
}

#[test]
fn release_lowers_a_reservation_even_without_libvirt() {
    let mut rt = RuntimeState::new();
    allocate(
        &ctx(true),
        &mut rt,
        "web",
        &reserve("web-1", Some(3), Some(4 * GIB)),
    )
    .unwrap();
    // Release takes the amounts given off the reservation.
    let out = release(
        &ctx(false),
        &mut rt,
        "web",
        &reserve("web-1", Some(3), None),
    )
    .unwrap();
    assert!(out.changed);
    let left = rt.reservations["web"]["web-1"];
    assert_eq!((left.vcpus, left.memory), (None, Some(4 * GIB)));
}

#[test]
fn a_member_of_another_pool_moves_only_when_asked() {
    let c = ctx(true);
    let mut rt = RuntimeState::new();
    let body = |move_| AddMember {
        domain: "db-1".into(),
        move_,
    };
    let e = add_member(&c, &mut rt, "web", &body(false)).unwrap_err();
    assert!(
        matches!(e, Error::Conflict(ref m) if m.contains("\"db\"") && m.contains("--move")),
        "{e:?}"
    );
    assert_eq!(rt, RuntimeState::new());
    let out = add_member(&c, &mut rt, "web", &body(true)).unwrap();
    assert!(out.changed);
    assert!(rt.added["web"].contains("db-1"), "{rt:?}");
}

#[test]
fn pausing_a_pool_that_does_not_exist_is_refused() {
    let c = ctx(true);
    let mut rt = RuntimeState::new();
    let e = set_paused(&c, &mut rt, Some("nope"), true).unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    let out = set_paused(&c, &mut rt, Some("web"), true).unwrap();
    assert!(out.changed && rt.paused_pools.contains("web"));
}
