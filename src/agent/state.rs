//! Runtime changes made through the API — runtime pools, members added or
//! removed, reservations, pause — and their atomic persistence in
//! `state_dir/state.json` (write temp, fsync, rename, fsync dir; through
//! [`crate::agent::safe_fs`]: no symbolic link followed, files 0600, a directory
//! others may write to refused). Loading reads at most
//! [`MAX_STATE_BYTES`] from a regular file; what the entries must satisfy
//! is in [`crate::agent::state_check`].
//!
//! The effective configuration is the config file ⊕ this state
//! ([`RuntimeState::effective`]).
//!
//! Also kept there, written by the monitor: `state_dir/vcpu-holds.json`,
//! the vCPU changes libvirt reported as timed out ([`VcpuHolds`]), so an
//! agent restart does not undo a hold.

use crate::core::config::{self, Config, PoolSpec};
use crate::core::model::PerResource;
use crate::core::planner::{PendingVcpus, Reservations};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Version of the state file format this build writes and reads.
pub const STATE_VERSION: u32 = 1;
/// File name inside `state_dir`.
pub const STATE_FILE: &str = "state.json";
/// File name inside `state_dir` of the held vCPU changes.
pub const HOLDS_FILE: &str = "vcpu-holds.json";
/// Version of the holds file format.
pub const HOLDS_VERSION: u32 = 1;
/// Largest state or holds file read (64 MiB: some hundred thousand
/// entries).
pub const MAX_STATE_BYTES: u64 = 64 << 20;

/// Why the state could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{file}: cannot read state: {source} (fix the file, or start with --reset-state to move it aside)")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: corrupt state: {message} (fix the file, or start with --reset-state to move it aside)")]
    Corrupt { file: PathBuf, message: String },
    #[error("{file}: refusing to read state: {problem} (remove it, or start with --reset-state to move it aside)")]
    Unsafe { file: PathBuf, problem: String },
    #[error("{file}: cannot write state: {source}")]
    Write {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Dir(#[from] crate::agent::safe_fs::DirError),
}

impl StateError {
    /// Whether a restart cannot fix it: the file or its directory must be
    /// fixed first (a corrupt or unsafe file, an unsafe directory).
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            StateError::Corrupt { .. }
                | StateError::Unsafe { .. }
                | StateError::Dir(crate::agent::safe_fs::DirError::Unsafe { .. })
        )
    }
}

/// A runtime entry that does not fit the config it is applied to: left
/// out of the effective config (see [`RuntimeState::effective`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StateProblem {
    #[error("runtime pool {pool:?} has the name of a pool in the config file")]
    NameTaken { pool: String },
    #[error("runtime {0}")]
    InvalidPool(config::PoolError),
    #[error("{0}")]
    Conflict(config::MembershipConflict),
    #[error(
        "{} domain(s) added to pool {pool:?}, which does not exist ({})",
        .domains.len(),
        list(.domains)
    )]
    AddedToMissingPool { pool: String, domains: Vec<String> },
    #[error(
        "{} domain(s) removed from pool {pool:?}, which does not exist ({})",
        .domains.len(),
        list(.domains)
    )]
    RemovedFromMissingPool { pool: String, domains: Vec<String> },
    #[error(
        "reservations of {} domain(s) in pool {pool:?}, which does not exist ({})",
        .domains.len(),
        list(.domains)
    )]
    ReservationsInMissingPool { pool: String, domains: Vec<String> },
    #[error("pause of pool {pool:?}, which does not exist")]
    PauseOfMissingPool { pool: String },
}

impl StateProblem {
    /// The pool the entry names.
    pub fn pool(&self) -> &str {
        match self {
            StateProblem::NameTaken { pool }
            | StateProblem::AddedToMissingPool { pool, .. }
            | StateProblem::RemovedFromMissingPool { pool, .. }
            | StateProblem::ReservationsInMissingPool { pool, .. }
            | StateProblem::PauseOfMissingPool { pool } => pool,
            StateProblem::InvalidPool(e) => &e.pool,
            StateProblem::Conflict(c) => &c.second,
        }
    }
}

/// The first names of a list, for a message.
fn list(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = names
        .iter()
        .take(SHOWN)
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

/// Several [`StateProblem`]s as one error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct StateProblems(pub Vec<StateProblem>);

/// The config file ⊕ the runtime entries that fit it, and those that do
/// not (see [`RuntimeState::effective`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    pub config: Config,
    pub problems: Vec<StateProblem>,
}

impl Effective {
    /// The config when every entry fits, else every problem.
    pub fn strict(self) -> Result<Config, StateProblems> {
        if self.problems.is_empty() {
            Ok(self.config)
        } else {
            Err(StateProblems(self.problems))
        }
    }
}

/// Everything changed at run time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeState {
    pub version: u32,
    /// Pools created through the API.
    #[serde(default)]
    pub pools: BTreeMap<String, PoolSpec>,
    /// Domains added to a pool through the API (pool → domains).
    #[serde(default)]
    pub added: BTreeMap<String, BTreeSet<String>>,
    /// Domains removed from a pool through the API (pool → domains).
    #[serde(default)]
    pub removed: BTreeMap<String, BTreeSet<String>>,
    /// Reservations (raised `min`) per pool and domain.
    #[serde(default)]
    pub reservations: Reservations,
    /// Agent-wide pause.
    #[serde(default)]
    pub paused: bool,
    /// Paused pools.
    #[serde(default)]
    pub paused_pools: BTreeSet<String>,
}

impl RuntimeState {
    pub fn new() -> RuntimeState {
        RuntimeState {
            version: STATE_VERSION,
            ..Default::default()
        }
    }

    /// The config file ⊕ runtime changes: what fits is applied, what does
    /// not is left out and returned as problems (a runtime pool whose name
    /// the config file now uses or whose spec is invalid; a domain a pool
    /// lists that another pool listed first; members added or removed,
    /// reservations and pauses of a pool that does not exist). A pause of
    /// a pool that exists always applies.
    pub fn effective(&self, base: &Config) -> Effective {
        let mut cfg = base.clone();
        let mut problems = Vec::new();
        // Domain listed explicitly → the pool that lists it, the config
        // file's first; a domain removed from a pool at run time is not
        // listed there. A map, not `Vec::contains`: linear in the entries
        // (a list of 300,000 took minutes).
        let removed_from =
            |pool: &str, d: &str| self.removed.get(pool).is_some_and(|s| s.contains(d));
        let mut listed: HashMap<String, String> = HashMap::new();
        for p in cfg.pools.values() {
            for d in p.domains.iter().filter(|d| !removed_from(&p.name, d)) {
                listed.entry(d.clone()).or_insert_with(|| p.name.clone());
            }
        }
        let conflict = |d: &str, first: &str, second: &str| {
            StateProblem::Conflict(config::MembershipConflict {
                domain: d.to_owned(),
                first: first.to_owned(),
                second: second.to_owned(),
            })
        };
        for (name, spec) in &self.pools {
            if cfg.pools.contains_key(name) {
                problems.push(StateProblem::NameTaken { pool: name.clone() });
                continue;
            }
            match Config::validate_pool(name, spec) {
                Ok(mut p) => {
                    p.runtime = true;
                    p.domains.retain(|d| match listed.get(d) {
                        _ if removed_from(name, d) => false,
                        Some(first) if first != name => {
                            problems.push(conflict(d, first, name));
                            false
                        }
                        _ => true,
                    });
                    for d in &p.domains {
                        listed.insert(d.clone(), name.clone());
                    }
                    cfg.pools.insert(name.clone(), p);
                }
                Err(e) => problems.extend(e.0.into_iter().map(StateProblem::InvalidPool)),
            }
        }
        for (pool, domains) in &self.added {
            let Some(p) = cfg.pools.get_mut(pool) else {
                problems.push(StateProblem::AddedToMissingPool {
                    pool: pool.clone(),
                    domains: domains.iter().cloned().collect(),
                });
                continue;
            };
            for d in domains {
                match listed.get(d) {
                    Some(first) if first == pool => {}
                    Some(first) => problems.push(conflict(d, first, pool)),
                    None => {
                        p.domains.push(d.clone());
                        listed.insert(d.clone(), pool.clone());
                    }
                }
            }
        }
        for (pool, domains) in &self.removed {
            match cfg.pools.get_mut(pool) {
                Some(p) => {
                    p.domains.retain(|d| !domains.contains(d));
                    p.exclude.extend(domains.iter().cloned());
                }
                None => problems.push(StateProblem::RemovedFromMissingPool {
                    pool: pool.clone(),
                    domains: domains.iter().cloned().collect(),
                }),
            }
        }
        for (pool, members) in &self.reservations {
            if !cfg.pools.contains_key(pool) {
                problems.push(StateProblem::ReservationsInMissingPool {
                    pool: pool.clone(),
                    domains: members.keys().cloned().collect(),
                });
            }
        }
        for name in &self.paused_pools {
            match cfg.pools.get_mut(name) {
                Some(p) => p.paused = true,
                None => problems.push(StateProblem::PauseOfMissingPool { pool: name.clone() }),
            }
        }
        Effective {
            config: cfg,
            problems,
        }
    }

    /// Reservation of a domain in a pool, if any.
    pub fn reservation(&self, pool: &str, domain: &str) -> Option<&PerResource<Option<u64>>> {
        self.reservations.get(pool)?.get(domain)
    }

    /// The domains added to `pool` at run time (made empty if none).
    pub fn added_to(&mut self, pool: &str) -> &mut BTreeSet<String> {
        self.added.entry(pool.to_string()).or_default()
    }

    /// The domains removed from `pool` at run time (made empty if none).
    pub fn removed_from(&mut self, pool: &str) -> &mut BTreeSet<String> {
        self.removed.entry(pool.to_string()).or_default()
    }

    /// The reservations in `pool` by domain (made empty if none).
    pub fn reservations_in(
        &mut self,
        pool: &str,
    ) -> &mut BTreeMap<String, PerResource<Option<u64>>> {
        self.reservations.entry(pool.to_string()).or_default()
    }

    /// Loads `state_dir/state.json`; a missing file is an empty state.
    pub fn load(state_dir: &Path) -> Result<RuntimeState, StateError> {
        let st = read_json(state_dir, STATE_FILE, STATE_VERSION, |s: &RuntimeState| {
            s.version
        })?;
        Ok(st.unwrap_or_else(RuntimeState::new))
    }

    /// Writes atomically: temp file, fsync, rename, fsync directory.
    pub fn save(&self, state_dir: &Path) -> Result<(), StateError> {
        write_json(state_dir, STATE_FILE, self)
    }

    /// Moves a state file aside (`state.json.corrupt-<unix time>`) so the
    /// agent can start fresh. Returns the new path, if there was a file.
    pub fn reset(state_dir: &Path) -> Result<Option<PathBuf>, StateError> {
        move_aside(state_dir, STATE_FILE)
    }
}

/// vCPU changes libvirt reported as timed out, by domain UUID, kept across
/// agent restarts. A guest that has not finished a vCPU removal gets no
/// vCPU added back until the domain itself restarts (a new libvirt domain
/// ID, `run`); without this file a restarted agent would forget the hold
/// and try again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuHolds {
    pub version: u32,
    #[serde(default)]
    pub holds: BTreeMap<String, HeldVcpus>,
}

/// One held vCPU change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldVcpus {
    /// vCPUs the domain had when the change was sent.
    pub from: u64,
    /// vCPUs requested.
    pub to: u64,
    /// libvirt ID of the domain's run the change timed out in.
    pub run: u32,
}

impl VcpuHolds {
    /// The holds tied to a run (those not yet tied to one are not kept: the
    /// cycle that recorded them ties them before they are saved).
    pub fn from_pending(pending: &BTreeMap<Arc<str>, PendingVcpus>) -> VcpuHolds {
        VcpuHolds {
            version: HOLDS_VERSION,
            holds: pending
                .iter()
                .filter_map(|(uuid, p)| {
                    let run = p.run?;
                    Some((
                        uuid.to_string(),
                        HeldVcpus {
                            from: p.from,
                            to: p.to,
                            run,
                        },
                    ))
                })
                .collect(),
        }
    }

    /// As the planner's history holds them; `since` (the time of the
    /// timeout on the agent's clock) is `now`.
    pub fn to_pending(&self, now: u64) -> BTreeMap<Arc<str>, PendingVcpus> {
        self.holds
            .iter()
            .map(|(uuid, h)| {
                (
                    uuid.as_str().into(),
                    PendingVcpus {
                        from: h.from,
                        to: h.to,
                        since: now,
                        run: Some(h.run),
                    },
                )
            })
            .collect()
    }

    /// Loads `state_dir/vcpu-holds.json`; a missing file is no holds.
    pub fn load(state_dir: &Path) -> Result<VcpuHolds, StateError> {
        let h = read_json(state_dir, HOLDS_FILE, HOLDS_VERSION, |h: &VcpuHolds| {
            h.version
        })?;
        Ok(h.unwrap_or(VcpuHolds {
            version: HOLDS_VERSION,
            holds: BTreeMap::new(),
        }))
    }

    /// Writes atomically (see [`RuntimeState::save`]).
    pub fn save(&self, state_dir: &Path) -> Result<(), StateError> {
        write_json(state_dir, HOLDS_FILE, self)
    }

    /// Moves the file aside (`vcpu-holds.json.corrupt-<unix time>`).
    pub fn reset(state_dir: &Path) -> Result<Option<PathBuf>, StateError> {
        move_aside(state_dir, HOLDS_FILE)
    }
}

/// Reads `state_dir/name` as JSON: `None` when there is no such file. A
/// file that does not parse, or whose version (`version`) is not `want`,
/// is corrupt.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    state_dir: &Path,
    name: &str,
    want: u32,
    version: impl Fn(&T) -> u32,
) -> Result<Option<T>, StateError> {
    let file = state_dir.join(name);
    let text = match crate::agent::safe_fs::read_regular(&file, MAX_STATE_BYTES) {
        Ok(Some(t)) => t,
        Ok(None) => return Ok(None),
        Err(crate::agent::safe_fs::FileError::Unsafe(problem)) => {
            return Err(StateError::Unsafe { file, problem })
        }
        Err(crate::agent::safe_fs::FileError::Io(source)) => {
            return Err(StateError::Read { file, source })
        }
    };
    let v: T = serde_json::from_slice(&text).map_err(|e| StateError::Corrupt {
        file: file.clone(),
        message: e.to_string(),
    })?;
    if version(&v) != want {
        return Err(StateError::Corrupt {
            file,
            message: format!(
                "version {} is not the version this build reads ({want})",
                version(&v)
            ),
        });
    }
    Ok(Some(v))
}

/// Writes `value` as JSON to `state_dir/name` (see
/// [`crate::agent::safe_fs::write_atomic`]), creating `state_dir` (0700) if needed
/// and refusing one that others may write to.
pub(crate) fn write_json<T: Serialize>(
    state_dir: &Path,
    name: &str,
    value: &T,
) -> Result<(), StateError> {
    let file = state_dir.join(name);
    let werr = |source| StateError::Write {
        file: file.clone(),
        source,
    };
    crate::agent::safe_fs::ensure_dir(state_dir, STATE_DIR_MODE)?;
    crate::agent::safe_fs::write_atomic_with(state_dir, name, |w| {
        serde_json::to_writer_pretty(&mut *w, value).map_err(std::io::Error::other)?;
        std::io::Write::write_all(w, b"\n")
    })
    .map_err(werr)
}

/// Mode of `state_dir` when the agent creates it.
pub const STATE_DIR_MODE: u32 = 0o700;

/// Writes `state` to `state_dir/state.json.set-aside-<unix time>`: the
/// entries start-up set aside (see [`crate::agent::state_check`]), for the
/// operator. Returns the path.
pub fn write_set_aside(state_dir: &Path, state: &RuntimeState) -> Result<PathBuf, StateError> {
    let name = format!("{STATE_FILE}.set-aside-{}", unix_now());
    write_json(state_dir, &name, state)?;
    Ok(state_dir.join(name))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Renames `state_dir/name` to `name.corrupt-<unix time>`; the new path,
/// if there was a file.
pub(crate) fn move_aside(state_dir: &Path, name: &str) -> Result<Option<PathBuf>, StateError> {
    let file = state_dir.join(name);
    // Whatever is there (a link, a FIFO) is moved, never followed.
    if std::fs::symlink_metadata(&file).is_err() {
        return Ok(None);
    }
    let ts = unix_now();
    let aside = state_dir.join(format!("{name}.corrupt-{ts}"));
    std::fs::rename(&file, &aside).map_err(|source| StateError::Write {
        file: file.clone(),
        source,
    })?;
    Ok(Some(aside))
}

#[cfg(test)]
mod tests;
