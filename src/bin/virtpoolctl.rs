//! virtpoolctl: the command-line client of virtpoold's control API.
//!
//! Exit codes: 0 ok, 1 refused or failed (the agent's message is printed),
//! 2 usage. Under `--json`, a failure is printed as JSON on stdout
//! (`{"error": {"code": ..., "message": ...}}`) with the same exit code.
//! A closed output pipe (`virtpoolctl pools | head -1`) ends it quietly
//! with exit 0.

use clap::FromArgMatches;
use hyper::Method;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};
use virtpool::api::types::*;
use virtpool::cli::change_text;
use virtpool::cli::client::{path_segment, Client, ClientError};
use virtpool::cli::ctl_args::{self, Cli, Cmd, CompleteArgs, CreateArgs, EventsArgs, PoolCmd};
use virtpool::cli::ctl_output::{err, out, pretty, reader_gone, report, to_json, usage_fail, Fail};
use virtpool::cli::event_text::{self, EventFilter, PoolScope};
use virtpool::cli::views_text;
use virtpool::core::config::{BytesPolicy, CountPolicy};
use virtpool::core::units::{Amount, Bytes, Unit};

/// Whether `--json` is on the command line (before a `--`), for errors
/// found while parsing it.
fn json_requested() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

fn main() -> ExitCode {
    let json = json_requested();
    let cli = match ctl_args::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(c) => c,
        Err(e) if !json || !e.use_stderr() => e.exit(),
        Err(e) => return report(true, usage_fail(&e)),
    };
    if let Some(dir) = &cli.generate_assets {
        return generate_assets(dir);
    }
    let Some(cmd) = cli.cmd else {
        let e = ctl_args::command().error(
            clap::error::ErrorKind::MissingSubcommand,
            "a subcommand is required (see --help)",
        );
        if json {
            return report(true, usage_fail(&e));
        }
        e.exit();
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return report(json, Fail::failed("failed", format!("cannot start: {e}"))),
    };
    let c = Client::new(&cli.socket);
    let done = rt.block_on(async {
        match &cmd {
            Cmd::Events(a) => events(&c, a, json).await,
            Cmd::Complete(a) => complete(&c, a).await,
            Cmd::Top(a) => top(&c, a, json).await,
            _ => run(&c, &cmd, json).await.map(|text| out(&text)),
        }
    });
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => report(json, f),
    }
}

/// `--generate-assets DIR`: both binaries' man pages and completions.
fn generate_assets(dir: &Path) -> ExitCode {
    let written =
        virtpool::cli::assets::generate(ctl_args::command(), "1", dir).and_then(|mut a| {
            a.extend(virtpool::cli::assets::generate(
                virtpool::cli::assets::daemon_command(),
                "8",
                dir,
            )?);
            Ok(a)
        });
    match written {
        Ok(files) => {
            let mut text = format!("wrote {} files into {}:\n", files.len(), dir.display());
            for f in files {
                let _ = writeln!(text, "  {}", f.display());
            }
            out(&text);
            ExitCode::SUCCESS
        }
        Err(e) => report(false, Fail::failed("failed", e.to_string())),
    }
}

/// A pool name as a path segment (checked first: a usage error).
fn path_seg(s: &str) -> Result<String, Fail> {
    virtpool::core::config::valid_name(s).map_err(|e| Fail::usage(e.to_string()))?;
    Ok(path_segment(s))
}

/// A domain name (or UUID) as a path segment, percent-encoded: any name
/// libvirt takes but for control characters.
fn domain_seg(s: &str) -> Result<String, Fail> {
    virtpool::core::config::valid_domain_name(s).map_err(|e| Fail::usage(e.to_string()))?;
    Ok(path_segment(s))
}

fn wait_q(wait: bool) -> &'static str {
    if wait {
        "?wait=true"
    } else {
        ""
    }
}

async fn run(c: &Client, cmd: &Cmd, json: bool) -> Result<String, Fail> {
    // (method, path, body) of the one request each command makes.
    let (method, path, body): (Method, String, Option<Vec<u8>>) = match cmd {
        Cmd::Status => (Method::GET, "/v1/status".into(), None),
        Cmd::Pools => (Method::GET, "/v1/pools".into(), None),
        Cmd::Pool(PoolCmd::Show { pool }) => {
            (Method::GET, format!("/v1/pools/{}", path_seg(pool)?), None)
        }
        Cmd::Pool(PoolCmd::History { pool }) => (
            Method::GET,
            format!("/v1/pools/{}/history", path_seg(pool)?),
            None,
        ),
        Cmd::Pool(PoolCmd::Add {
            pool,
            domain,
            move_,
            wait,
        }) => (
            Method::POST,
            format!("/v1/pools/{}/members{}", path_seg(pool)?, wait_q(*wait)),
            Some(to_json(&AddMember {
                domain: domain.clone(),
                move_: *move_,
            })?),
        ),
        Cmd::Pool(PoolCmd::Remove { pool, domain, wait }) => (
            Method::DELETE,
            format!(
                "/v1/pools/{}/members/{}{}",
                path_seg(pool)?,
                domain_seg(domain)?,
                wait_q(*wait)
            ),
            None,
        ),
        Cmd::Pool(PoolCmd::Create(a)) => (
            Method::PUT,
            format!("/v1/pools/{}{}", path_seg(&a.pool)?, wait_q(a.wait)),
            Some(to_json(&PutPool {
                spec: pool_spec(a)?,
                move_: a.move_,
            })?),
        ),
        Cmd::Pool(PoolCmd::Delete { pool, wait }) => (
            Method::DELETE,
            format!("/v1/pools/{}{}", path_seg(pool)?, wait_q(*wait)),
            None,
        ),
        Cmd::Domains => (Method::GET, "/v1/domains".into(), None),
        Cmd::Domain { domain } => (
            Method::GET,
            format!("/v1/domains/{}", domain_seg(domain)?),
            None,
        ),
        Cmd::Plan(a) if a.is_what_if() => {
            let req = virtpool::cli::whatif_text::request(a).map_err(|e| {
                if e.is_read() {
                    Fail::failed("bad_file", e.to_string())
                } else {
                    Fail::usage(e.to_string())
                }
            })?;
            (Method::POST, "/v1/plan".into(), Some(to_json(&req)?))
        }
        Cmd::Plan(_) => (Method::GET, "/v1/plan".into(), None),
        Cmd::Allocate(a) | Cmd::Release(a) => {
            let verb = if matches!(cmd, Cmd::Allocate(_)) {
                "allocate"
            } else {
                "release"
            };
            let req = Reservation {
                domain: a.domain.clone(),
                vcpus: a.vcpus,
                memory: a.memory.map(Bytes),
                disk_bytes_sec: a.disk_bytes_sec.map(Bytes),
                disk_iops_sec: a.disk_iops_sec,
                cpu: a.cpu.map(virtpool::core::cpu::Cores),
            };
            if verb == "allocate" && req.is_empty() {
                return Err(Fail::usage(
                    "allocate needs at least one of --vcpus, --memory, --disk-bytes-sec, --disk-iops-sec, --cpu",
                ));
            }
            (
                Method::POST,
                format!("/v1/pools/{}/{verb}{}", path_seg(&a.pool)?, wait_q(a.wait)),
                Some(to_json(&req)?),
            )
        }
        Cmd::Reconcile { wait } => (
            Method::POST,
            format!("/v1/reconcile{}", wait_q(*wait)),
            None,
        ),
        Cmd::Reload => (Method::POST, "/v1/reload".into(), None),
        Cmd::Pause { pool: None, wait } => {
            (Method::POST, format!("/v1/pause{}", wait_q(*wait)), None)
        }
        Cmd::Resume { pool: None, wait } => {
            (Method::POST, format!("/v1/resume{}", wait_q(*wait)), None)
        }
        Cmd::Pause {
            pool: Some(p),
            wait,
        } => (
            Method::POST,
            format!("/v1/pools/{}/pause{}", path_seg(p)?, wait_q(*wait)),
            None,
        ),
        Cmd::Resume {
            pool: Some(p),
            wait,
        } => (
            Method::POST,
            format!("/v1/pools/{}/resume{}", path_seg(p)?, wait_q(*wait)),
            None,
        ),
        Cmd::Metrics => (Method::GET, "/metrics".into(), None),
        Cmd::Events(_) | Cmd::Complete(_) | Cmd::Top(_) => {
            return Err(Fail::failed("failed", "not a one-request command"))
        }
    };
    let ans = c.request(method, &path, body).await?;
    ans.ok()?;
    if matches!(cmd, Cmd::Metrics) {
        let text = String::from_utf8_lossy(&ans.body);
        if !json {
            return Ok(text.into_owned());
        }
        let samples = virtpool::cli::promtext::parse(&text)
            .map_err(|e| Fail::failed("bad_answer", e.to_string()))?;
        return pretty(&serde_json::json!({ "metrics": samples }));
    }
    if json {
        let v: serde_json::Value = ans.json()?;
        return pretty(&v);
    }
    let waited = cmd.waits();
    Ok(match cmd {
        Cmd::Status => views_text::render_status(&ans.json()?),
        Cmd::Pools => views_text::render_pools(&ans.json()?),
        Cmd::Pool(PoolCmd::Show { .. }) => views_text::render_pool(&ans.json()?),
        Cmd::Pool(PoolCmd::History { .. }) => virtpool::cli::history_text::render(&ans.json()?),
        Cmd::Domains => views_text::render_domains(&ans.json()?),
        Cmd::Domain { .. } => views_text::render_domain(&ans.json()?),
        Cmd::Plan(a) if a.is_what_if() => virtpool::cli::whatif_text::render(&ans.json()?),
        Cmd::Plan(_) => views_text::render_plan(&ans.json()?),
        Cmd::Allocate(_) | Cmd::Release(_) => change_text::render_reservation(&ans.json()?, waited),
        Cmd::Reconcile { .. } => change_text::render_reconcile(&ans.json()?),
        Cmd::Reload => change_text::render_reload(&ans.json()?),
        Cmd::Pool(_) | Cmd::Pause { .. } | Cmd::Resume { .. } => {
            change_text::render_change(&ans.json()?, matches!(cmd, Cmd::Pause { .. }), waited)
        }
        Cmd::Metrics | Cmd::Events(_) | Cmd::Complete(_) | Cmd::Top(_) => String::new(),
    })
}

// ------------------------------------------------------------------ events

/// The most events one request returns (the API's cap).
const PAGE: usize = 1000;
/// How often `--follow` asks for new events.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

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
async fn events(c: &Client, a: &EventsArgs, json: bool) -> Result<(), Fail> {
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

// --------------------------------------------------------------------- top

async fn top(c: &Client, a: &virtpool::cli::top::TopArgs, json: bool) -> Result<(), Fail> {
    if json {
        return Err(Fail::usage(
            "top draws a screen: for JSON, use status, pools or pool history",
        ));
    }
    match virtpool::cli::top::command(c, a).await {
        Ok(text) => {
            out(&text.unwrap_or_default());
            Ok(())
        }
        Err(virtpool::cli::top::TopError::Client(e)) => Err(e.into()),
        Err(e) => Err(Fail::failed("failed", e.to_string())),
    }
}

// -------------------------------------------------------------- completion

/// How long a completion may wait for the agent.
const COMPLETE_WITHIN: Duration = Duration::from_secs(2);

/// `__complete pools|domains`: the names, one per line. `__complete line
/// WORDS`: the names that fit the word being completed (the last of
/// WORDS) when it is a pool or domain argument; exit 1 when it is not
/// (the script then completes as usual). An agent that cannot be reached
/// gives no names.
async fn complete(c: &Client, a: &CompleteArgs) -> Result<(), Fail> {
    let not_a_name = || Fail {
        code: "not_a_name".into(),
        message: String::new(),
        exit: 1,
    };
    let (kind, client) = match a.what.as_str() {
        "pools" | "domains" => (a.what.clone(), c.clone()),
        "line" => {
            let kind = name_slot(&ctl_args::command(), &a.words).ok_or_else(not_a_name)?;
            (
                kind.to_string(),
                socket_in(&a.words).map_or(c.clone(), Client::new),
            )
        }
        other => {
            return Err(Fail::usage(format!(
                "__complete {other:?}: pools, domains or line"
            )))
        }
    };
    let prefix = if a.what == "line" {
        a.words.last().map_or("", String::as_str)
    } else {
        ""
    };
    let names = tokio::time::timeout(COMPLETE_WITHIN, async {
        if kind == "pools" {
            let r: PoolsResponse = client.get("/v1/pools?members=false").await?;
            Ok::<_, ClientError>(r.pools.into_iter().map(|p| p.name).collect::<Vec<_>>())
        } else {
            let r: DomainsResponse = client.get("/v1/domains").await?;
            Ok(r.domains.into_iter().map(|d| d.name).collect())
        }
    })
    .await;
    let mut text = String::new();
    if let Ok(Ok(names)) = names {
        for n in names.iter().filter(|n| n.starts_with(prefix)) {
            text.push_str(n);
            text.push('\n');
        }
    }
    out(&text);
    Ok(())
}

/// `--socket PATH` (or `--socket=PATH`) among the words of a command line.
fn socket_in(words: &[String]) -> Option<PathBuf> {
    let mut it = words.iter();
    while let Some(w) = it.next() {
        if w == "--" {
            break;
        }
        if w == "--socket" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = w.strip_prefix("--socket=") {
            return Some(PathBuf::from(p));
        }
    }
    None
}

/// Whether the last of `words` (a command line after the program name) is
/// the value of an argument named `pool` or `domain` (a positional one, or
/// `--pool`/`--domain`): `Some("pools")` or `Some("domains")`.
fn name_slot(root: &clap::Command, words: &[String]) -> Option<&'static str> {
    let kind = |id: &str| match id {
        "pool" => Some("pools"),
        "domain" => Some("domains"),
        _ => None,
    };
    let (current, before) = words.split_last()?;
    let mut cmd = root;
    let mut positional = 0;
    let mut only_positionals = false;
    let mut it = before.iter();
    // An option that takes a value, looked up in the current command and
    // then the global ones of the root.
    let option = |cmd: &clap::Command, w: &str| -> Option<clap::Arg> {
        let find = |c: &clap::Command| {
            c.get_arguments()
                .find(|a| {
                    if let Some(l) = w.strip_prefix("--") {
                        a.get_long() == Some(l)
                    } else {
                        w.len() == 2 && w.chars().nth(1) == a.get_short()
                    }
                })
                .cloned()
        };
        find(cmd).or_else(|| find(root))
    };
    while let Some(w) = it.next() {
        if !only_positionals && w == "--" {
            only_positionals = true;
            continue;
        }
        if !only_positionals && w.starts_with('-') && w.len() > 1 {
            if w.contains('=') {
                continue;
            }
            if let Some(a) = option(cmd, w) {
                // Its value is the next word, or the one completed.
                if a.get_action().takes_values() && it.next().is_none() {
                    return kind(a.get_id().as_str());
                }
            }
            continue;
        }
        if positional == 0 {
            if let Some(sub) = cmd.find_subcommand(w.as_str()) {
                cmd = sub;
                continue;
            }
        }
        positional += 1;
    }
    if current.starts_with('-') && !only_positionals {
        return None;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        return None;
    }
    let arg = cmd.get_positionals().nth(positional)?;
    kind(arg.get_id().as_str())
}

fn pool_spec(a: &CreateArgs) -> Result<PoolSpec, Fail> {
    if let Some(f) = &a.file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| Fail::failed("bad_file", format!("{}: {e}", f.display())))?;
        let is_toml = f.extension().is_some_and(|e| e == "toml");
        let spec: Result<PoolSpec, String> = if is_toml {
            toml::from_str(&text).map_err(|e| e.to_string())
        } else {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        };
        return spec
            .map_err(|e| Fail::failed("bad_file", format!("{}: {}", f.display(), e.trim())));
    }
    let amount = |s: &Option<String>, unit: Unit, flag: &str| -> Result<Option<Amount>, Fail> {
        s.as_deref()
            .map(|v| Amount::parse(v, unit).map_err(|e| Fail::usage(format!("--{flag}: {e}"))))
            .transpose()
    };
    let count = |b: Option<Amount>| {
        b.map(|budget| CountPolicy {
            budget: Some(budget),
            ..Default::default()
        })
    };
    let bytes = |b: Option<Amount>| {
        b.map(|budget| BytesPolicy {
            budget: Some(budget),
            ..Default::default()
        })
    };
    Ok(PoolSpec {
        domains: a.domain.clone(),
        match_: a.match_.clone(),
        persist: a.persist,
        vcpus: count(amount(&a.vcpus, Unit::Count, "vcpus")?),
        memory: bytes(amount(&a.memory, Unit::Bytes, "memory")?),
        disk_bytes_sec: bytes(amount(&a.disk_bytes_sec, Unit::Bytes, "disk-bytes-sec")?),
        disk_iops_sec: count(amount(&a.disk_iops_sec, Unit::Count, "disk-iops-sec")?),
        cpu: a
            .cpu
            .as_deref()
            .map(|v| {
                virtpool::core::cpu::parse_budget(v).map_err(|e| Fail::usage(format!("--cpu: {e}")))
            })
            .transpose()?
            .map(|budget| virtpool::core::config::CpuPolicy {
                budget: Some(budget),
                ..Default::default()
            }),
        ..Default::default()
    })
}
