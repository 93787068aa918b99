//! The blocking interface the rest of the agent sees of a hypervisor
//! connection, and its errors in the agent's own terms.

use super::calls::CallCounter;
use crate::core::model::{Action, DomainObs};

/// What went wrong talking to the hypervisor, in the agent's own terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HvError {
    /// The domain no longer exists: forget it.
    #[error("no such domain: {0}")]
    NoDomain(String),
    /// The hypervisor rejected a value: do not retry.
    #[error("invalid argument: {0}")]
    InvalidArg(String),
    /// Not possible in the domain's current state: skip this cycle.
    #[error("operation invalid: {0}")]
    OperationInvalid(String),
    /// The hypervisor did not complete the change in time (e.g. a vCPU
    /// unplug the guest has not acknowledged): treat as pending.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The connection is gone: reconnect with backoff.
    #[error("libvirt connection lost: {0}")]
    ConnectionLost(String),
    /// The agent's own safety check refused the action before any call.
    #[error("refused by the safety check: {0}")]
    Refused(String),
    /// Anything else libvirt reported.
    #[error("libvirt error: {0}")]
    Other(String),
}

impl HvError {
    /// Whether the error means the connection must be re-established.
    pub fn is_connection(&self) -> bool {
        matches!(self, HvError::ConnectionLost(_))
    }
}

/// A blocking view of one hypervisor connection. Implementations are driven
/// from one thread at a time ([`worker::HvWorker`]).
pub trait Hypervisor: Send {
    /// (Re)connects if not connected. Cheap when already connected.
    fn connect(&mut self) -> Result<(), HvError>;
    /// Whether the connection is believed alive.
    fn is_connected(&self) -> bool;
    /// Lists every domain (active and inactive) and reads its state, vCPUs,
    /// memory, balloon stats, disks and their I/O limits, weights and
    /// virtpool metadata. `active_secs` is left `None` (the monitor tracks it).
    fn observe(&mut self) -> Result<Vec<DomainObs>, HvError>;
    /// [`observe`], giving up (`Ok(None)`) as soon as `stop` is set: a
    /// full observation of a big host takes seconds, and a scoped cycle
    /// asked meanwhile goes first. The default does not stop.
    ///
    /// [`observe`]: Hypervisor::observe
    fn observe_until(
        &mut self,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<Option<Vec<DomainObs>>, HvError> {
        let _ = stop;
        self.observe().map(Some)
    }
    /// Observes only the domains with these UUIDs, read as [`observe`]
    /// reads each one. A UUID that names no domain is left out of the
    /// answer (the caller notices). The default observes every domain and
    /// keeps the asked ones.
    ///
    /// [`observe`]: Hypervisor::observe
    fn observe_domains(&mut self, uuids: &[String]) -> Result<Vec<DomainObs>, HvError> {
        let mut all = self.observe()?;
        all.retain(|d| uuids.iter().any(|u| **u == *d.uuid));
        Ok(all)
    }
    /// Applies one action to a live domain.
    fn apply(&mut self, action: &Action) -> Result<(), HvError>;
    /// The counts of the libvirt calls made, when the implementation keeps
    /// them ([`Libvirt`] does).
    fn call_counter(&self) -> Option<std::sync::Arc<CallCounter>> {
        None
    }
}
