//! What the planner remembers that must outlive the agent's process
//! (`state_dir/history.json`): the order members were admitted in
//! (admission is sticky, and a restart must not reshuffle it), what each
//! domain had before the agent first changed it (given back when it leaves
//! management, also after a restart) and which domains were released.
//! Saved after a cycle that changed it, atomically, like `state.json`.

use crate::agent::state::{move_aside, read_json, write_json, StateError};
use crate::core::config::{MAX_BYTES, MAX_VCPUS};
use crate::core::planner::{Admission, History, Originals, Released};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File name inside `state_dir`.
pub const HISTORY_FILE: &str = "history.json";
const VERSION: u32 = 1;
/// Domains the file may name (each map): more is not a file the agent
/// wrote.
const MAX_DOMAINS: usize = 1 << 20;

/// The saved part of the planner's history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedHistory {
    pub version: u32,
    #[serde(default)]
    pub admitted: BTreeMap<Arc<str>, Admission>,
    #[serde(default)]
    pub refused: BTreeMap<Arc<str>, String>,
    #[serde(default)]
    pub originals: BTreeMap<Arc<str>, Originals>,
    #[serde(default)]
    pub released: BTreeMap<Arc<str>, Released>,
}

impl SavedHistory {
    /// Whether `a` and `b` hold the same saved part (nothing to write):
    /// at once when they are one history, as after a cycle that changed
    /// nothing in it.
    pub fn same_part(a: &Arc<History>, b: &Arc<History>) -> bool {
        Arc::ptr_eq(a, b)
            || (a.admitted == b.admitted
                && a.refused == b.refused
                && a.originals == b.originals
                && a.released == b.released)
    }

    /// Writes the saved part of `h` atomically, without copying it.
    pub fn save_part(h: &History, state_dir: &Path) -> Result<(), StateError> {
        #[derive(Serialize)]
        struct Part<'a> {
            version: u32,
            admitted: &'a BTreeMap<Arc<str>, Admission>,
            refused: &'a BTreeMap<Arc<str>, String>,
            originals: &'a BTreeMap<Arc<str>, Originals>,
            released: &'a BTreeMap<Arc<str>, Released>,
        }
        let part = Part {
            version: VERSION,
            admitted: &h.admitted,
            refused: &h.refused,
            originals: &h.originals,
            released: &h.released,
        };
        write_json(state_dir, HISTORY_FILE, &part)
    }

    /// Puts the saved part into a history.
    pub fn restore_into(&self, h: &mut History) {
        h.admitted = Arc::new(self.admitted.clone());
        h.refused = Arc::new(self.refused.clone());
        h.originals = Arc::new(self.originals.clone());
        h.released = Arc::new(self.released.clone());
    }

    /// Loads `state_dir/history.json` (a missing file: nothing saved),
    /// refusing values no agent wrote.
    pub fn load(state_dir: &Path) -> Result<SavedHistory, StateError> {
        let saved = read_json(state_dir, HISTORY_FILE, VERSION, |h: &SavedHistory| {
            h.version
        })?
        .unwrap_or(SavedHistory {
            version: VERSION,
            ..SavedHistory::default()
        });
        let bad = saved.problems();
        if bad.is_empty() {
            Ok(saved)
        } else {
            Err(StateError::Corrupt {
                file: state_dir.join(HISTORY_FILE),
                message: bad.join("; "),
            })
        }
    }

    /// Moves the file aside (`history.json.corrupt-<unix time>`).
    pub fn reset(state_dir: &Path) -> Result<Option<PathBuf>, StateError> {
        move_aside(state_dir, HISTORY_FILE)
    }

    /// What in it no agent could have written.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (what, n) in [
            ("admitted", self.admitted.len()),
            ("refused", self.refused.len()),
            ("originals", self.originals.len()),
            ("released", self.released.len()),
        ] {
            if n > MAX_DOMAINS {
                out.push(format!("{what}: {n} domains (at most {MAX_DOMAINS})"));
            }
        }
        let uuid_ok = |u: &str| !u.is_empty() && u.len() <= 64;
        for u in self
            .admitted
            .keys()
            .chain(self.refused.keys())
            .chain(self.originals.keys())
            .chain(self.released.keys())
        {
            if !uuid_ok(u) {
                out.push(format!("{u:?} is not a domain UUID"));
            }
        }
        for (u, a) in &self.admitted {
            if crate::core::config::valid_name(&a.pool).is_err() {
                out.push(format!(
                    "admitted {u}: pool {:?} is not a pool name",
                    a.pool
                ));
            }
        }
        for (u, o) in &self.originals {
            if o.vcpus.is_some_and(|v| v == 0 || v > MAX_VCPUS) {
                out.push(format!("originals {u}: vcpus out of range"));
            }
            if o.memory.is_some_and(|m| m == 0 || m > MAX_BYTES) {
                out.push(format!("originals {u}: memory out of range"));
            }
            if o.iotune.len() > 256 || o.iotune.disks().any(|d| d.is_empty() || d.len() > 256) {
                out.push(format!("originals {u}: disks out of range"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_and_refusal() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(SavedHistory::load(dir.path()).unwrap().admitted.len(), 0);
        let mut h = History::default();
        Arc::make_mut(&mut h.admitted).insert(
            "u1".into(),
            Admission {
                pool: "web".into(),
                seq: 3,
            },
        );
        Arc::make_mut(&mut h.originals).insert(
            "u1".into(),
            Originals {
                vcpus: Some(4),
                ..Originals::default()
            },
        );
        let o = Arc::make_mut(&mut h.originals).get_mut("u1").unwrap();
        for disk in ["vdb", "vda"] {
            o.iotune.note(
                &disk.into(),
                crate::core::model::IoTune {
                    total_bytes_sec: 7,
                    ..Default::default()
                },
            );
        }
        let h = Arc::new(h);
        assert!(SavedHistory::same_part(&h, &Arc::new((*h).clone())));
        let mut other = (*h).clone();
        Arc::make_mut(&mut other.admitted).clear();
        assert!(!SavedHistory::same_part(&h, &Arc::new(other)));
        SavedHistory::save_part(&h, dir.path()).unwrap();
        let back = SavedHistory::load(dir.path()).unwrap();
        let mut h2 = History::default();
        back.restore_into(&mut h2);
        assert_eq!(h2.admitted, h.admitted);
        assert_eq!(h2.originals, h.originals);
        // A disk's limits are an object by target, in order.
        let text = std::fs::read_to_string(dir.path().join(HISTORY_FILE)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["originals"]["u1"]["iotune"]["vda"]["total_bytes_sec"], 7,
            "{text}"
        );
        let disks: Vec<&str> = h2.originals["u1"].iotune.disks().collect();
        assert_eq!(disks, ["vda", "vdb"]);
        // Values no agent writes are refused, naming them.
        std::fs::write(
            dir.path().join(HISTORY_FILE),
            r#"{"version":1,"originals":{"u1":{"vcpus":0}}}"#,
        )
        .unwrap();
        let e = SavedHistory::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("vcpus out of range"), "{e}");
    }
}
