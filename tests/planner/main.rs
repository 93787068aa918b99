//! The planner, pure: worked examples with exact numbers, and properties
//! over generated hosts (proptest). Nothing outside this process.
#![allow(clippy::unwrap_used)]

use virtpool::core::planner::{MemberPlan, Plan};

/// Asserts that `plan` has an action matching `pattern`.
macro_rules! assert_action {
    ($plan:expr, $pattern:pat) => {
        assert!(
            $plan.actions.iter().any(|a| matches!(a, $pattern)),
            "{:?}",
            $plan.actions
        )
    };
}

mod cpu;
mod cpu_config;
mod cpu_props;
mod examples;
mod promises;
mod props;
mod rng;

/// The member `name` of whichever pool of `p` has it.
fn member<'a>(p: &'a Plan, name: &str) -> &'a MemberPlan {
    p.pools
        .iter()
        .flat_map(|x| &x.members)
        .find(|m| *m.name == *name)
        .unwrap_or_else(|| panic!("no member {name}"))
}
