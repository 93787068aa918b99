//! A reloaded config against the runtime state (pools created, members
//! added or removed, reservations and pauses made through the API):
//!
//! - **refused** when the file's pools and the runtime pools together
//!   exceed what the host can give (the running config stays; the error
//!   names both and the numbers);
//! - entries that no longer fit the new file — a runtime pool whose name
//!   the file now uses, entries of a pool the file no longer has (a pool
//!   renamed), a domain the file now lists in another pool — are **set
//!   aside** as at start-up ([`crate::agent::state_check`]): kept in
//!   `state.json.set-aside-<time>` for the operator, logged, recorded in
//!   the audit log; the rest of the runtime state stays in force (a
//!   paused pool stays paused).

use crate::agent::state::{self, RuntimeState, StateError};
use crate::agent::state_check;
use crate::core::config::{self, Allocatable, BudgetProblems, Config};
use std::path::PathBuf;
use std::sync::Mutex;

/// The file's pools and the runtime pools do not fit the host together.
#[derive(Debug, thiserror::Error)]
#[error(
    "{file}: with the runtime pools ({}) {problems}: lower a budget in the file, \
     or delete or shrink a runtime pool (virtpoolctl pool delete NAME)",
    .runtime.join(", ")
)]
pub struct RuntimeDoesNotFit {
    pub file: PathBuf,
    /// The runtime pools counted.
    pub runtime: Vec<String>,
    pub problems: BudgetProblems,
}

/// What a reload set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAsideOnReload {
    /// Where the entries are kept.
    pub file: PathBuf,
    pub problems: Vec<String>,
}

/// Whether the runtime pools that would stay under `cfg` (those whose name
/// the file does not use) fit `alloc` together with the file's pools.
pub fn check(
    st: &RuntimeState,
    cfg: &Config,
    alloc: &Allocatable,
) -> Result<(), RuntimeDoesNotFit> {
    let mut pools = cfg.pools.clone();
    let mut runtime = Vec::new();
    for (name, spec) in &st.pools {
        if cfg.pools.contains_key(name) {
            continue;
        }
        if let Ok(p) = Config::validate_pool(name, spec) {
            runtime.push(name.clone());
            pools.insert(name.clone(), p);
        }
    }
    let problems = config::budget_problems(&pools, alloc);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(RuntimeDoesNotFit {
            file: cfg.source.clone(),
            runtime,
            problems: BudgetProblems(problems),
        })
    }
}

/// Checks the runtime state under its lock (see [`check`]) and sets aside
/// what does not fit `cfg`: the entries go to a file of their own in
/// `cfg.agent.state_dir`, the rest is saved as `state.json` and stays.
/// `Ok(None)`: nothing set aside.
pub fn apply(
    runtime: &Mutex<RuntimeState>,
    cfg: &Config,
    alloc: &Allocatable,
) -> Result<Option<SetAsideOnReload>, ReloadStateError> {
    let mut guard = runtime.lock().unwrap_or_else(|p| p.into_inner());
    check(&guard, cfg, alloc).map_err(ReloadStateError::DoesNotFit)?;
    let mut next = guard.clone();
    let aside = state_check::set_aside_unfit(&mut next, cfg, alloc);
    if aside.is_empty() {
        return Ok(None);
    }
    let dir = &cfg.agent.state_dir;
    let file = state::write_set_aside(dir, &aside.entries).map_err(ReloadStateError::State)?;
    next.save(dir).map_err(ReloadStateError::State)?;
    *guard = next;
    Ok(Some(SetAsideOnReload {
        file,
        problems: aside.problems,
    }))
}

/// Why [`apply`] did not go through.
#[derive(Debug, thiserror::Error)]
pub enum ReloadStateError {
    /// The reload is refused.
    #[error(transparent)]
    DoesNotFit(RuntimeDoesNotFit),
    /// The entries could not be set aside (the state stays as it was; its
    /// entries that do not fit are left out of every cycle and reported).
    #[error("cannot set aside runtime state entries: {0}")]
    State(StateError),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::core::model::PerResource;
    use std::path::Path;

    fn cfg(dir: &Path, pools: &str) -> Config {
        Config::parse(
            &format!("[agent]\nstate_dir = \"{}\"\n{pools}", dir.display()),
            Path::new("/etc/virtpool/virtpool.toml"),
        )
        .unwrap()
    }

    fn alloc() -> Allocatable {
        PerResource {
            vcpus: 124,
            memory: 64 << 30,
            disk_bytes_sec: 0,
            disk_iops_sec: 0,
            cpu: 0,
        }
    }

    #[test]
    fn a_reload_that_leaves_no_room_for_the_runtime_pools_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = RuntimeState::new();
        st.pools.insert(
            "extra".into(),
            serde_json::from_str(r#"{"vcpus": {"budget": 2}}"#).unwrap(),
        );
        st.paused_pools.insert("web".into());
        let c = cfg(dir.path(), "[pools.web]\nvcpus = { budget = 124 }\n");
        let m = Mutex::new(st.clone());
        let e = apply(&m, &c, &alloc()).unwrap_err().to_string();
        assert_eq!(
            e,
            "/etc/virtpool/virtpool.toml: with the runtime pools (extra) pool budgets for vcpus \
             add up to 126 (extra 2 + web 124) but the host has only 124 allocatable: lower a \
             budget in the file, or delete or shrink a runtime pool (virtpoolctl pool delete NAME)"
        );
        assert_eq!(*m.lock().unwrap(), st, "nothing changed");
        let c = cfg(dir.path(), "[pools.web]\nvcpus = { budget = 122 }\n");
        assert_eq!(apply(&m, &c, &alloc()).unwrap(), None);
        assert_eq!(*m.lock().unwrap(), st);
    }

    #[test]
    fn entries_of_a_renamed_pool_are_set_aside_and_the_rest_stays() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = RuntimeState::new();
        st.added_to("batch").insert("b-1".into());
        st.paused_pools.insert("batch".into());
        st.paused_pools.insert("web".into());
        st.save(dir.path()).unwrap();
        let m = Mutex::new(st);
        let c = cfg(
            dir.path(),
            "[pools.web]\nvcpus = { budget = 8 }\n[pools.jobs]\nvcpus = { budget = 8 }\n",
        );
        let aside = apply(&m, &c, &alloc()).unwrap().unwrap();
        assert!(aside.file.starts_with(dir.path()), "{aside:?}");
        assert_eq!(
            aside.problems,
            vec![
                "1 domain(s) added to pool \"batch\", which no longer exists".to_string(),
                "pause of pool \"batch\", which no longer exists".to_string()
            ]
        );
        let kept = m.lock().unwrap().clone();
        assert!(kept.added.is_empty());
        assert_eq!(kept.paused_pools.iter().collect::<Vec<_>>(), vec!["web"]);
        assert_eq!(RuntimeState::load(dir.path()).unwrap(), kept, "saved");
        let in_file: RuntimeState =
            serde_json::from_slice(&std::fs::read(&aside.file).unwrap()).unwrap();
        assert!(in_file.added["batch"].contains("b-1"));
        assert!(kept.effective(&c).problems.is_empty());
    }
}
