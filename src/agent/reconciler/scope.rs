//! Which domains a cycle looks at: all of them, or only those a change or
//! an event names (a scoped cycle), and when a scoped cycle can be trusted.

use crate::adapters::libvirt::events::HvEvent;
use crate::agent::report::Report;
use crate::core::planner::Plan;
use std::collections::HashSet;

/// Which domains a requested cycle must look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every domain: a full cycle.
    All,
    /// Only these domains (UUIDs) changed: a scoped cycle re-observes and
    /// enforces them alone, the others keep their last observation and
    /// wait for the next full cycle. A full cycle runs instead when a
    /// scoped one can't be trusted (see [`Scope::narrow`]).
    Domains(Vec<String>),
}

impl Scope {
    /// The scope that covers both.
    pub fn merge(self, other: Scope) -> Scope {
        match (self, other) {
            (Scope::Domains(mut a), Scope::Domains(b)) => {
                for u in b {
                    if !a.contains(&u) {
                        a.push(u);
                    }
                }
                Scope::Domains(a)
            }
            _ => Scope::All,
        }
    }

    /// The scope of a batch of libvirt events: the domains they name; all
    /// when the connection closed (or the batch is empty).
    pub fn of_events(batch: &[HvEvent]) -> Scope {
        let mut uuids: Vec<String> = Vec::new();
        for e in batch {
            match e {
                HvEvent::Domain(d) => {
                    if !uuids.contains(&d.uuid) {
                        uuids.push(d.uuid.clone());
                    }
                }
                HvEvent::ConnectionClosed(_) => return Scope::All,
            }
        }
        if uuids.is_empty() {
            Scope::All
        } else {
            Scope::Domains(uuids)
        }
    }
}

/// A scoped cycle covers at most this share of the domains (but always
/// one); beyond it, a full cycle.
const SCOPED_MAX_SHARE: usize = 10;

/// How many domains a scoped cycle may cover out of `total`.
pub fn scoped_limit(total: usize) -> usize {
    (total / SCOPED_MAX_SHARE).max(1)
}

/// What a scoped cycle is checked against: the last published cycle.
pub struct Last<'a> {
    /// libvirt answered in the last cycle and a plan was made.
    pub usable: bool,
    /// The UUIDs of the domains it observed.
    pub known: HashSet<&'a str>,
}

impl Last<'_> {
    /// The last published report, as a scoped cycle is checked against it.
    pub fn of(report: &Report) -> Last<'_> {
        Last {
            usable: report.libvirt.connected && report.plan.is_some(),
            known: report.domains.iter().map(|d| &*d.uuid).collect(),
        }
    }

    /// Whether a cycle scoped to `uuids` can run on the last cycle's
    /// observation: libvirt connected, a plan made, the domains few
    /// enough (see [`scoped_limit`]) and all observed then.
    pub fn can_scope(&self, uuids: &[String]) -> bool {
        self.usable
            && !uuids.is_empty()
            && uuids.len() <= scoped_limit(self.known.len())
            && uuids.iter().all(|u| self.known.contains(u.as_str()))
    }
}

/// The domains outside `scope` that have actions in the plan and share a
/// pool with a domain in it.
pub fn pool_neighbours_with_actions(plan: &Plan, scope: &[String]) -> Vec<String> {
    let with_actions: HashSet<&str> = plan.actions.iter().map(|a| a.uuid()).collect();
    let mut out: Vec<String> = Vec::new();
    for p in &plan.pools {
        if !p
            .members
            .iter()
            .any(|m| scope.iter().any(|s| **s == *m.uuid))
        {
            continue;
        }
        for m in &p.members {
            if with_actions.contains(&*m.uuid)
                && !scope.iter().any(|s| **s == *m.uuid)
                && !out.iter().any(|s| **s == *m.uuid)
            {
                out.push(m.uuid.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::libvirt::events::{CloseReason, DomainEvent, LifecycleKind};

    fn ev(uuid: &str, kind: LifecycleKind) -> HvEvent {
        HvEvent::Domain(DomainEvent {
            uuid: uuid.into(),
            name: format!("vm-{uuid}"),
            kind,
            detail: 0,
        })
    }

    #[test]
    fn events_scope_the_cycle_to_their_domains() {
        let b = [
            ev("a", LifecycleKind::Started),
            ev("b", LifecycleKind::Stopped),
            ev("a", LifecycleKind::Suspended),
        ];
        assert_eq!(
            Scope::of_events(&b),
            Scope::Domains(vec!["a".into(), "b".into()])
        );
    }

    #[test]
    fn a_closed_connection_asks_for_a_full_cycle() {
        let b = [
            ev("a", LifecycleKind::Started),
            HvEvent::ConnectionClosed(CloseReason::Eof),
        ];
        assert_eq!(Scope::of_events(&b), Scope::All);
        assert_eq!(Scope::of_events(&[]), Scope::All);
    }

    #[test]
    fn a_scope_needs_known_domains_few_enough() {
        let known: Vec<String> = (0..25).map(|i| format!("u{i}")).collect();
        let last = Last {
            usable: true,
            known: known.iter().map(String::as_str).collect(),
        };
        assert!(last.can_scope(&known[..2]));
        assert!(!last.can_scope(&known[..3]), "25 domains: at most 2");
        assert!(!last.can_scope(&["other".to_string()]));
        assert!(!last.can_scope(&[]));
        let down = Last {
            usable: false,
            known: last.known.clone(),
        };
        assert!(!down.can_scope(&known[..1]));
    }

    #[test]
    fn merging_scopes() {
        let a = Scope::Domains(vec!["a".into()]);
        let b = Scope::Domains(vec!["b".into(), "a".into()]);
        assert_eq!(
            a.clone().merge(b),
            Scope::Domains(vec!["a".into(), "b".into()])
        );
        assert_eq!(a.merge(Scope::All), Scope::All);
    }
}
