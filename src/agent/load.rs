//! Loading the config file: what start-up and a reload both do (read,
//! apply the command line's overrides, check the budgets against this
//! host), and what a reload cannot change.

use crate::adapters::host::{Host, HostError};
use crate::core::config::{Allocatable, Config, ConfigError};
use crate::core::model::HostCapacity;
use std::path::Path;
use std::sync::Arc;

/// Command-line settings that override the file and must survive a reload.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub libvirt_uri: Option<String>,
}

impl Overrides {
    pub fn apply(&self, cfg: &mut Config) {
        if let Some(uri) = &self.libvirt_uri {
            cfg.agent.libvirt_uri.clone_from(uri);
        }
    }
}

/// Why a config file could not be taken (at start-up or on reload).
/// Cheap to clone: the reconciler keeps it to report, the caller answers
/// with it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// The file is unreadable, malformed or invalid (it names the file,
    /// the key and the problem).
    #[error("{0}")]
    Config(Arc<ConfigError>),
    /// The host's capacity could not be read to check the budgets.
    #[error("{0}")]
    Host(Arc<HostError>),
    /// The file's pools and the runtime pools do not fit the host together.
    #[error("{0}")]
    Runtime(Arc<crate::agent::reload_runtime::RuntimeDoesNotFit>),
}

impl From<ConfigError> for LoadError {
    fn from(e: ConfigError) -> LoadError {
        LoadError::Config(Arc::new(e))
    }
}

/// Reads the config file, applies the overrides and checks the budgets
/// against this host: what start-up and SIGHUP both do. The error is one
/// line naming the file, the key and the problem.
pub fn load_checked(path: &Path, overrides: &Overrides) -> Result<Config, LoadError> {
    load_for_host(path, overrides).map(|(cfg, _)| cfg)
}

/// [`load_checked`], with what this host can give under the new file.
pub fn load_for_host(
    path: &Path,
    overrides: &Overrides,
) -> Result<(Config, Allocatable), LoadError> {
    let cfg = Config::load(path)?;
    let mut host = Host::new().map_err(|e| LoadError::Host(Arc::new(e)))?;
    checked(cfg, overrides, &host.refresh())
}

/// Checks a candidate config's text as a reload checks the file (see
/// [`load_checked`]), against the host as last observed (`host`): the
/// same checks, the same errors. `path` names it in messages and is what
/// `{config_dir}` stands for.
pub fn check_candidate(
    text: &str,
    path: &Path,
    overrides: &Overrides,
    host: &HostCapacity,
) -> Result<Config, LoadError> {
    checked(Config::parse(text, path)?, overrides, host).map(|(cfg, _)| cfg)
}

/// The overrides applied, then the budgets checked against `host`.
fn checked(
    mut cfg: Config,
    overrides: &Overrides,
    host: &HostCapacity,
) -> Result<(Config, Allocatable), LoadError> {
    overrides.apply(&mut cfg);
    let alloc = cfg.check_host(host)?;
    Ok((cfg, alloc))
}

/// Settings a reload cannot change in a running agent (they are bound at
/// start): the differences, for a warning.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&old.agent, &new.agent);
    [
        (a.libvirt_uri != b.libvirt_uri, "agent.libvirt_uri"),
        (a.state_dir != b.state_dir, "agent.state_dir"),
        (a.socket != b.socket, "api.socket"),
        (a.api_group != b.api_group, "api.group"),
        (a.metrics_listen != b.metrics_listen, "agent.metrics_listen"),
        (
            a.resync_interval != b.resync_interval,
            "agent.resync_interval",
        ),
        (
            a.audit_max_bytes != b.audit_max_bytes,
            "agent.audit_max_size",
        ),
        (a.audit_keep != b.audit_keep, "agent.audit_keep"),
    ]
    .into_iter()
    .filter_map(|(changed, setting)| changed.then_some(setting))
    .collect()
}

/// Puts the running values of the settings bound at start (see
/// [`restart_only_changes`]) into a reloaded config: the new values take
/// effect on restart; until then the agent and its status show the ones
/// in use (a reload that changed `agent.libvirt_uri` showed the new URI
/// while the old connection ran).
pub fn keep_restart_only(old: &Config, new: &mut Config) {
    let (a, b) = (&old.agent, &mut new.agent);
    b.libvirt_uri.clone_from(&a.libvirt_uri);
    b.state_dir.clone_from(&a.state_dir);
    b.socket.clone_from(&a.socket);
    b.api_group.clone_from(&a.api_group);
    b.metrics_listen = a.metrics_listen;
    b.resync_interval = a.resync_interval;
    b.audit_max_bytes = a.audit_max_bytes;
    b.audit_keep = a.audit_keep;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::parse(text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn restart_only_settings_are_named() {
        let a = cfg("[agent]\ninterval = \"5s\"\n");
        let b = cfg("[agent]\ninterval = \"9s\"\nlibvirt_uri = \"test:///default\"\nresync_interval = \"1m\"\naudit_max_size = \"1MiB\"\naudit_keep = 9\n[api]\nsocket = \"/tmp/x.sock\"\n");
        assert_eq!(restart_only_changes(&a, &a), Vec::<&str>::new());
        assert_eq!(
            restart_only_changes(&a, &b),
            vec![
                "agent.libvirt_uri",
                "api.socket",
                "agent.resync_interval",
                "agent.audit_max_size",
                "agent.audit_keep"
            ]
        );
        // Swapped in, they keep their running values; the rest is new.
        let mut kept = b.clone();
        keep_restart_only(&a, &mut kept);
        assert_eq!(restart_only_changes(&a, &kept), Vec::<&str>::new());
        assert_eq!(kept.agent.libvirt_uri, a.agent.libvirt_uri);
        assert_eq!(kept.agent.interval, b.agent.interval);
    }

    #[test]
    fn overrides_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[agent]\nlibvirt_uri = \"qemu:///system\"\n").unwrap();
        let o = Overrides {
            libvirt_uri: Some("test:///default".into()),
        };
        assert_eq!(
            load_checked(&f, &o).unwrap().agent.libvirt_uri,
            "test:///default"
        );
        std::fs::write(&f, "[agent]\nspeed = 1\n").unwrap();
        let e = load_checked(&f, &o).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("speed"), "{e}");
    }
}
