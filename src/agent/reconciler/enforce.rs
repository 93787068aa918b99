//! Step 4 of a cycle: the plan's actions on the live domains, in order, in
//! one job on the libvirt thread (one hand-over per cycle, not per
//! action). Each is checked against the plan's invariants first (the
//! planner's guard refuses one that would break them); one failure never
//! stops the others; a lost connection fails the rest without calling
//! libvirt.

use super::inputs::Timings;
use crate::adapters::libvirt::worker::HvWorker;
use crate::adapters::libvirt::HvError;
use crate::agent::report::{ActionError, ActionOutcome};
use crate::core::model::Action;
use crate::core::planner::{Guard, Outcome, Plan};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

/// The actions a cycle ran: indices into the plan's steps, each with
/// libvirt's answer.
#[derive(Debug, Default)]
pub(super) struct Ran {
    pub(super) results: Vec<(usize, Result<(), HvError>)>,
}

impl Ran {
    /// Each action that ran with how it ended, as the history records it.
    pub(super) fn for_history<'p>(&self, plan: &'p Plan) -> Vec<(&'p Action, Outcome)> {
        self.results
            .iter()
            .map(|(i, r)| {
                let outcome = match r {
                    Ok(()) => Outcome::Ok,
                    Err(HvError::Timeout(_)) => Outcome::Timeout,
                    Err(HvError::ConnectionLost(_)) => Outcome::Lost,
                    Err(_) => Outcome::Failed,
                };
                (plan.step(*i), outcome)
            })
            .collect()
    }

    /// The allocation changes that ran, as the report shows them (stats
    /// periods are not allocation changes).
    pub(super) fn outcomes(&self, plan: &Plan) -> Vec<ActionOutcome> {
        // Sized once: a list grown by doubling leaves its smaller copies
        // behind in the heap.
        let mut out = Vec::with_capacity(self.results.len());
        out.extend(
            self.results
                .iter()
                .filter(|(i, _)| plan.step(*i).is_allocation())
                .map(|(i, r)| ActionOutcome {
                    action: plan.step(*i).clone(),
                    ok: r.is_ok(),
                    error: r.as_ref().err().map(ActionError::from),
                }),
        );
        out
    }

    /// The connection loss that stopped the actions, if one did.
    pub(super) fn lost(&self) -> Option<&HvError> {
        self.results.iter().find_map(|(_, r)| match r {
            Err(e @ HvError::ConnectionLost(_)) => Some(e),
            _ => None,
        })
    }
}

/// Runs the plan's actions; with `only`, just those on these domains
/// (UUIDs): the others are neither applied nor recorded nor reported.
/// Hands the plan back (the job borrows it, nothing is copied).
pub(super) async fn enforce(
    hv: &HvWorker,
    plan: Plan,
    only: Option<&HashSet<String>>,
    cycle: u64,
    timings: &mut Timings,
) -> (Plan, Ran) {
    let picked: Vec<usize> = (0..plan.step_count())
        .filter(|&i| only.is_none_or(|o| o.contains(plan.step(i).uuid())))
        .collect();
    if picked.is_empty() {
        return (plan, Ran::default());
    }
    let t = Instant::now();
    let plan = Arc::new(plan);
    let job_plan = plan.clone();
    let job_picked = picked.clone();
    let answers = hv
            .run(move |hv| {
                let plan = &*job_plan;
                let mut guard = Guard::new(plan);
                let mut lost: Option<HvError> = None;
                let mut out = Vec::with_capacity(job_picked.len());
                for action in job_picked.iter().map(|&i| plan.step(i)) {
                    let r = if let Some(e) = &lost {
                        Err(e.clone())
                    } else if let Err(v) = guard.check(action) {
                        tracing::error!(domain = action.domain(), violation = %v, "action refused by the safety check");
                        Err(HvError::Refused(v.to_string()))
                    } else {
                        hv.apply(action)
                    };
                    match &r {
                        Ok(()) => guard.applied(action),
                        Err(e) if e.is_connection() && lost.is_none() => lost = Some(e.clone()),
                        Err(_) => {}
                    }
                    out.push(r);
                }
                out
            })
            .await;
    timings.enforce += t.elapsed();
    // The job's reference is dropped once it has run: the plan is ours.
    let plan = Arc::try_unwrap(plan).unwrap_or_else(|p| (*p).clone());
    let answers = match answers {
        Ok(r) => r,
        Err(e) => vec![Err(e); picked.len()],
    };
    let ran = Ran {
        results: picked.into_iter().zip(answers).collect(),
    };
    for (i, r) in &ran.results {
        log_action(plan.step(*i), r, cycle);
    }
    (plan, ran)
}

/// One structured event per action (stats periods at debug level).
fn log_action(a: &Action, r: &Result<(), HvError>, cycle: u64) {
    if !a.is_allocation() {
        if let Err(e) = r {
            tracing::debug!(domain = a.domain(), error = %e, "cannot set balloon stats period");
        }
        return;
    }
    if let (Err(HvError::Timeout(_)), Action::SetVcpus { from, to, .. }) = (r, a) {
        // Logged once: the planner sends no vCPU change to this domain
        // again in this run of it (see History::vcpus_frozen).
        tracing::warn!(
            domain = a.domain(),
            from,
            to,
            "vCPU change timed out: vCPU count held (pending) until libvirt shows {to} vCPUs or the domain restarts; no vCPU is added back after a timed-out removal"
        );
    }
    let change = crate::core::words::action_change(a);
    // Both outcomes log the same fields, at their level, with their own.
    macro_rules! log {
        ($level:ident, $($outcome:tt)+) => {
            tracing::$level!(
                cycle,
                domain = a.domain(),
                uuid = a.uuid(),
                resource = a.resource_label(),
                before = change.before,
                after = change.after,
                reason = change.reason,
                $($outcome)+
            )
        };
    }
    match r {
        Ok(()) => log!(info, result = "ok", "applied"),
        Err(e) => log!(warn, result = "error", error = %e, "action failed"),
    }
}
