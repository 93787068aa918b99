//! Which pool a domain belongs to. First match wins: an explicit
//! `domains = [...]` entry (name or UUID), then the domain's
//! `<virtpool:pool>` metadata element, then the first pool (by name) whose
//! `match` glob matches the domain name. A domain in no pool is unmanaged.

use crate::config::Pool;
use crate::model::DomainObs;
use globset::{Glob, GlobMatcher};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Pre-compiled membership rules of a set of pools.
pub struct Membership {
    explicit: HashMap<String, String>,
    /// (pool, domain name or UUID) pairs removed at run time.
    excluded: HashSet<(String, String)>,
    globs: Vec<(String, GlobMatcher)>,
    pools: Vec<String>,
}

/// How a domain came to be in its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    Explicit,
    Metadata,
    Match,
}

impl Membership {
    /// Compiles the rules. Invalid globs were rejected by config
    /// validation; any that slip through are skipped.
    pub fn new(pools: &BTreeMap<String, Pool>) -> Membership {
        let mut explicit = HashMap::new();
        let mut globs = Vec::new();
        let mut excluded = HashSet::new();
        for p in pools.values() {
            for d in &p.exclude {
                excluded.insert((p.name.clone(), d.clone()));
            }
            for d in &p.domains {
                explicit.entry(d.clone()).or_insert_with(|| p.name.clone());
            }
            for g in &p.globs {
                if let Ok(glob) = Glob::new(g) {
                    globs.push((p.name.clone(), glob.compile_matcher()));
                }
            }
        }
        Membership {
            explicit,
            excluded,
            globs,
            pools: pools.keys().cloned().collect(),
        }
    }

    /// The pool of a domain and how it was matched, or `None` (unmanaged).
    /// A domain removed from the pool it matches is unmanaged.
    pub fn pool_of(&self, d: &DomainObs) -> Option<(&str, Via)> {
        let found = self.matching(d)?;
        let removed = |k: &String| self.excluded.contains(&(found.0.to_owned(), k.clone()));
        if !self.excluded.is_empty() && (removed(&d.name) || removed(&d.uuid)) {
            return None;
        }
        Some(found)
    }

    fn matching(&self, d: &DomainObs) -> Option<(&str, Via)> {
        if let Some(p) = self
            .explicit
            .get(&d.name)
            .or_else(|| self.explicit.get(&d.uuid))
        {
            return Some((p.as_str(), Via::Explicit));
        }
        if let Some(m) = &d.metadata_pool {
            if let Some(p) = self.pools.iter().find(|p| *p == m) {
                return Some((p.as_str(), Via::Metadata));
            }
        }
        self.globs
            .iter()
            .find(|(_, g)| g.is_match(&d.name))
            .map(|(p, _)| (p.as_str(), Via::Match))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::model::DomainState;
    use std::path::Path;

    fn dom(name: &str, meta: Option<&str>) -> DomainObs {
        DomainObs {
            name: name.into(),
            uuid: format!("uuid-{name}"),
            id: None,
            state: DomainState::Running,
            vcpus: 1,
            vcpus_max: 1,
            memory: 1 << 30,
            memory_max: 1 << 30,
            balloon: None,
            disks: vec![],
            metadata_pool: meta.map(Into::into),
            cpu_shares: None,
            blkio_weight: None,
            active_secs: None,
        }
    }

    #[test]
    fn first_match_wins() {
        let c = Config::parse(
            r#"
[pools.a]
match = "web-*"
[pools.b]
domains = ["web-9", "uuid-x"]
match = ["*"]
"#,
            Path::new("t.toml"),
        )
        .unwrap();
        let m = Membership::new(&c.pools);
        assert_eq!(
            m.pool_of(&dom("web-9", Some("a"))),
            Some(("b", Via::Explicit))
        );
        assert_eq!(m.pool_of(&dom("x", None)).map(|p| p.0), Some("b"));
        assert_eq!(
            m.pool_of(&dom("web-1", Some("b"))),
            Some(("b", Via::Metadata))
        );
        assert_eq!(m.pool_of(&dom("web-1", None)), Some(("a", Via::Match)));
        assert_eq!(
            m.pool_of(&dom("web-1", Some("nope"))),
            Some(("a", Via::Match))
        );
        let uuid = DomainObs {
            uuid: "uuid-x".into(),
            ..dom("q", None)
        };
        assert_eq!(m.pool_of(&uuid), Some(("b", Via::Explicit)));
    }

    #[test]
    fn no_pool_is_unmanaged() {
        let c = Config::parse("[pools.a]\nmatch = \"db-*\"\n", Path::new("t.toml")).unwrap();
        assert_eq!(Membership::new(&c.pools).pool_of(&dom("web", None)), None);
    }
}
