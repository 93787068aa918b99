//! Recent decisions and errors for `GET /v1/events`.
//!
//! [`EventSource`] is the seam: today [`EventRing`] keeps the last events in
//! memory (fed from each published cycle and from API changes); an
//! implementation that reads the audit log can replace it later without
//! touching the routes.

use super::types::{Event, EventKind};
use crate::monitor::Status;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Where events come from.
pub trait EventSource: Send + Sync {
    /// Events with `seq > since` (all when `None`), oldest first, the newest
    /// `limit` of them.
    fn recent(&self, since: Option<u64>, limit: usize) -> Vec<Event>;
    /// Records an event.
    fn record(&self, kind: EventKind);
}

/// A bounded in-memory ring of events.
pub struct EventRing {
    cap: usize,
    inner: Mutex<(u64, VecDeque<Event>)>,
}

/// Events kept by default.
pub const DEFAULT_EVENTS: usize = 1000;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl EventRing {
    pub fn new(cap: usize) -> EventRing {
        EventRing {
            cap: cap.max(1),
            inner: Mutex::new((0, VecDeque::new())),
        }
    }
}

impl EventSource for EventRing {
    fn recent(&self, since: Option<u64>, limit: usize) -> Vec<Event> {
        let g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let matching: Vec<&Event> =
            g.1.iter()
                .filter(|e| since.is_none_or(|s| e.seq > s))
                .collect();
        let skip = matching.len().saturating_sub(limit);
        matching.into_iter().skip(skip).cloned().collect()
    }

    fn record(&self, kind: EventKind) {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.0 += 1;
        let seq = g.0;
        if g.1.len() >= self.cap {
            g.1.pop_front();
        }
        g.1.push_back(Event {
            seq,
            time: now(),
            kind,
        });
    }
}

/// Records the events of one published cycle.
pub fn record_cycle(events: &dyn EventSource, st: &Status) {
    if let (false, Some(e)) = (st.libvirt.connected, &st.libvirt.error) {
        events.record(EventKind::Error {
            cycle: st.cycle,
            message: format!("cannot observe libvirt: {e}"),
        });
    }
    if let Some(e) = &st.config_error {
        events.record(EventKind::Error {
            cycle: st.cycle,
            message: e.clone(),
        });
    }
    for r in &st.results {
        events.record(EventKind::Action {
            cycle: st.cycle,
            domain: r.action.domain().to_string(),
            resource: r.action.resource_label().to_string(),
            ok: r.ok,
            error: r.error.clone(),
            action: r.action.clone(),
        });
    }
}

/// Records each published cycle exactly once, whoever sees it first: the
/// follower task, or a reader of `GET /v1/events` (so a read right after a
/// cycle always includes it).
pub struct CycleRecorder {
    last: Mutex<u64>,
    events: Arc<dyn EventSource>,
}

impl CycleRecorder {
    pub fn new(events: Arc<dyn EventSource>) -> CycleRecorder {
        CycleRecorder {
            last: Mutex::new(0),
            events,
        }
    }

    /// Records `st` if its cycle was not recorded yet.
    pub fn observe(&self, st: &Status) {
        let mut last = match self.last.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if st.cycle != *last {
            *last = st.cycle;
            record_cycle(self.events.as_ref(), st);
        }
    }
}

/// Follows published statuses until `shutdown`, recording each cycle.
pub async fn follow(
    mut rx: watch::Receiver<Arc<Status>>,
    recorder: Arc<CycleRecorder>,
    shutdown: CancellationToken,
) {
    loop {
        let st = rx.borrow_and_update().clone();
        recorder.observe(&st);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_bounded_and_pages() {
        let r = EventRing::new(3);
        for i in 0..5 {
            r.record(EventKind::Change {
                uid: i,
                message: format!("m{i}"),
            });
        }
        let all = r.recent(None, 100);
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(r.recent(Some(4), 100).len(), 1);
        assert_eq!(r.recent(None, 1)[0].seq, 5);
    }
}
