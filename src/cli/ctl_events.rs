//! `virtpoolctl events`: the audit log's events, paged back as far as
//! asked, filtered, and with `--follow` polled for new ones.

use crate::api::types::{Event, EventsResponse, PoolView};
use crate::cli::client::{Client, ClientError};
use crate::cli::ctl_args::EventsArgs;
use crate::cli::ctl_output::{err, out, pretty, reader_gone, Fail};
use crate::cli::ctl_request::{domain_seg, path_seg};
use crate::cli::event_text::{self, EventFilter, PoolScope};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

/// The most events one request returns (the API's cap).
const PAGE: usize = 1000;
/// How often `--follow` asks for new events.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// One page of the audit log: after `since`, before `before`.
async fn events_page(
    c: &Client,
    since: Option<u64>,
    before: Option<u64>,
) -> Result<Vec<Event>, Fail> {
    let mut path = format!("/v1/events?limit={PAGE}");
    if let Some(s) = since {
        let _ = write!(path, "&since={s}");
    }
    if let Some(b) = before {
        let _ = write!(path, "&before={b}");
    }
    let r: EventsResponse = c.get(&path).await?;
    Ok(r.events)
}

/// `--pool`: the pool's members now (names and UUIDs, and domains added
/// but not planned yet). A pool that does not exist (any more) has none:
/// only past events naming it match.
async fn pool_scope(c: &Client, name: &str, warn: bool) -> Result<PoolScope, Fail> {
    let mut scope = PoolScope {
        name: name.to_string(),
        members: Default::default(),
    };
    match c
        .get::<PoolView>(&format!("/v1/pools/{}", path_seg(name)?))
        .await
    {
        Ok(p) => {
            for m in p.members {
                scope.members.insert(m.name);
                scope.members.insert(m.uuid);
            }
            scope.members.extend(p.pending);
        }
        Err(ClientError::Api { status: 404, .. }) => {
            if warn {
                err(&format!(
                    "virtpoolctl: no pool {name:?} now: only events that name it are shown\n"
                ));
            }
        }
        Err(e) => return Err(e.into()),
    }
    Ok(scope)
}

fn print_events(evs: &[Event], json: bool, lines: bool) -> Result<(), Fail> {
    if json && lines {
        let mut text = String::new();
        for ev in evs {
            let line =
                serde_json::to_string(ev).map_err(|e| Fail::failed("failed", e.to_string()))?;
            text.push_str(&line);
            text.push('\n');
        }
        out(&text);
    } else if json {
        out(&pretty(&EventsResponse {
            events: evs.to_vec(),
        })?);
    } else if lines {
        for ev in evs {
            out(&(event_text::line(ev) + "\n"));
        }
    } else {
        out(&event_text::render(evs));
    }
    Ok(())
}

/// `events`: the newest matching events (paging back through the audit
/// log as far as `--since` or `--limit` asks), then with `--follow` the
/// new ones every [`FOLLOW_EVERY`] until interrupted.
pub async fn events(c: &Client, a: &EventsArgs, json: bool) -> Result<(), Fail> {
    let since = a
        .since
        .as_deref()
        .map(|s| event_text::parse_since(s, SystemTime::now()))
        .transpose()
        .map_err(|e| Fail::usage(e.to_string()))?;
    let limit = a
        .limit
        .unwrap_or(if since.is_some() { usize::MAX } else { 50 });
    if let Some(d) = &a.domain {
        domain_seg(d)?;
    }
    let mut filter = EventFilter {
        since,
        pool: None,
        domain: a.domain.clone(),
    };
    if let Some(p) = &a.pool {
        filter.pool = Some(pool_scope(c, p, true).await?);
    }
    // Newest first while paging back.
    let mut shown: Vec<Event> = Vec::new();
    let mut newest: Option<u64> = None;
    let mut before = None;
    'pages: while shown.len() < limit {
        let page = events_page(c, None, before).await?;
        if newest.is_none() {
            newest = Some(page.last().map_or(0, |e| e.seq));
        }
        for ev in page.iter().rev() {
            if filter.is_older(ev) {
                break 'pages;
            }
            if filter.matches(ev) {
                shown.push(ev.clone());
                if shown.len() >= limit {
                    break 'pages;
                }
            }
        }
        match page.first() {
            Some(first) if page.len() >= PAGE => before = Some(first.seq),
            _ => break,
        }
    }
    shown.reverse();
    if !a.follow {
        return print_events(&shown, json, false);
    }
    print_events(&shown, json, true)?;
    follow(c, a, json, filter, newest.unwrap_or(0)).await
}

/// `events --follow`: polls for events after `last`, prints those that
/// match, until interrupted (Ctrl-C ends it with exit 0). An agent that
/// cannot be reached is said once and asked again.
async fn follow(
    c: &Client,
    a: &EventsArgs,
    json: bool,
    mut filter: EventFilter,
    mut last: u64,
) -> Result<(), Fail> {
    let mut down = false;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            _ = &mut interrupted => return Ok(()),
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
        // Nothing may come for long: notice a reader that went away
        // meanwhile, as a write would.
        if reader_gone() {
            std::process::exit(0);
        }
        let got = async {
            if let Some(p) = &a.pool {
                filter.pool = Some(pool_scope(c, p, false).await?);
            }
            // The newest page, then back to `last` if more came.
            let mut new = events_page(c, Some(last), None).await?;
            while new.len() >= PAGE {
                let older = events_page(c, Some(last), new.first().map(|e| e.seq)).await?;
                if older.is_empty() {
                    break;
                }
                new.splice(0..0, older);
            }
            Ok::<_, Fail>(new)
        }
        .await;
        match got {
            Ok(new) => {
                if down {
                    err("virtpoolctl: virtpoold answers again\n");
                    down = false;
                }
                if let Some(e) = new.last() {
                    last = e.seq;
                }
                let shown: Vec<Event> = new.into_iter().filter(|e| filter.matches(e)).collect();
                print_events(&shown, json, true)?;
            }
            Err(f) if f.exit == 1 && !down => {
                err(&format!("virtpoolctl: {}; trying again\n", f.message));
                down = true;
            }
            Err(f) if f.exit == 1 => {}
            Err(f) => return Err(f),
        }
    }
}
