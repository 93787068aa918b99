//! Step 3 of a cycle: the pure planner on what was observed. The only
//! state kept here is the compiled membership rules (globs are compiled
//! once per pool set, not every cycle).

use super::inputs::{Inputs, Timings};
use crate::core::config::Pool;
use crate::core::membership::Membership;
use crate::core::model::DomainObs;
use crate::core::planner::{self, History, Plan, PlanInput};
use std::collections::BTreeMap;
use std::time::Instant;

/// The membership rules compiled for the last pool set.
#[derive(Default)]
pub(super) struct Planning {
    membership: Option<(BTreeMap<String, Pool>, Membership)>,
}

impl Planning {
    /// The membership rules of `pools`, compiled when the pools changed.
    fn membership(&mut self, pools: &BTreeMap<String, Pool>) -> &Membership {
        if self.membership.as_ref().is_none_or(|(p, _)| p != pools) {
            self.membership = Some((pools.clone(), Membership::new(pools)));
        }
        &self.membership.as_ref().expect("set just above").1
    }
}

impl Planning {
    /// Plans the host on `domains` with the cycle's inputs and the history.
    pub(super) fn plan(
        &mut self,
        inputs: &Inputs,
        domains: &[DomainObs],
        history: &History,
        now: u64,
        timings: &mut Timings,
    ) -> Plan {
        let membership = self.membership(&inputs.effective.pools);
        let t = Instant::now();
        let plan = planner::plan_with(
            &PlanInput {
                config: &inputs.effective,
                host: inputs.host,
                domains,
                reservations: &inputs.runtime.reservations,
                history,
                now,
                paused: inputs.runtime.paused,
            },
            membership,
        );
        timings.plan += t.elapsed();
        plan
    }
}
