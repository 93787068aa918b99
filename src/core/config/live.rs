//! A config against the live host (what `virtpoold --check-config` does
//! when libvirt answers), and its `agent.libvirt_uri` against the files
//! it names. Pure: the caller observes the domains and says which paths
//! exist.
//!
//! - **Warnings**: a pool's `domains` entry or `members` override naming
//!   a domain libvirt does not know (by name or UUID) — it may be defined
//!   later, or it is a typo.
//! - **Errors**: a floor no member can ever have — a member's `vcpus.min`
//!   above the vCPUs its domain can have, a `memory.min` above its
//!   maximum memory, a `cpu.min` above its maximum vCPUs' worth of CPU
//!   time — and a `libvirt_uri` whose socket (`?socket=`) or
//!   test-driver file does not exist.

use crate::core::config::Config;
use crate::core::membership::Membership;
use crate::core::model::{DomainObs, Resource};
use std::path::Path;

fn human(r: &Resource, v: &u64) -> String {
    r.human(*v)
}

/// Something to look at, not a reason to refuse the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LiveWarning {
    #[error("pool {pool:?}: domains lists {domain:?}, which libvirt does not know (no domain has that name or UUID)")]
    UnknownListed { pool: String, domain: String },
    #[error("pool {pool:?}: members.{domain:?} overrides a domain libvirt does not know (no domain has that name or UUID)")]
    UnknownOverride { pool: String, domain: String },
}

/// A reason to refuse the file on this host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LiveError {
    #[error(
        "pool {pool:?}: domain {domain:?} gets {resource}.min {} but can have at most {} (its maximum): it could never be managed",
        human(.resource, .min),
        human(.resource, .max)
    )]
    FloorAboveMaximum {
        pool: String,
        domain: String,
        resource: Resource,
        min: u64,
        max: u64,
    },
    #[error("agent.libvirt_uri ({uri}) names the socket {path}, which does not exist")]
    MissingSocket { uri: String, path: String },
    #[error("agent.libvirt_uri ({uri}) names the test driver file {path}, which does not exist")]
    MissingFile { uri: String, path: String },
}

/// What [`against_domains`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveCheck {
    pub warnings: Vec<LiveWarning>,
    pub errors: Vec<LiveError>,
}

/// Checks `cfg`'s pools against the domains libvirt has (see the module).
pub fn against_domains(cfg: &Config, domains: &[DomainObs]) -> LiveCheck {
    let mut out = LiveCheck::default();
    let known: std::collections::HashSet<String> = domains
        .iter()
        .flat_map(|d| [d.name.to_string(), d.uuid.to_ascii_lowercase()])
        .collect();
    let knows = |k: &str| known.contains(k) || known.contains(&k.to_ascii_lowercase());
    for p in cfg.pools.values() {
        for d in p.domains.iter().filter(|d| !knows(d)) {
            out.warnings.push(LiveWarning::UnknownListed {
                pool: p.name.clone(),
                domain: d.clone(),
            });
        }
        for d in p.members.keys().filter(|d| !knows(d)) {
            out.warnings.push(LiveWarning::UnknownOverride {
                pool: p.name.clone(),
                domain: d.clone(),
            });
        }
    }
    let membership = Membership::new(&cfg.pools);
    for d in domains {
        let Some(p) = membership
            .pool_of(d)
            .and_then(|(name, _)| cfg.pools.get(name))
        else {
            continue;
        };
        for (r, max) in [
            (Resource::Vcpus, d.vcpus_max),
            (Resource::Memory, d.memory_max),
            (
                Resource::Cpu,
                d.vcpus_max.saturating_mul(crate::core::cpu::MILLI),
            ),
        ] {
            if p.resources.get(r).is_none() || max == 0 {
                continue;
            }
            if let Some(min) = p.member_limits(&d.name, &d.uuid, r).min {
                if min > max {
                    out.errors.push(LiveError::FloorAboveMaximum {
                        pool: p.name.clone(),
                        domain: d.name.to_string(),
                        resource: r,
                        min,
                        max,
                    });
                }
            }
        }
    }
    out
}

/// The files `uri` names that must exist and do not: a `socket=` query
/// parameter, and the node file of the test driver (`test:///PATH`, not
/// `test:///default`). `exists` says whether a path exists.
pub fn uri_problems(uri: &str, exists: impl Fn(&Path) -> bool) -> Vec<LiveError> {
    let mut out = Vec::new();
    let (base, query) = uri.split_once('?').unwrap_or((uri, ""));
    for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
        if k == "socket" && !v.is_empty() && !exists(Path::new(v)) {
            out.push(LiveError::MissingSocket {
                uri: uri.into(),
                path: v.into(),
            });
        }
    }
    let Some((scheme, rest)) = base.split_once("://") else {
        return out;
    };
    let driver = scheme.split('+').next().unwrap_or("");
    // `test:///PATH` or `test+unix:///PATH`: no host, an absolute path.
    if driver == "test" {
        if let Some(path) = rest.strip_prefix('/').map(|p| format!("/{p}")) {
            if path != "/default" && !exists(Path::new(&path)) {
                out.push(LiveError::MissingFile {
                    uri: uri.into(),
                    path,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::core::planner::testing::domain;

    fn dom(name: &str, vcpus_max: u64, memory_max: u64) -> DomainObs {
        DomainObs {
            uuid: format!("UUID-{name}").into(),
            vcpus_max,
            memory: memory_max,
            memory_max,
            active_secs: None,
            ..domain(name, None)
        }
    }

    #[test]
    fn missing_domains_warn_and_impossible_floors_are_errors() {
        let cfg = Config::parse(
            r#"
[pools.web]
match = "web-*"
vcpus = { budget = 8, min = 2 }
memory = { budget = "8GiB" }
[pools.web.members.web-big]
memory = { min = "6GiB" }
[pools.web.members.web-gone]
vcpus = { min = 1 }
[pools.db]
domains = ["db-1", "db-gone", "uuid-db-2"]
vcpus = { budget = 4 }
cpu = { budget = 4 }
[pools.db.members.db-1]
cpu = { min = 1.5 }
"#,
            Path::new("t.toml"),
        )
        .unwrap();
        let domains = [
            dom("web-1", 1, 1 << 30),
            dom("web-big", 4, 4 << 30),
            dom("web-ok", 2, 1 << 30),
            dom("db-1", 1, 1 << 30),
            dom("db-2", 1, 1 << 30),
        ];
        let c = against_domains(&cfg, &domains);
        assert_eq!(
            c.warnings,
            vec![
                LiveWarning::UnknownListed {
                    pool: "db".into(),
                    domain: "db-gone".into()
                },
                LiveWarning::UnknownOverride {
                    pool: "web".into(),
                    domain: "web-gone".into()
                },
            ]
        );
        assert_eq!(
            c.errors,
            vec![
                LiveError::FloorAboveMaximum {
                    pool: "web".into(),
                    domain: "web-1".into(),
                    resource: Resource::Vcpus,
                    min: 2,
                    max: 1
                },
                LiveError::FloorAboveMaximum {
                    pool: "web".into(),
                    domain: "web-big".into(),
                    resource: Resource::Memory,
                    min: 6 << 30,
                    max: 4 << 30
                },
                LiveError::FloorAboveMaximum {
                    pool: "db".into(),
                    domain: "db-1".into(),
                    resource: Resource::Cpu,
                    min: 1500,
                    max: 1000
                },
            ]
        );
        assert!(c.errors[2]
            .to_string()
            .contains("cpu.min 1.5 cores but can have at most 1 core"));
        assert_eq!(
            c.errors[0].to_string(),
            r#"pool "web": domain "web-1" gets vcpus.min 2 but can have at most 1 (its maximum): it could never be managed"#
        );
        assert!(c.errors[1].to_string().contains("memory.min 6.0 GiB"));
        assert!(
            against_domains(&Config::empty(Path::new("t.toml")), &domains)
                .errors
                .is_empty()
        );
    }

    #[test]
    fn uris_naming_missing_files() {
        let none = |_: &Path| false;
        assert!(uri_problems("qemu:///system", none).is_empty());
        assert!(uri_problems("test:///default", none).is_empty());
        assert!(uri_problems("qemu+ssh://host/system", none).is_empty());
        assert_eq!(
            uri_problems("qemu:///system?socket=/run/x.sock", none),
            vec![LiveError::MissingSocket {
                uri: "qemu:///system?socket=/run/x.sock".into(),
                path: "/run/x.sock".into()
            }]
        );
        assert_eq!(
            uri_problems("test:///srv/node.xml", none),
            vec![LiveError::MissingFile {
                uri: "test:///srv/node.xml".into(),
                path: "/srv/node.xml".into()
            }]
        );
        assert_eq!(
            uri_problems("test+unix:///default?socket=/s", none).len(),
            1
        );
        assert!(uri_problems("test:///srv/node.xml?socket=/s", |_| true).is_empty());
    }
}
