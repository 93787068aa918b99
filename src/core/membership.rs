//! Which pool a domain belongs to. First match wins: an explicit
//! `domains = [...]` entry (name or UUID), then the domain's
//! `<virtpool:pool>` metadata element, then the first pool (by name) whose
//! `match` glob matches the domain name. A domain in no pool is unmanaged.

use crate::core::config::Pool;
use crate::core::glob::Glob;
use crate::core::model::DomainObs;
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;

/// Pre-compiled membership rules of a set of pools.
pub struct Membership {
    /// Domain name or UUID → index in `pools`.
    explicit: FxHashMap<String, usize>,
    /// Domain name or UUID → pools (indexes) it was removed from at run
    /// time.
    excluded: FxHashMap<String, Vec<usize>>,
    /// Every glob of every pool with its pool (index in `pools`), in pool
    /// order then the pool's order: the first that matches wins.
    globs: Vec<(Glob, usize)>,
    /// Pool names, sorted.
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
        let mut explicit = FxHashMap::default();
        let mut excluded: FxHashMap<String, Vec<usize>> = FxHashMap::default();
        let mut globs = Vec::new();
        for (k, p) in pools.values().enumerate() {
            for d in &p.exclude {
                excluded.entry(d.clone()).or_default().push(k);
            }
            for d in &p.domains {
                explicit.entry(d.clone()).or_insert(k);
            }
            for g in &p.globs {
                let Ok(glob) = Glob::new(g) else { continue };
                globs.push((glob, k));
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
            let removed = |key: &str| self.excluded.get(key).is_some_and(|v| v.contains(&k));
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
                .get(&*d.name)
                .or_else(|| self.explicit.get(&*d.uuid))
            {
                return Some((k, Via::Explicit));
            }
        }
        if let Some(m) = &d.metadata_pool {
            if let Ok(k) = self.pools.binary_search(m) {
                return Some((k, Via::Metadata));
            }
        }
        let word = crate::core::keys::head_word(&d.name);
        self.globs
            .iter()
            .find(|(g, _)| g.is_match_word(&d.name, word))
            .map(|&(_, k)| (k, Via::Match))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::Config;
    use crate::core::planner::testing::domain;
    use std::path::Path;

    fn dom(name: &str, meta: Option<&str>) -> DomainObs {
        DomainObs {
            uuid: format!("uuid-{name}").into(),
            id: None,
            vcpus_max: 1,
            memory_max: 1 << 30,
            active_secs: None,
            ..domain(name, meta)
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

    /// The first matching glob in pool order, then each pool's order, wins,
    /// as `globset` (whose syntax `match` follows) answers glob by glob.
    #[test]
    fn lowest_matching_glob_wins_across_kinds() {
        let c = Config::parse(
            r#"
[pools.a]
match = ["web-1?", "db"]
[pools.b]
match = ["web-*", "{db,cache}-*"]
[pools.c]
match = ["*-prod", "web-1*", "d[a-z]", "x\\*", "*"]
"#,
            Path::new("t.toml"),
        )
        .unwrap();
        let m = Membership::new(&c.pools);
        let order: Vec<(&str, globset::GlobMatcher)> = c
            .pools
            .values()
            .flat_map(|p| {
                p.globs.iter().map(|g| {
                    let g = globset::Glob::new(g).unwrap().compile_matcher();
                    (p.name.as_str(), g)
                })
            })
            .collect();
        let names = [
            "web-12", "web-1", "web-123", "db", "db-1", "cache-9", "api-prod", "dz", "d", "x*",
            "xy", "", "web-", "WEB-1", "web-1/2", "db/x",
        ];
        for name in names {
            let want = order
                .iter()
                .find(|(_, g)| g.is_match(name))
                .map(|(p, _)| (*p, Via::Match));
            assert_eq!(m.pool_of(&dom(name, None)), want, "{name:?}");
        }
        assert_eq!(m.pool_of(&dom("web-12", None)).map(|p| p.0), Some("a"));
        assert_eq!(m.pool_of(&dom("db-1", None)).map(|p| p.0), Some("b"));
        assert_eq!(m.pool_of(&dom("x*", None)).map(|p| p.0), Some("c"));
    }

    #[test]
    fn removed_domain_is_unmanaged_only_for_that_pool() {
        let mut c = Config::parse(
            "[pools.a]\nmatch = \"web-*\"\n[pools.b]\ndomains = [\"db\"]\n",
            Path::new("t.toml"),
        )
        .unwrap();
        c.pools.get_mut("a").unwrap().exclude = vec!["web-1".into(), "uuid-web-2".into()];
        c.pools.get_mut("b").unwrap().exclude = vec!["web-3".into()];
        let m = Membership::new(&c.pools);
        assert_eq!(m.pool_of(&dom("web-1", None)), None);
        assert_eq!(m.pool_of(&dom("web-2", None)), None);
        assert_eq!(m.pool_of(&dom("web-3", None)), Some(("a", Via::Match)));
        assert_eq!(m.pool_of(&dom("db", None)), Some(("b", Via::Explicit)));
    }

    #[test]
    fn no_pool_is_unmanaged() {
        let c = Config::parse("[pools.a]\nmatch = \"db-*\"\n", Path::new("t.toml")).unwrap();
        assert_eq!(Membership::new(&c.pools).pool_of(&dom("web", None)), None);
    }
}
