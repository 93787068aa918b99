//! Which pool a domain belongs to. First match wins: an explicit
//! `domains = [...]` entry (name or UUID), then the domain's
//! `<virtpool:pool>` metadata element, then the first pool (by name) whose
//! `match` glob matches the domain name. A domain in no pool is unmanaged.

use crate::config::Pool;
use crate::model::DomainObs;
use globset::{Glob, GlobMatcher, GlobSet, GlobSetBuilder};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

/// Pre-compiled membership rules of a set of pools.
pub struct Membership {
    /// Domain name or UUID → index in `pools`.
    explicit: HashMap<String, usize>,
    /// Domain name or UUID → pools (indexes) it was removed from at run
    /// time.
    excluded: HashMap<String, Vec<usize>>,
    /// Every glob of every pool, in pool order then the pool's order: the
    /// lowest matching index wins.
    globs: Globs,
    /// Pool of each glob (index in `pools`), parallel to the globs.
    glob_pool: Vec<usize>,
    /// Pool names, sorted.
    pools: Vec<String>,
}

/// The compiled globs: one set (one pass over the name), or one matcher
/// per glob if the set could not be built.
enum Globs {
    Set(GlobSet),
    Each(Vec<GlobMatcher>),
}

thread_local! {
    /// Matching glob indexes (reused: no allocation per domain).
    static HITS: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
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
        let mut excluded: HashMap<String, Vec<usize>> = HashMap::new();
        let mut compiled = Vec::new();
        let mut glob_pool = Vec::new();
        for (k, p) in pools.values().enumerate() {
            for d in &p.exclude {
                excluded.entry(d.clone()).or_default().push(k);
            }
            for d in &p.domains {
                explicit.entry(d.clone()).or_insert(k);
            }
            for g in &p.globs {
                if let Ok(glob) = Glob::new(g) {
                    compiled.push(glob);
                    glob_pool.push(k);
                }
            }
        }
        let mut set = GlobSetBuilder::new();
        for g in &compiled {
            set.add(g.clone());
        }
        let globs = match set.build() {
            Ok(set) => Globs::Set(set),
            Err(_) => Globs::Each(compiled.iter().map(Glob::compile_matcher).collect()),
        };
        Membership {
            explicit,
            excluded,
            globs,
            glob_pool,
            pools: pools.keys().cloned().collect(),
        }
    }

    /// The pool of a domain and how it was matched, or `None` (unmanaged).
    /// A domain removed from the pool it matches is unmanaged.
    pub fn pool_of(&self, d: &DomainObs) -> Option<(&str, Via)> {
        self.pool_index_of(d)
            .map(|(k, via)| (self.pools[k].as_str(), via))
    }

    /// The names of the pools, sorted; [`Membership::pool_index_of`]
    /// indexes this list.
    pub(crate) fn pool_names(&self) -> &[String] {
        &self.pools
    }

    /// [`Membership::pool_of`] as an index in [`Membership::pool_names`].
    pub(crate) fn pool_index_of(&self, d: &DomainObs) -> Option<(usize, Via)> {
        let (k, via) = self.matching(d)?;
        if !self.excluded.is_empty() {
            let removed = |key: &String| self.excluded.get(key).is_some_and(|v| v.contains(&k));
            if removed(&d.name) || removed(&d.uuid) {
                return None;
            }
        }
        Some((k, via))
    }

    fn matching(&self, d: &DomainObs) -> Option<(usize, Via)> {
        if !self.explicit.is_empty() {
            if let Some(&k) = self
                .explicit
                .get(&d.name)
                .or_else(|| self.explicit.get(&d.uuid))
            {
                return Some((k, Via::Explicit));
            }
        }
        if let Some(m) = &d.metadata_pool {
            if let Ok(k) = self.pools.binary_search(m) {
                return Some((k, Via::Metadata));
            }
        }
        let first = match &self.globs {
            Globs::Set(set) if set.is_empty() => None,
            Globs::Set(set) => HITS.with(|hits| {
                let mut hits = hits.borrow_mut();
                set.matches_candidate_into(&globset::Candidate::new(&d.name), &mut hits);
                hits.iter().min().copied()
            }),
            Globs::Each(each) => each.iter().position(|g| g.is_match(&d.name)),
        };
        first.map(|g| (self.glob_pool[g], Via::Match))
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
