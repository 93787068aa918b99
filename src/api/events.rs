//! `GET /v1/events` (alias `/v1/audit`): recent decisions and errors, read
//! back from the audit log ([`crate::agent::audit`]) so they survive restarts.
//!
//! The monitor appends a cycle's events before it publishes the cycle, and
//! API changes are appended before they are answered: a read right after
//! `POST /v1/reconcile?wait=true` or a change includes them.

use super::error::Error;
use super::types::{EventsQuery, EventsResponse};
use crate::agent::audit::AuditLog;

/// Events returned when the query gives no `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// The most events one request returns.
pub const MAX_LIMIT: usize = 1000;

/// The newest `limit` events (default [`DEFAULT_LIMIT`], at most
/// [`MAX_LIMIT`]) after `since` and before `before`, oldest first. Reads
/// the tail of the files on a blocking thread.
pub async fn read(audit: AuditLog, q: EventsQuery) -> Result<EventsResponse, Error> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let events = tokio::task::spawn_blocking(move || audit.between(q.since, q.before, limit))
        .await
        .map_err(|e| Error::Internal(format!("events task failed: {e}")))?
        .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(EventsResponse { events })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::agent::audit::{Event, EventKind};

    #[tokio::test]
    async fn limits_default_and_cap() {
        let log = AuditLog::memory();
        let evs: Vec<Event> = (0..MAX_LIMIT + 10)
            .map(|i| {
                Event::now(EventKind::Change {
                    uid: 0,
                    message: format!("m{i}"),
                })
            })
            .collect();
        log.append(&evs).unwrap();
        let q = |since, limit| EventsQuery {
            since,
            limit,
            before: None,
        };
        let r = read(log.clone(), q(None, None)).await.unwrap();
        assert_eq!(r.events.len(), DEFAULT_LIMIT);
        assert_eq!(r.events.last().unwrap().seq, (MAX_LIMIT + 10) as u64);
        let r = read(log.clone(), q(None, Some(usize::MAX))).await.unwrap();
        assert_eq!(r.events.len(), MAX_LIMIT);
        let r = read(log.clone(), q(Some(1005), Some(3))).await.unwrap();
        assert_eq!(
            r.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1008, 1009, 1010]
        );
        // Paging back: before the first of the last answer.
        let page = |since, before| EventsQuery {
            since,
            before,
            limit: Some(3),
        };
        let r = read(log.clone(), page(None, Some(1008))).await.unwrap();
        assert_eq!(
            r.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1005, 1006, 1007]
        );
        let r = read(log.clone(), page(Some(1005), Some(1008)))
            .await
            .unwrap();
        assert_eq!(
            r.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1006, 1007]
        );
    }
}
