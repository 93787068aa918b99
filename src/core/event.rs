//! What the agent records of its decisions (the audit log's records, as
//! `GET /v1/events` serves them): one shape for the agent that writes
//! them and the client that reads them.

use crate::core::model::Action;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing number, for paging (`?since=`); continues across
    /// restarts. Assigned by [`AuditLog::append`].
    #[serde(default)]
    pub seq: u64,
    /// RFC 3339 UTC time, millisecond precision.
    pub time: String,
    /// The monitor cycle that produced the event (`cycle` in
    /// `/v1/status`; it starts again at 1 when the agent restarts), for
    /// actions, unadmitted members and libvirt connection changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle: Option<u64>,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The time now as events carry it (RFC 3339 UTC, milliseconds).
pub fn time_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// One enforcement action and its outcome.
    Action {
        domain: String,
        uuid: String,
        resource: String,
        before: String,
        after: String,
        reason: String,
        /// `ok` or `error`.
        result: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// The action as the plan has it (`before`/`after` in numbers:
        /// vCPUs, bytes, bytes/s and IOPS, weights), as in `/v1/plan`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<Box<Action>>,
    },
    /// A SIGHUP reload: swapped in (`ok`) or refused (the running config stays).
    ConfigReload {
        file: String,
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The libvirt connection went down.
    LibvirtLost { uri: String, error: String },
    /// The libvirt connection is back.
    LibvirtRestored { uri: String },
    /// A pool member whose floors do not fit the budget: left untouched.
    Unadmitted {
        pool: String,
        domain: String,
        uuid: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// A member reported unadmitted earlier is admitted again.
    Admitted {
        pool: String,
        domain: String,
        uuid: String,
    },
    /// A domain left management and what the agent had changed on it was
    /// given back (`restored`) or left as it is (`kept`, by
    /// `agent.on_release`).
    Released {
        domain: String,
        uuid: String,
        /// `restored` or `kept`.
        how: String,
    },
    /// The agent started.
    Started { version: String },
    /// The agent is stopping.
    Stopping,
    /// A runtime change made through the API, by `uid`.
    Change { uid: u32, message: String },
    /// Start-up took runtime state entries that no longer fit the config
    /// or the host out of the state; they are kept in `file`.
    StateSetAside { file: String, problems: Vec<String> },
}

impl Event {
    /// An event stamped now.
    pub fn now(kind: EventKind) -> Event {
        Event {
            seq: 0,
            time: time_now(),
            cycle: None,
            kind,
        }
    }

    /// An event of monitor cycle `cycle`, stamped now.
    pub fn in_cycle(kind: EventKind, cycle: u64) -> Event {
        Event {
            cycle: Some(cycle),
            ..Event::now(kind)
        }
    }
}
