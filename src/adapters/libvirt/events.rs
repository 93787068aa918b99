//! Domain lifecycle events: wake the monitor at once when a domain is
//! started, stopped, paused, resumed, defined or undefined, and when the
//! connection to a remote daemon closes.
//!
//! How it fits together:
//! - [`start_event_loop`] registers libvirt's default event implementation
//!   and starts one `libvirt-events` thread running it forever. Once per
//!   process, and before any connection is opened (a connection opened
//!   earlier never delivers events). `virtpoold` calls it first thing.
//! - [`crate::adapters::libvirt::Libvirt::with_events`] gives the adapter an
//!   [`EventSender`]; every `connect()` that opens a connection registers a
//!   lifecycle callback (all domains), a close callback and, where the
//!   driver supports it, keepalive (5 s, 3 probes). `disconnect()` (and
//!   drop) deregisters them before closing, so a reconnect registers anew.
//! - The callbacks run on the event-loop thread. They copy the domain's
//!   name and UUID out of the object libvirt passes (no driver call, no
//!   RPC) and push an [`HvEvent`] into an unbounded channel: they never
//!   block and never call back into libvirt.
//! - The monitor takes events from the receiver as they come: the first
//!   opens a [`DEBOUNCE`] window, everything arriving in it joins the batch,
//!   and one cycle runs for the batch when the window closes — or sooner,
//!   when another cycle runs first: the batch then joins that cycle.

use std::os::raw::c_int;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::mpsc;
use virt::connect::Connect;
use virt::sys;

use super::cache::StaleMarks;
use super::ffi;
use super::hypervisor::HvError;

/// Events arriving within this window after the first one share one cycle.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Keepalive on remote connections: a probe every 5 s, dead after 3
/// unanswered (≈ 20 s), then the close callback fires.
pub const KEEPALIVE_INTERVAL_S: i32 = 5;
/// See [`KEEPALIVE_INTERVAL_S`].
pub const KEEPALIVE_COUNT: u32 = 3;

/// What happened to a domain (`VIR_DOMAIN_EVENT_*` lifecycle codes, plus
/// device and metadata changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleKind {
    Defined,
    Undefined,
    Started,
    Suspended,
    Resumed,
    Stopped,
    Shutdown,
    PmSuspended,
    Crashed,
    /// A device was hot-plugged (`VIR_DOMAIN_EVENT_ID_DEVICE_ADDED`).
    DeviceAdded,
    /// A device was unplugged (`VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED`).
    DeviceRemoved,
    /// The domain's metadata changed (`VIR_DOMAIN_EVENT_ID_METADATA_CHANGE`):
    /// its pool may have changed.
    MetadataChanged,
    /// A code this build does not know.
    Other(i32),
}

impl LifecycleKind {
    /// Maps a `VIR_DOMAIN_EVENT_*` code.
    pub fn from_code(code: i32) -> LifecycleKind {
        match u32::try_from(code) {
            Ok(sys::VIR_DOMAIN_EVENT_DEFINED) => LifecycleKind::Defined,
            Ok(sys::VIR_DOMAIN_EVENT_UNDEFINED) => LifecycleKind::Undefined,
            Ok(sys::VIR_DOMAIN_EVENT_STARTED) => LifecycleKind::Started,
            Ok(sys::VIR_DOMAIN_EVENT_SUSPENDED) => LifecycleKind::Suspended,
            Ok(sys::VIR_DOMAIN_EVENT_RESUMED) => LifecycleKind::Resumed,
            Ok(sys::VIR_DOMAIN_EVENT_STOPPED) => LifecycleKind::Stopped,
            Ok(sys::VIR_DOMAIN_EVENT_SHUTDOWN) => LifecycleKind::Shutdown,
            Ok(sys::VIR_DOMAIN_EVENT_PMSUSPENDED) => LifecycleKind::PmSuspended,
            Ok(sys::VIR_DOMAIN_EVENT_CRASHED) => LifecycleKind::Crashed,
            _ => LifecycleKind::Other(code),
        }
    }
}

/// A lifecycle event of one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainEvent {
    pub uuid: String,
    pub name: String,
    pub kind: LifecycleKind,
    /// libvirt's detail code (meaning depends on `kind`).
    pub detail: i32,
}

/// Why a connection closed (`VIR_CONNECT_CLOSE_REASON_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Error,
    Eof,
    Keepalive,
    Client,
    Other(i32),
}

impl CloseReason {
    /// Maps a `VIR_CONNECT_CLOSE_REASON_*` code.
    pub fn from_code(code: i32) -> CloseReason {
        match u32::try_from(code) {
            Ok(sys::VIR_CONNECT_CLOSE_REASON_ERROR) => CloseReason::Error,
            Ok(sys::VIR_CONNECT_CLOSE_REASON_EOF) => CloseReason::Eof,
            Ok(sys::VIR_CONNECT_CLOSE_REASON_KEEPALIVE) => CloseReason::Keepalive,
            Ok(sys::VIR_CONNECT_CLOSE_REASON_CLIENT) => CloseReason::Client,
            _ => CloseReason::Other(code),
        }
    }
}

/// Something the monitor should react to at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HvEvent {
    Domain(DomainEvent),
    /// The connection closed under us (remote daemon gone, keepalive).
    ConnectionClosed(CloseReason),
}

/// Where the adapter's callbacks send events.
pub type EventSender = mpsc::UnboundedSender<HvEvent>;
/// What the monitor reads.
pub type EventReceiver = mpsc::UnboundedReceiver<HvEvent>;

/// A new event channel.
pub fn channel() -> (EventSender, EventReceiver) {
    mpsc::unbounded_channel()
}

static EVENT_LOOP: OnceLock<Result<(), String>> = OnceLock::new();

/// Registers libvirt's default event implementation and starts the thread
/// that runs it, once per process; later calls return the first result.
/// Call before opening any connection.
pub fn start_event_loop() -> Result<(), HvError> {
    EVENT_LOOP
        .get_or_init(|| {
            virt::event::event_register_default_impl()
                .map_err(|e| format!("cannot register the libvirt event loop: {e}"))?;
            std::thread::Builder::new()
                .name("libvirt-events".into())
                .spawn(run_event_loop)
                .map_err(|e| format!("cannot start the libvirt event thread: {e}"))?;
            // Jobs only once the thread runs. Without the queue, workers
            // keep threads of their own.
            if let Err(e) = super::worker::install_loop_queue() {
                tracing::warn!(error = %e, "libvirt jobs stay off the event-loop thread");
            }
            Ok(())
        })
        .clone()
        .map_err(HvError::Other)
}

/// Whether [`start_event_loop`] succeeded in this process.
pub fn event_loop_running() -> bool {
    matches!(EVENT_LOOP.get(), Some(Ok(())))
}

thread_local! {
    /// Set on the thread that runs libvirt's event loop.
    static LOOP_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Called by a long job on the event-loop thread (a full observation, one
/// domain in so many): runs one iteration of the loop, without waiting, so
/// the events that arrived meanwhile reach their callbacks now instead of
/// after the job. Does nothing on any other thread. Must not be called from
/// a callback the loop dispatches (jobs run between iterations).
pub(crate) fn dispatch_pending() {
    if !LOOP_THREAD.with(std::cell::Cell::get) {
        return;
    }
    // The wake-up makes the iteration return at once; whatever else is
    // ready (event flush timers, the connection's socket) is dispatched too.
    super::worker::wake_loop();
    if let Err(e) = virt::event::event_run_default_impl() {
        tracing::debug!(error = %e, "libvirt event loop iteration failed");
    }
    // The iteration drained the wake-up socket: jobs queued meanwhile
    // need another one to run after this job.
    super::worker::rewake_if_jobs();
}

/// One iteration of libvirt's loop (waits for a watched socket or timer,
/// dispatches), then the [`HvWorker`](super::worker::HvWorker) jobs queued
/// meanwhile, forever.
fn run_event_loop() {
    super::worker::mark_job_thread();
    LOOP_THREAD.with(|t| t.set(true));
    loop {
        if let Err(e) = virt::event::event_run_default_impl() {
            tracing::warn!(error = %e, "libvirt event loop iteration failed");
            // Don't spin if it keeps failing.
            std::thread::sleep(Duration::from_millis(100));
        }
        super::worker::run_loop_jobs();
    }
}

/// The callbacks registered on one open connection.
#[derive(Debug)]
pub struct Registration {
    lifecycle: Option<ffi::EventRegistration>,
    close: Option<ffi::CloseRegistration>,
    /// Device, metadata and tunable changes (see [`ffi::ChangeEvent`]).
    changes: Vec<ffi::EventRegistration>,
}

impl Registration {
    /// Registers lifecycle and close callbacks (and keepalive where the
    /// driver has it) on a freshly opened `conn`, plus device, metadata and
    /// tunable change callbacks. Every domain event marks the domain in
    /// `stale` (the adapter re-reads it, see [`super::cache`]); all but
    /// tunable changes also go to the monitor (tunables are the agent's
    /// own writes, or someone else's that the next cycle corrects).
    /// Failures are logged and leave that part out: the monitor still
    /// polls on its interval.
    pub fn register(
        conn: &Connect,
        tx: &EventSender,
        uri: &str,
        stale: &StaleMarks,
    ) -> Registration {
        if !event_loop_running() {
            tracing::warn!(%uri, "libvirt event loop not running: no lifecycle events");
            return Registration {
                lifecycle: None,
                close: None,
                changes: Vec::new(),
            };
        }
        let lc_tx = tx.clone();
        let lc_stale = stale.clone();
        let lifecycle = match ffi::register_lifecycle(
            conn,
            Box::new(move |e: ffi::LifecycleEvent| {
                lc_stale.mark_news(&e.uuid);
                let _ = lc_tx.send(HvEvent::Domain(DomainEvent {
                    uuid: e.uuid,
                    name: e.name,
                    kind: LifecycleKind::from_code(e.event),
                    detail: e.detail,
                }));
            }),
        ) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(%uri, error = %e, "cannot register for domain lifecycle events");
                None
            }
        };
        let close_tx = tx.clone();
        let close = match ffi::register_close(
            conn,
            Box::new(move |reason: c_int| {
                let _ = close_tx.send(HvEvent::ConnectionClosed(CloseReason::from_code(reason)));
            }),
        ) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::debug!(%uri, error = %e, "no connection close callback");
                None
            }
        };
        let mut changes = Vec::new();
        for kind in ffi::ChangeEvent::ALL {
            let tx = tx.clone();
            let stale = stale.clone();
            let lifecycle_kind = match kind {
                ffi::ChangeEvent::DeviceAdded => Some(LifecycleKind::DeviceAdded),
                ffi::ChangeEvent::DeviceRemoved => Some(LifecycleKind::DeviceRemoved),
                ffi::ChangeEvent::MetadataChange => Some(LifecycleKind::MetadataChanged),
                ffi::ChangeEvent::Tunable => None,
            };
            let f: ffi::ChangeFn = Box::new(move |uuid: String, name: String| {
                if let Some(kind) = lifecycle_kind {
                    stale.mark_news(&uuid);
                    let _ = tx.send(HvEvent::Domain(DomainEvent {
                        uuid,
                        name,
                        kind,
                        detail: 0,
                    }));
                } else {
                    stale.mark(&uuid);
                }
            });
            match ffi::register_change(conn, kind, f) {
                Ok(r) => changes.push(r),
                Err(e) => {
                    tracing::debug!(%uri, ?kind, error = %e, "domain change events not registered");
                }
            }
        }
        // Remote drivers answer keepalive; in-process ones (test:///) say
        // "not supported", which is fine.
        if let Err(e) = conn.set_keep_alive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT) {
            tracing::debug!(%uri, error = %e, "keepalive not enabled");
        }
        Registration {
            lifecycle,
            close,
            changes,
        }
    }

    /// Whether lifecycle events are registered.
    pub fn has_lifecycle(&self) -> bool {
        self.lifecycle.is_some()
    }

    /// Removes both callbacks from `conn` (which must be the connection
    /// they were registered on). Works on a dead connection too: the local
    /// callbacks are removed whatever the daemon says.
    pub fn deregister(self, conn: &Connect) {
        if let Some(r) = self.lifecycle {
            if let Err(e) = ffi::deregister_event(conn, r) {
                tracing::debug!(error = %e, "lifecycle deregistration reported an error");
            }
        }
        for r in self.changes {
            if let Err(e) = ffi::deregister_event(conn, r) {
                tracing::debug!(error = %e, "change event deregistration reported an error");
            }
        }
        if let Some(r) = self.close {
            ffi::unregister_close(conn, r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds() {
        assert_eq!(LifecycleKind::from_code(2), LifecycleKind::Started);
        assert_eq!(LifecycleKind::from_code(3), LifecycleKind::Suspended);
        assert_eq!(LifecycleKind::from_code(5), LifecycleKind::Stopped);
        assert_eq!(LifecycleKind::from_code(99), LifecycleKind::Other(99));
        assert_eq!(LifecycleKind::from_code(-1), LifecycleKind::Other(-1));
        assert_eq!(CloseReason::from_code(1), CloseReason::Eof);
        assert_eq!(CloseReason::from_code(2), CloseReason::Keepalive);
        assert_eq!(CloseReason::from_code(7), CloseReason::Other(7));
    }
}
