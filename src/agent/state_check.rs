//! What a state file read at start-up must satisfy, by the API's own rules
//! (names as [`config::valid_name`] and [`config::valid_domain_name`]
//! take them, amounts up to
//! [`config::max_amount`], runtime pools through
//! [`Config::validate_pool`] and [`config::budget_problems`]), and what
//! happens when it does not:
//!
//! - **Refused** (the agent does not start; the error names the file and
//!   the entries): values no API request could have written — an invalid
//!   name, an amount above the bounds, a runtime pool the API would answer
//!   400 to, a held vCPU change above the bounds. The file was written by
//!   something else than the agent, so none of it is trusted; the operator
//!   fixes it or moves it aside (`--reset-state`), as for a file that is
//!   not JSON.
//! - **Set aside** (the agent starts without them, says so in the log and
//!   the audit log, and keeps them in `state.json.set-aside-<time>`):
//!   well-formed entries that do not fit this config or this host — a
//!   runtime pool whose name the config file now uses, whose budgets no
//!   longer fit the host or whose domains another pool lists; entries
//!   (members added or removed, reservations, pauses) for pools that no
//!   longer exist. These follow from editing the config or moving to a
//!   smaller host: refusing to start would turn a config edit into an
//!   outage, and keeping them would make every API change fail (the
//!   effective config would not validate).

use crate::agent::state::{RuntimeState, StateError, VcpuHolds, HOLDS_FILE, STATE_FILE};
use crate::core::config::{self, Allocatable, Config, Pool};
use crate::core::model::Resource;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Problems listed in a refusal; the rest are counted.
const SHOWN: usize = 20;

/// Joins problems for a message: the first [`SHOWN`], then how many more.
fn list(problems: &[String]) -> String {
    let mut s = problems
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > SHOWN {
        s.push_str(&format!("; and {} more", problems.len() - SHOWN));
    }
    s
}

/// Values in `st` that no API request could have written (empty: none).
pub fn corrupt_entries(st: &RuntimeState) -> Vec<String> {
    let mut out = Vec::new();
    let mut name = |what: &str, s: &str, domain: bool| {
        let ok = if domain {
            config::valid_domain_name(s)
        } else {
            config::valid_name(s)
        };
        if let Err(e) = ok {
            out.push(format!("{what}: {e}"));
        }
    };
    for pool in st.added.keys() {
        name("added", pool, false);
    }
    for pool in st.removed.keys() {
        name("removed", pool, false);
    }
    for pool in st.reservations.keys() {
        name("reservations", pool, false);
    }
    for pool in &st.paused_pools {
        name("paused_pools", pool, false);
    }
    for (pool, domains) in st.added.iter().chain(&st.removed) {
        for d in domains {
            name(&format!("domains of pool {pool:?}"), d, true);
        }
    }
    for (pool, members) in &st.reservations {
        for d in members.keys() {
            name(&format!("reservations of pool {pool:?}"), d, true);
        }
    }
    for (pool, members) in &st.reservations {
        for (d, amounts) in members {
            for r in Resource::ALL {
                if let Some(v) = amounts.get(r).filter(|v| *v > config::max_amount(r)) {
                    out.push(format!(
                        "reservation of {d:?} in pool {pool:?}: {r} {v} is out of range (at most {})",
                        config::max_amount(r)
                    ));
                }
            }
        }
    }
    for (pool, spec) in &st.pools {
        if let Err(problems) = Config::validate_pool(pool, spec) {
            out.extend(problems.0.into_iter().map(|p| format!("runtime {p}")));
        }
    }
    out
}

/// Values in a holds file no agent could have written (empty: none).
pub fn corrupt_holds(h: &VcpuHolds) -> Vec<String> {
    let max = config::max_amount(Resource::Vcpus);
    h.holds
        .iter()
        .filter(|(_, x)| x.from > max || x.to > max)
        .map(|(uuid, x)| {
            format!(
                "hold of {uuid:?}: {} → {} vCPUs is out of range (at most {max})",
                x.from, x.to
            )
        })
        .collect()
}

/// Entries start-up took out of the state, and why.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SetAside {
    /// The entries, as a state file of their own.
    pub entries: RuntimeState,
    /// One line per entry (or group of entries of one pool).
    pub problems: Vec<String>,
}

impl SetAside {
    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Takes out of `st` the entries that do not fit `cfg` on a host with
/// `alloc` allocatable (see the module). `cfg`'s own pools are taken as
/// fitting (start-up checked them). Linear in the entries, but for the
/// budget check (runtime pools × pools).
pub fn set_aside_unfit(st: &mut RuntimeState, cfg: &Config, alloc: &Allocatable) -> SetAside {
    let mut aside = SetAside {
        entries: RuntimeState::new(),
        problems: Vec::new(),
    };
    // Pools that stay: the config file's, then the runtime ones that fit.
    let mut kept: BTreeMap<String, Pool> = cfg.pools.clone();
    // Domain listed by name or UUID → the pool that lists it (not where
    // it was removed at run time: a domain moved out of a config pool).
    let mut listed: HashMap<String, String> = HashMap::new();
    for p in cfg.pools.values() {
        let removed = st.removed.get(&p.name);
        for d in &p.domains {
            if !removed.is_some_and(|r| r.contains(d)) {
                listed.entry(d.clone()).or_insert_with(|| p.name.clone());
            }
        }
    }
    for (name, spec) in std::mem::take(&mut st.pools) {
        let problem = if cfg.pools.contains_key(&name) {
            Some(format!(
                "runtime pool {name:?} has the name of a pool in the config file"
            ))
        } else {
            match Config::validate_pool(&name, &spec) {
                Err(p) => Some(format!("runtime {p}")),
                Ok(mut pool) => {
                    pool.runtime = true;
                    let clash = pool.domains.iter().find_map(|d| {
                        listed
                            .get(d)
                            .map(|other| format!("domain {d:?} is listed in pool {other:?} too"))
                    });
                    let mut with = kept.clone();
                    with.insert(name.clone(), pool.clone());
                    let fit = config::budget_problems(&with, alloc);
                    if let Some(c) = clash {
                        Some(format!("runtime pool {name:?}: {c}"))
                    } else if !fit.is_empty() {
                        Some(format!(
                            "runtime pool {name:?} does not fit this host: {}",
                            config::BudgetProblems(fit)
                        ))
                    } else {
                        for d in &pool.domains {
                            listed.insert(d.clone(), name.clone());
                        }
                        kept.insert(name.clone(), pool);
                        None
                    }
                }
            }
        };
        match problem {
            Some(p) => {
                aside.problems.push(p);
                aside.entries.pools.insert(name, spec);
            }
            None => {
                st.pools.insert(name, spec);
            }
        }
    }
    let unknown = |pool: &str| !kept.contains_key(pool);
    for (pool, domains) in std::mem::take(&mut st.added) {
        if unknown(&pool) {
            aside.problems.push(format!(
                "{} domain(s) added to pool {pool:?}, which no longer exists",
                domains.len()
            ));
            aside.entries.added.insert(pool, domains);
            continue;
        }
        let mut keep = std::collections::BTreeSet::new();
        for d in domains {
            match listed.get(&d) {
                Some(other) if *other != pool => {
                    aside.problems.push(format!(
                        "domain {d:?} added to pool {pool:?} is listed in pool {other:?}"
                    ));
                    aside.entries.added_to(&pool).insert(d);
                }
                _ => {
                    listed.insert(d.clone(), pool.clone());
                    keep.insert(d);
                }
            }
        }
        if !keep.is_empty() {
            st.added.insert(pool, keep);
        }
    }
    set_aside_gone(
        &mut st.removed,
        &mut aside.entries.removed,
        &mut aside.problems,
        unknown,
        |pool, domains| {
            format!(
                "{} domain(s) removed from pool {pool:?}, which no longer exists",
                domains.len()
            )
        },
    );
    set_aside_gone(
        &mut st.reservations,
        &mut aside.entries.reservations,
        &mut aside.problems,
        unknown,
        |pool, members| {
            format!(
                "reservations of {} domain(s) in pool {pool:?}, which no longer exists",
                members.len()
            )
        },
    );
    for pool in std::mem::take(&mut st.paused_pools) {
        if unknown(&pool) {
            aside
                .problems
                .push(format!("pause of pool {pool:?}, which no longer exists"));
            aside.entries.paused_pools.insert(pool);
        } else {
            st.paused_pools.insert(pool);
        }
    }
    aside
}

/// Moves the entries of `from` whose pool is `gone` to `aside`, with the
/// `problem` of each; keeps the others.
fn set_aside_gone<V>(
    from: &mut BTreeMap<String, V>,
    aside: &mut BTreeMap<String, V>,
    problems: &mut Vec<String>,
    gone: impl Fn(&str) -> bool,
    problem: impl Fn(&str, &V) -> String,
) {
    for (pool, v) in std::mem::take(from) {
        if gone(&pool) {
            problems.push(problem(&pool, &v));
            aside.insert(pool, v);
        } else {
            from.insert(pool, v);
        }
    }
}

/// Loads `state_dir/state.json` for start-up: refused when corrupt (see
/// the module), with the entries that do not fit `cfg` on a host with
/// `alloc` taken out (the caller saves and reports them).
pub fn load(
    state_dir: &Path,
    cfg: &Config,
    alloc: &Allocatable,
) -> Result<(RuntimeState, SetAside), StateError> {
    let mut st = RuntimeState::load(state_dir)?;
    let bad = corrupt_entries(&st);
    if !bad.is_empty() {
        return Err(StateError::Corrupt {
            file: state_dir.join(STATE_FILE),
            message: list(&bad),
        });
    }
    let aside = set_aside_unfit(&mut st, cfg, alloc);
    Ok((st, aside))
}

/// Loads `state_dir/vcpu-holds.json`, refused when corrupt.
pub fn load_holds(state_dir: &Path) -> Result<VcpuHolds, StateError> {
    let holds = VcpuHolds::load(state_dir)?;
    let bad = corrupt_holds(&holds);
    if !bad.is_empty() {
        return Err(StateError::Corrupt {
            file: state_dir.join(HOLDS_FILE),
            message: list(&bad),
        });
    }
    Ok(holds)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::agent::state::HeldVcpus;
    use crate::core::model::PerResource;

    fn cfg() -> Config {
        Config::parse(
            "[host]\ncpus = 4\n[pools.web]\ndomains = [\"a\"]\nvcpus = { budget = 8 }\n",
            Path::new("/etc/virtpool/virtpool.toml"),
        )
        .unwrap()
    }

    fn alloc() -> Allocatable {
        PerResource {
            vcpus: 12,
            memory: 8 << 30,
            disk_bytes_sec: 0,
            disk_iops_sec: 0,
            cpu: 3000,
        }
    }

    fn spec(json: &str) -> config::PoolSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn values_the_api_refuses_make_the_file_corrupt() {
        let mut st = RuntimeState::new();
        st.reservations_in("web").insert(
            "a".into(),
            PerResource {
                vcpus: Some(u64::MAX),
                memory: Some(1 << 61),
                disk_bytes_sec: None,
                disk_iops_sec: None,
                cpu: None,
            },
        );
        st.added_to("web").insert("a/x".into());
        st.pools
            .insert("big".into(), spec(r#"{"vcpus": {"budget": 100000}}"#));
        let bad = corrupt_entries(&st).join("\n");
        for want in [
            "vcpus 18446744073709551615 is out of range (at most 65536)",
            "memory 2305843009213693952 is out of range",
            "\"a/x\" contains '/'",
            "vcpus.budget (100000) is out of range",
        ] {
            assert!(bad.contains(want), "{want}: {bad}");
        }
        assert!(corrupt_entries(&RuntimeState::new()).is_empty());

        let mut h = VcpuHolds::default();
        h.holds.insert(
            "u".into(),
            HeldVcpus {
                from: u64::MAX,
                to: 1,
                run: 1,
            },
        );
        assert_eq!(corrupt_holds(&h).len(), 1);
    }

    #[test]
    fn entries_that_do_not_fit_are_set_aside_and_the_rest_kept() {
        let mut st = RuntimeState::new();
        // 8 of 12 vCPUs taken by web: 4 fit, 100 do not.
        st.pools
            .insert("small".into(), spec(r#"{"vcpus": {"budget": 4}}"#));
        st.pools
            .insert("zbig".into(), spec(r#"{"vcpus": {"budget": 100}}"#));
        st.pools
            .insert("web".into(), spec(r#"{"vcpus": {"budget": 1}}"#));
        st.added_to("web")
            .extend(["b".to_string(), "c".to_string()]);
        st.added_to("gone").insert("d".into());
        st.added_to("small").insert("a".into());
        st.removed_from("gone").insert("e".into());
        st.reservations_in("gone")
            .insert("f".into(), PerResource::default());
        st.paused_pools.insert("gone".into());
        st.paused_pools.insert("web".into());
        let aside = set_aside_unfit(&mut st, &cfg(), &alloc());
        let text = aside.problems.join("\n");
        for want in [
            "runtime pool \"zbig\" does not fit this host: pool budgets for vcpus add up to 112",
            "runtime pool \"web\" has the name of a pool in the config file",
            "domain \"a\" added to pool \"small\" is listed in pool \"web\"",
            "1 domain(s) added to pool \"gone\"",
            "removed from pool \"gone\"",
            "reservations of 1 domain(s) in pool \"gone\"",
            "pause of pool \"gone\"",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
        assert_eq!(aside.problems.len(), 7, "{text}");
        assert_eq!(
            st.pools.keys().collect::<Vec<_>>(),
            vec!["small"],
            "the pool that fits stays"
        );
        assert_eq!(st.added["web"].len(), 2);
        assert!(!st.added.contains_key("gone") && !st.added.contains_key("small"));
        assert!(st.paused_pools.contains("web") && !st.paused_pools.contains("gone"));
        assert!(st.effective(&cfg()).problems.is_empty());
        assert!(aside.entries.pools.contains_key("zbig"));
        assert!(aside.entries.added["gone"].contains("d"));
        // Nothing to set aside: nothing moves.
        let mut again = st.clone();
        assert!(set_aside_unfit(&mut again, &cfg(), &alloc()).is_empty());
        assert_eq!(again, st);
        // A domain moved out of a config pool's list stays moved.
        let mut moved = RuntimeState::new();
        moved.removed_from("web").insert("a".into());
        moved.pools.insert(
            "small".into(),
            spec(r#"{"domains": ["a"], "vcpus": {"budget": 4}}"#),
        );
        let before = moved.clone();
        assert!(set_aside_unfit(&mut moved, &cfg(), &alloc()).is_empty());
        assert_eq!(moved, before);
        assert!(moved.effective(&cfg()).problems.is_empty());
    }
}
