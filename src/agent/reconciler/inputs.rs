//! What a cycle starts from ([`Inputs`]) and where its time goes
//! ([`Timings`]): passed down the pipeline, never kept.

use crate::agent::state::RuntimeState;
use crate::core::config::{Config, Mode};
use crate::core::model::HostCapacity;
use std::time::Duration;

/// What a cycle starts from.
pub(super) struct Inputs {
    pub(super) host: HostCapacity,
    pub(super) runtime: RuntimeState,
    /// The file config with the runtime state applied (the file config
    /// alone when the runtime state does not fit it).
    pub(super) effective: Config,
    pub(super) mode: Mode,
    /// Enforce mode and the agent not paused.
    pub(super) enforce: bool,
    /// The reload or runtime state problem to report, if any.
    pub(super) config_error: Option<String>,
}

/// Where a cycle's time went.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Timings {
    pub(super) observe: Duration,
    pub(super) plan: Duration,
    pub(super) enforce: Duration,
}
