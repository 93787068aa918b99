//! Audit events as `virtpoolctl events` shows and selects them: one line
//! per event in units a person reads (an action is written from its
//! numbers, `128.0 MiB/s`, not from the audit record's raw text), and the
//! filters of the command line (`--since`, `--pool`, `--domain`). Pure.

use crate::core::event::{Event, EventKind};
use std::collections::BTreeSet;
use std::time::SystemTime;

/// The events to show.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only events at or after this time.
    pub since: Option<SystemTime>,
    /// Only events about this pool.
    pub pool: Option<PoolScope>,
    /// Only events about this domain (name or UUID).
    pub domain: Option<String>,
}

/// A pool and its members now (names and UUIDs): an action belongs to the
/// pool when its domain is a member.
#[derive(Debug, Clone, Default)]
pub struct PoolScope {
    pub name: String,
    pub members: BTreeSet<String>,
}

impl EventFilter {
    /// Whether `ev` is one to show (its time is not checked: see
    /// [`EventFilter::is_older`]).
    pub fn matches(&self, ev: &Event) -> bool {
        if let Some(d) = &self.domain {
            let hit = match &ev.kind {
                EventKind::Action { domain, uuid, .. }
                | EventKind::Unadmitted { domain, uuid, .. }
                | EventKind::Admitted { domain, uuid, .. }
                | EventKind::Released { domain, uuid, .. } => {
                    domain == d || uuid.eq_ignore_ascii_case(d)
                }
                EventKind::Change { message, .. } => message.contains(&format!("{d:?}")),
                _ => false,
            };
            if !hit {
                return false;
            }
        }
        if let Some(p) = &self.pool {
            let hit = match &ev.kind {
                EventKind::Action { domain, uuid, .. } => {
                    p.members.contains(domain) || p.members.contains(uuid)
                }
                EventKind::Unadmitted { pool, .. } | EventKind::Admitted { pool, .. } => {
                    *pool == p.name
                }
                EventKind::Change { message, .. } => {
                    message.contains(&format!("pool {:?}", p.name))
                }
                _ => false,
            };
            if !hit {
                return false;
            }
        }
        self.since.is_none_or(|t| !is_before(ev, t))
    }

    /// Whether `ev` is older than `--since` (and so are all before it).
    pub fn is_older(&self, ev: &Event) -> bool {
        self.since.is_some_and(|t| is_before(ev, t))
    }
}

/// Whether the event's time is before `t`; an unreadable time is not.
fn is_before(ev: &Event, t: SystemTime) -> bool {
    humantime::parse_rfc3339_weak(&ev.time).is_ok_and(|at| at < t)
}

/// `--since`: a time ago (`10m`, `2h`, `1d`, `90s`, also `10m ago`), or a
/// point in time in UTC (`2024-05-01 10:00:00`, `2024-05-01T10:00:00Z`,
/// or a date `2024-05-01`).
pub fn parse_since(s: &str, now: SystemTime) -> Result<SystemTime, SinceError> {
    let t = s.trim();
    let ago = t.strip_suffix("ago").map_or(t, str::trim_end);
    if let Ok(d) = humantime::parse_duration(ago) {
        return now
            .checked_sub(d)
            .ok_or_else(|| SinceError::TooLongAgo(s.to_string()));
    }
    let date_only = format!("{t} 00:00:00");
    humantime::parse_rfc3339_weak(t)
        .or_else(|_| humantime::parse_rfc3339_weak(&date_only))
        .map_err(|_| SinceError::NotATime(s.to_string()))
}

/// A `--since` that is neither a time ago nor a UTC time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinceError {
    #[error("--since {0:?}: too long ago")]
    TooLongAgo(String),
    #[error(
        "--since {0:?}: not a time ago like \"10m\" or \"2h\", nor a UTC time like \"2024-05-01 10:00:00\""
    )]
    NotATime(String),
}

/// The kind of an event as one word, and what happened in words.
pub fn describe(ev: &Event) -> (&'static str, String) {
    match &ev.kind {
        EventKind::Action {
            domain,
            resource,
            before,
            after,
            reason,
            result,
            error,
            action,
            ..
        } => {
            let what = match action {
                Some(a) => crate::cli::report::action(a),
                None => format!("{resource} {before} → {after} ({reason})"),
            };
            let tail = error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            ("action", format!("{domain} {what}: {result}{tail}"))
        }
        EventKind::ConfigReload { file, ok, error } => (
            "reload",
            if *ok {
                format!("{file}: ok")
            } else {
                format!("{file}: refused: {}", error.as_deref().unwrap_or(""))
            },
        ),
        EventKind::LibvirtLost { uri, error } => ("libvirt", format!("{uri} lost: {error}")),
        EventKind::LibvirtRestored { uri } => ("libvirt", format!("{uri} restored")),
        EventKind::Unadmitted {
            pool, domain, note, ..
        } => (
            "unadmitted",
            match note {
                None => format!("{domain} in pool {pool}"),
                Some(n) => format!("{domain} in pool {pool}: {n}"),
            },
        ),
        EventKind::Admitted { pool, domain, .. } => {
            ("admitted", format!("{domain} in pool {pool}, again"))
        }
        EventKind::Released { domain, how, .. } => ("released", format!("{domain}: {how}")),
        EventKind::Started { version } => ("started", format!("virtpoold {version}")),
        EventKind::Stopping => ("stopping", String::new()),
        EventKind::Change { uid, message } => ("change", format!("uid {uid}: {message}")),
        EventKind::StateSetAside { file, problems } => (
            "set-aside",
            format!("{} (kept in {file})", problems.join("; ")),
        ),
    }
}

/// One event as a line: sequence number (what `/v1/events?since=` takes),
/// time (UTC), kind, what.
pub fn line(ev: &Event) -> String {
    let (kind, text) = describe(ev);
    format!("{}  {}  {kind:<10}  {text}", ev.seq, ev.time)
        .trim_end()
        .to_string()
}

/// Events one per line; `no events` when there are none.
pub fn render(events: &[Event]) -> String {
    if events.is_empty() {
        return "no events\n".into();
    }
    let mut out = String::new();
    for ev in events {
        out.push_str(&line(ev));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::core::model::{Action, IoTune, Reason};

    const MIB: u64 = 1 << 20;

    fn at(seq: u64, time: &str, kind: EventKind) -> Event {
        Event {
            seq,
            time: time.into(),
            cycle: Some(3),
            kind,
        }
    }

    fn io(bytes: u64, iops: u64) -> IoTune {
        IoTune {
            total_bytes_sec: bytes,
            total_iops_sec: iops,
            ..Default::default()
        }
    }

    /// What `monitor` writes for an action: the text fields as its log
    /// line has them, and the action in numbers.
    fn action(seq: u64, a: Action, before: &str, after: &str) -> Event {
        at(
            seq,
            "2025-03-01T10:00:05.250Z",
            EventKind::Action {
                domain: a.domain().into(),
                uuid: a.uuid().into(),
                resource: a.resource_label().into(),
                before: before.into(),
                after: after.into(),
                reason: "share".into(),
                result: "ok".into(),
                error: None,
                action: Some(Box::new(a)),
            },
        )
    }

    fn sample() -> Vec<Event> {
        vec![
            at(
                1,
                "2025-03-01T10:00:00.000Z",
                EventKind::Started {
                    version: "0.1.0".into(),
                },
            ),
            action(
                2,
                Action::SetBlockIoTune {
                    uuid: "u-web-1".into(),
                    domain: "web-1".into(),
                    disk: "vda".into(),
                    from: io(134_217_728, 500),
                    to: io(64 * MIB, 250),
                    persist: false,
                },
                "vda 134217728B/s 500IOPS",
                "vda 67108864B/s 250IOPS",
            ),
            action(
                3,
                Action::SetMemory {
                    uuid: "u-web-2".into(),
                    domain: "web-2".into(),
                    from: 5427 * MIB,
                    to: 5468 * MIB,
                    reason: Reason::Share,
                    persist: false,
                },
                "5.3 GiB",
                "5.3 GiB",
            ),
            at(
                4,
                "2025-03-01T10:02:00.000Z",
                EventKind::Action {
                    domain: "db-1".into(),
                    uuid: "u-db-1".into(),
                    resource: "vcpus".into(),
                    before: "2".into(),
                    after: "4".into(),
                    reason: "share".into(),
                    result: "error".into(),
                    error: Some("guest did not answer".into()),
                    action: None,
                },
            ),
            at(
                5,
                "2025-03-01T10:03:00.000Z",
                EventKind::Unadmitted {
                    pool: "web".into(),
                    domain: "web-9".into(),
                    uuid: "u-web-9".into(),
                    note: Some("floors do not fit".into()),
                },
            ),
            at(
                6,
                "2025-03-01T10:04:00.000Z",
                EventKind::Change {
                    uid: 0,
                    message: "domain \"dev\" added to pool \"web\"".into(),
                },
            ),
        ]
    }

    #[test]
    fn lines_in_units_a_person_reads() {
        insta::assert_snapshot!(render(&sample()), @r#"
        1  2025-03-01T10:00:00.000Z  started     virtpoold 0.1.0
        2  2025-03-01T10:00:05.250Z  action      web-1 disk vda 128.0 MiB/s, 500 IOPS → 64.0 MiB/s, 250 IOPS: ok
        3  2025-03-01T10:00:05.250Z  action      web-2 memory 5.30 GiB → 5.34 GiB (share): ok
        4  2025-03-01T10:02:00.000Z  action      db-1 vcpus 2 → 4 (share): error: guest did not answer
        5  2025-03-01T10:03:00.000Z  unadmitted  web-9 in pool web: floors do not fit
        6  2025-03-01T10:04:00.000Z  change      uid 0: domain "dev" added to pool "web"
        "#);
        assert_eq!(render(&[]), "no events\n");
    }

    fn seqs(f: &EventFilter) -> Vec<u64> {
        sample()
            .iter()
            .filter(|e| f.matches(e))
            .map(|e| e.seq)
            .collect()
    }

    #[test]
    fn filters_by_pool_domain_and_time() {
        let web = PoolScope {
            name: "web".into(),
            members: ["web-1", "u-web-2"].iter().map(|s| s.to_string()).collect(),
        };
        let f = EventFilter {
            pool: Some(web.clone()),
            ..Default::default()
        };
        assert_eq!(seqs(&f), vec![2, 3, 5, 6]);
        let f = EventFilter {
            domain: Some("web-2".into()),
            ..Default::default()
        };
        assert_eq!(seqs(&f), vec![3]);
        let f = EventFilter {
            domain: Some("U-DB-1".into()),
            ..Default::default()
        };
        assert_eq!(seqs(&f), vec![4]);
        let f = EventFilter {
            domain: Some("dev".into()),
            pool: Some(web),
            ..Default::default()
        };
        assert_eq!(seqs(&f), vec![6]);
        let t = humantime::parse_rfc3339("2025-03-01T10:02:00Z").unwrap();
        let f = EventFilter {
            since: Some(t),
            ..Default::default()
        };
        assert_eq!(seqs(&f), vec![4, 5, 6]);
        assert!(f.is_older(&sample()[2]) && !f.is_older(&sample()[3]));
    }

    #[test]
    fn since_is_a_time_ago_or_a_utc_time() {
        let now = humantime::parse_rfc3339("2025-03-01T12:00:00Z").unwrap();
        let t = |s| humantime::format_rfc3339(parse_since(s, now).unwrap()).to_string();
        for (since, at) in [
            ("10m", "2025-03-01T11:50:00Z"),
            ("2h ago", "2025-03-01T10:00:00Z"),
            ("1d", "2025-02-28T12:00:00Z"),
            ("2025-03-01 09:30:00", "2025-03-01T09:30:00Z"),
            ("2025-03-01T09:30:00Z", "2025-03-01T09:30:00Z"),
            ("2025-03-01", "2025-03-01T00:00:00Z"),
        ] {
            assert_eq!(t(since), at, "{since:?}");
        }
        let e = parse_since("yesterday-ish", now).unwrap_err().to_string();
        assert!(
            e.starts_with("--since \"yesterday-ish\": not a time ago"),
            "{e}"
        );
    }
}
