//! Logging set-up: journald when started by systemd with its journal
//! stream (`JOURNAL_STREAM` naming our stderr), else human-readable stderr.
//! The filter comes from `RUST_LOG`, else the config's `log_level`, else
//! `info`; a reload may change `log_level` ([`LogControl::set_level`]).
//! A filter is a level (`info`), or comma-separated `target=level`
//! directives with an optional default level (`warn,virtpool=debug`): see
//! [`filter`].
//!
//! In the journal, event fields become journal fields without a prefix
//! (`DOMAIN=web-1`, `RESOURCE=vcpus`, `RESULT=error`), so
//! `journalctl -u virtpoold RESULT=error` works.

use crate::core::config::{parse_log_filter, LogFilterError};
use std::io::IsTerminal;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{reload, Registry};

/// Changes the log filter of the installed subscriber.
#[derive(Clone)]
pub struct LogControl {
    handle: Option<reload::Handle<Targets, Registry>>,
    /// `RUST_LOG` was set: it wins over the config.
    from_env: bool,
}

impl LogControl {
    /// Applies a config's `log_level` (unless `RUST_LOG` is set). An invalid
    /// filter is refused and the current one stays.
    pub fn set_level(&self, log_level: Option<&str>) -> Result<(), LogLevelError> {
        if self.from_env {
            return Ok(());
        }
        let Some(h) = &self.handle else {
            return Ok(());
        };
        let f = filter(log_level.unwrap_or("info"))?;
        h.reload(f)
            .map_err(|e| LogLevelError::Reload(e.to_string()))
    }
}

/// Why the log level could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum LogLevelError {
    #[error("invalid log filter: {0}")]
    Filter(#[from] LogFilterError),
    #[error("cannot swap the log filter: {0}")]
    Reload(String),
}

/// Parses a log filter (see [`parse_log_filter`]).
pub fn filter(s: &str) -> Result<Targets, LogFilterError> {
    parse_log_filter(s)
}

/// Whether stderr is the journal stream systemd connected (`JOURNAL_STREAM`
/// is `DEVICE:INODE` of it); a child that merely inherited the variable
/// logs to its own stderr.
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// Installs the global subscriber. Call once, early.
pub fn init(log_level: Option<&str>) -> LogControl {
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| filter(&v).ok())
        .or_else(|| filter(log_level.unwrap_or("info")).ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let (targets, handle) = reload::Layer::new(targets);
    let registry = tracing_subscriber::registry().with(targets);
    let installed = if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(journald) => registry
                .with(journald.with_field_prefix(None))
                .try_init()
                .is_ok(),
            Err(_) => init_stderr(registry),
        }
    } else {
        init_stderr(registry)
    };
    LogControl {
        handle: installed.then_some(handle),
        from_env,
    }
}

fn init_stderr<S>(registry: S) -> bool
where
    S: tracing::Subscriber
        + for<'a> tracing_subscriber::registry::LookupSpan<'a>
        + Send
        + Sync
        + 'static,
{
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false),
        )
        .try_init()
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn filters_name_levels_per_target() {
        let f = filter("warn,virtpool::agent::reconciler=debug").unwrap();
        assert!(f.would_enable("virtpool::agent::reconciler", &Level::DEBUG));
        assert!(f.would_enable("virtpool::agent::reconciler::x", &Level::DEBUG));
        assert!(!f.would_enable("virtpool::api", &Level::INFO));
        assert!(f.would_enable("virtpool::api", &Level::WARN));
        let only = filter("virtpool=debug").unwrap();
        assert!(only.would_enable("virtpool::agent::reconciler", &Level::DEBUG));
        assert!(!only.would_enable("hyper", &Level::ERROR));
        let level = filter("info").unwrap();
        assert!(level.would_enable("anything", &Level::INFO));
        assert!(!level.would_enable("anything", &Level::DEBUG));
    }

    #[test]
    fn bad_filters_are_refused() {
        assert!(filter("virtpool=loud").is_err());
        assert!(filter("").is_err());
        assert!(filter("  ").is_err());
    }
}
