//! `[agent]` and `[api]`: the agent-wide settings, log filters and `{config_dir}` in paths.

use super::bounds::{
    check_at_most, check_duration, check_path, DEFAULT_AUDIT_KEEP, DEFAULT_AUDIT_MAX_BYTES,
    DEFAULT_RESYNC, MAX_AUDIT_BYTES, MAX_AUDIT_KEEP, MAX_DURATION, MAX_SOCKET_PATH,
    MIN_AUDIT_BYTES, MIN_INTERVAL,
};
use super::spec::{Mode, OnRelease};
use crate::core::units::{self, Bytes, Secs};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a log filter (`agent.log_level`, `RUST_LOG`) is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogFilterError {
    #[error("the filter is empty")]
    Empty,
    #[error("{0}")]
    Invalid(String),
}

/// Parses a log filter: `level` (`error`, `warn`, `info`, `debug`,
/// `trace`, `off`), `target=level` (the target and the modules under it:
/// `virtpool::agent::reconciler=debug`), or several of them separated by
/// commas. A bare level is the default for targets no directive names;
/// without one, only the named targets log.
pub fn parse_log_filter(s: &str) -> Result<tracing_subscriber::filter::Targets, LogFilterError> {
    if s.trim().is_empty() {
        return Err(LogFilterError::Empty);
    }
    s.parse()
        .map_err(|e: tracing_subscriber::filter::ParseError| LogFilterError::Invalid(e.to_string()))
}

/// `[agent]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    mode: Option<Mode>,
    interval: Option<Secs>,
    libvirt_uri: Option<String>,
    state_dir: Option<PathBuf>,
    log_level: Option<String>,
    metrics_listen: Option<SocketAddr>,
    resync_interval: Option<Secs>,
    audit_max_size: Option<Bytes>,
    audit_keep: Option<u64>,
    on_release: Option<OnRelease>,
}

/// `[api]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    socket: Option<PathBuf>,
    group: Option<String>,
}

/// Agent-wide settings (`[agent]`, `[api]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentConfig {
    pub mode: Mode,
    pub interval: Duration,
    pub libvirt_uri: String,
    pub state_dir: PathBuf,
    pub log_level: Option<String>,
    pub metrics_listen: Option<SocketAddr>,
    /// Longest a domain's slow facts (XML, I/O limits, weights) are reused
    /// without an event saying they changed; zero reads them every cycle.
    pub resync_interval: Duration,
    /// The audit log rotates when it would grow past this many bytes.
    pub audit_max_bytes: u64,
    /// Rotated audit files kept (`audit.jsonl.1` …).
    pub audit_keep: usize,
    pub socket: PathBuf,
    pub api_group: String,
    /// What happens to what the agent changed on a domain that leaves
    /// management (removed from its pool, pool deleted, config changed).
    pub on_release: OnRelease,
}

/// Expands `{config_dir}` (the config file's absolute directory) in paths
/// and URIs, so a config can point at files beside it from any folder.
fn expand(s: &str, path: &Path) -> String {
    if !s.contains("{config_dir}") {
        return s.to_owned();
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    s.replace("{config_dir}", &abs.to_string_lossy())
}

/// A path setting, `default` when not set, with `{config_dir}` expanded.
fn expand_path(p: Option<PathBuf>, default: &str, path: &Path) -> PathBuf {
    let p = p.map_or(default.into(), |p| p.to_string_lossy().into_owned());
    expand(&p, path).into()
}

/// `[agent]` and `[api]`, checked; `path` is the config file's.
pub(super) fn build(
    a: RawAgent,
    api: RawApi,
    path: &Path,
    problems: &mut Vec<String>,
) -> AgentConfig {
    let interval = a.interval.map_or(Duration::from_secs(10), |s| s.0);
    check_duration(
        "agent.interval",
        interval,
        MIN_INTERVAL,
        MAX_DURATION,
        problems,
    );
    let audit_max_bytes = a.audit_max_size.map_or(DEFAULT_AUDIT_MAX_BYTES, |b| b.0);
    if audit_max_bytes < MIN_AUDIT_BYTES {
        problems.push(format!(
            "agent.audit_max_size ({}) is below the smallest size, {}",
            units::human_bytes(audit_max_bytes),
            units::human_bytes(MIN_AUDIT_BYTES)
        ));
    }
    check_at_most(
        "agent.audit_max_size",
        audit_max_bytes,
        MAX_AUDIT_BYTES,
        true,
        problems,
    );
    let audit_keep = a.audit_keep.unwrap_or(DEFAULT_AUDIT_KEEP as u64);
    if audit_keep > MAX_AUDIT_KEEP {
        problems.push(format!(
            "agent.audit_keep ({audit_keep}) is above {MAX_AUDIT_KEEP} rotated files"
        ));
    }
    if let Some(l) = &a.log_level {
        if let Err(e) = parse_log_filter(l) {
            problems.push(format!(
                "agent.log_level ({l:?}) is not a valid log filter: {e}"
            ));
        }
    }
    let agent = AgentConfig {
        on_release: a.on_release.unwrap_or_default(),
        mode: a.mode.unwrap_or_default(),
        interval,
        libvirt_uri: expand(a.libvirt_uri.as_deref().unwrap_or("qemu:///system"), path),
        state_dir: expand_path(a.state_dir, "/var/lib/virtpool", path),
        log_level: a.log_level,
        metrics_listen: a.metrics_listen,
        resync_interval: a.resync_interval.map_or(DEFAULT_RESYNC, |s| s.0),
        audit_max_bytes,
        audit_keep: usize::try_from(audit_keep.min(MAX_AUDIT_KEEP)).unwrap_or(0),
        socket: expand_path(api.socket, "/run/virtpool/virtpool.sock", path),
        api_group: api.group.unwrap_or_else(|| "libvirt".into()),
    };
    check_duration(
        "agent.resync_interval",
        agent.resync_interval,
        Duration::ZERO,
        MAX_DURATION,
        problems,
    );
    check_path("agent.state_dir", &agent.state_dir, problems);
    check_path("api.socket", &agent.socket, problems);
    let sock_len = agent.socket.as_os_str().len();
    if sock_len > MAX_SOCKET_PATH {
        problems.push(format!(
            "api.socket ({}) is {sock_len} bytes long: a Unix socket path has at most {MAX_SOCKET_PATH}",
            agent.socket.display()
        ));
    }
    if agent.socket.file_name().is_none() && agent.socket.is_absolute() {
        problems.push(format!(
            "api.socket ({}) names a directory, not a socket file",
            agent.socket.display()
        ));
    }
    if agent.libvirt_uri.trim().is_empty() {
        problems.push("agent.libvirt_uri is empty (the default is qemu:///system)".into());
    }
    if agent.api_group.is_empty() {
        problems.push("api.group is empty (the default is libvirt)".into());
    }
    agent
}
