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
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};
use virtpool::api::types::*;
use virtpool::cli::client::{path_segment, Client, ClientError};
use virtpool::cli::ctl_args::{self, Cli, Cmd, CompleteArgs, CreateArgs, EventsArgs, PoolCmd};
use virtpool::cli::event_text::{self, EventFilter, PoolScope};
use virtpool::cli::report::table;
use virtpool::core::config::{BytesPolicy, CountPolicy};
use virtpool::core::model::{PerResource, Resource};
use virtpool::core::units::{self, Amount, Bytes, Unit};

/// A failure: the machine code (as the API's errors have), the message
/// and the exit code.
struct Fail {
    code: String,
    message: String,
    exit: u8,
}

impl Fail {
    fn usage(message: impl Into<String>) -> Fail {
        Fail {
            code: "usage".into(),
            message: message.into(),
            exit: 2,
        }
    }

    fn failed(code: &str, message: impl Into<String>) -> Fail {
        Fail {
            code: code.into(),
            message: message.into(),
            exit: 1,
        }
    }
}

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Fail {
        let code = match &e {
            ClientError::Api { code, .. } => code.clone(),
            ClientError::Unreachable { .. } => "unreachable".into(),
            ClientError::Protocol { .. } => "protocol".into(),
            ClientError::Decode(_) => "bad_answer".into(),
        };
        Fail::failed(&code, e.to_string())
    }
}

// ------------------------------------------------------------- printing

/// Writes `text` to stdout. A closed pipe (the reader is gone, as after
/// `| head -1`) ends the program quietly with exit 0: there is no one left
/// to tell.
fn out(text: &str) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        err(&format!("virtpoolctl: cannot write the output: {e}\n"));
        std::process::exit(1);
    }
}

/// Whether stdout is a pipe whose reader has closed it (a write would
/// fail with a broken pipe).
fn reader_gone() -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let stdout = std::io::stdout();
    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLOUT)];
    poll(&mut fds, PollTimeout::ZERO).is_ok()
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLERR))
}

/// Writes `text` to stderr; a failure to is ignored (nowhere to report it).
fn err(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Prints a failure (JSON on stdout under `--json`, else text on stderr)
/// and gives its exit code.
fn report(json: bool, f: Fail) -> ExitCode {
    if json {
        let body = ErrorBody {
            error: ErrorDetail {
                code: f.code,
                message: f.message,
            },
        };
        match serde_json::to_string_pretty(&body) {
            Ok(s) => out(&(s + "\n")),
            Err(e) => err(&format!("virtpoolctl: {e}\n")),
        }
    } else {
        err(&format!("virtpoolctl: {}\n", f.message));
    }
    ExitCode::from(f.exit)
}

/// Whether `--json` is on the command line (before a `--`), for errors
/// found while parsing it.
fn json_requested() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// A clap error as a failure: its first line, without clap's `error: `.
fn usage_fail(e: &clap::Error) -> Fail {
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("invalid command line");
    Fail::usage(first.strip_prefix("error: ").unwrap_or(first).trim())
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

/// What a change without `--wait` prints after its message.
const SAVED: &str = "change saved; it applies with the next cycle (use --wait to wait for it)\n";

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
        Cmd::Status => render_status(&ans.json()?),
        Cmd::Pools => {
            let p: PoolsResponse = ans.json()?;
            if p.pools.is_empty() {
                "no pools\n".into()
            } else {
                p.pools
                    .iter()
                    .map(render_pool)
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
        Cmd::Pool(PoolCmd::Show { .. }) => render_pool(&ans.json()?),
        Cmd::Pool(PoolCmd::History { .. }) => virtpool::cli::history_text::render(&ans.json()?),
        Cmd::Domains => render_domains(&ans.json()?),
        Cmd::Domain { .. } => render_domain(&ans.json()?),
        Cmd::Plan(a) if a.is_what_if() => virtpool::cli::whatif_text::render(&ans.json()?),
        Cmd::Plan(_) => render_plan(&ans.json()?),
        Cmd::Allocate(_) | Cmd::Release(_) => {
            let r: ReservationResponse = ans.json()?;
            let mut s = format!(
                "{} in pool {}: reservation {}{}\n",
                r.domain,
                r.pool,
                describe(&r.reservation),
                if r.changed { "" } else { " (unchanged)" }
            );
            s.push_str(&render_waited(waited, r.changed, r.cycle.as_ref()));
            s
        }
        Cmd::Reconcile { .. } => {
            let r: ReconcileResponse = ans.json()?;
            match &r.cycle {
                Some(c) => render_cycle(c),
                None => "cycle requested\n".into(),
            }
        }
        Cmd::Reload => {
            let r: ReloadResponse = ans.json()?;
            let mut s = format!("config reloaded from {}\n", r.file);
            if !r.restart_only.is_empty() {
                s.push_str(&format!(
                    "changed, applied only on restart: {}\n",
                    r.restart_only.join(", ")
                ));
            }
            if !r.set_aside.is_empty() {
                s.push_str(&format!(
                    "runtime changes set aside (they do not fit the new file; kept in {}):\n",
                    r.set_aside_file.as_deref().unwrap_or("the state directory")
                ));
                for p in &r.set_aside {
                    s.push_str(&format!("  {p}\n"));
                }
            }
            s
        }
        Cmd::Pool(_) | Cmd::Pause { .. } | Cmd::Resume { .. } => {
            let r: ChangeResponse = ans.json()?;
            let mut s = format!(
                "{}{}\n",
                r.message,
                if r.changed {
                    ""
                } else {
                    " (nothing to change)"
                }
            );
            // A pause holds at once: the members are left untouched from
            // now on, whatever the next cycle plans.
            if matches!(cmd, Cmd::Pause { .. }) && !waited {
                return Ok(s);
            }
            s.push_str(&render_waited(waited, r.changed, r.cycle.as_ref()));
            s
        }
        Cmd::Metrics | Cmd::Events(_) | Cmd::Complete(_) | Cmd::Top(_) => String::new(),
    })
}

fn pretty<T: serde::Serialize>(v: &T) -> Result<String, Fail> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(|e| Fail::failed("failed", e.to_string()))
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

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, Fail> {
    serde_json::to_vec(v).map_err(|e| Fail::failed("failed", e.to_string()))
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

// ------------------------------------------------------------------ output

fn opt(r: Resource, v: Option<u64>) -> String {
    v.map_or("-".into(), |v| r.human(v))
}

fn describe(r: &PerResource<Option<u64>>) -> String {
    let parts: Vec<String> = Resource::ALL
        .iter()
        .filter_map(|x| r.get(*x).map(|v| format!("{x} {}", x.human(v))))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// The cycle a change waited for; when it waited and none came (the
/// agent's wait limit), says so: the change itself is saved. A change that
/// did not wait says it is saved and applies with the next cycle: views
/// show the old state until then.
fn render_waited(waited: bool, changed: bool, cycle: Option<&CycleResult>) -> String {
    match cycle {
        Some(c) => render_cycle(c),
        None if waited && changed => {
            "no cycle finished within the agent's wait limit (its cycle is still \
             running): the change is saved and applies when that cycle ends\n"
                .into()
        }
        None if changed => SAVED.into(),
        None => String::new(),
    }
}

fn render_cycle(c: &CycleResult) -> String {
    format!(
        "cycle {}: {} action(s), {} failed{}\n",
        c.cycle,
        c.actions,
        c.failed,
        if c.libvirt_connected {
            ""
        } else {
            " (libvirt not connected)"
        }
    )
}

fn render_status(s: &StatusResponse) -> String {
    let mut rows = vec![
        vec![
            "agent".to_string(),
            format!("virtpoold {}", s.agent.version),
        ],
        vec![
            "mode".into(),
            format!(
                "{:?}{}",
                s.agent.mode,
                if s.agent.paused { " (PAUSED)" } else { "" }
            )
            .to_lowercase(),
        ],
        vec![
            "libvirt".into(),
            format!(
                "{} {}{}",
                s.libvirt.uri,
                if s.libvirt.connected {
                    "connected"
                } else {
                    "NOT CONNECTED"
                },
                s.libvirt
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
        ],
        vec![
            "last cycle".into(),
            match &s.last_cycle {
                Some(c) => format!(
                    "#{} took {:.1} ms, {} action(s), {} failed",
                    s.cycle, c.duration_ms, c.actions, c.failed
                ),
                None => "none yet".into(),
            },
        ],
    ];
    if let Some(c) = &s.capacity {
        rows.extend(virtpool::cli::report::capacity_rows(c));
    } else if let Some(h) = &s.host {
        rows.push(vec![
            "host".into(),
            format!(
                "{} CPUs, {} memory ({} available)",
                h.cpus,
                units::human_bytes(h.memory_total),
                units::human_bytes(h.memory_available)
            ),
        ]);
    }
    if let (None, Some(a)) = (&s.capacity, &s.allocatable) {
        rows.push(vec![
            "allocatable".into(),
            format!(
                "{} vCPUs, {}, {} of CPU time",
                a.vcpus,
                units::human_bytes(a.memory),
                Resource::Cpu.human(a.cpu)
            ),
        ]);
    }
    rows.push(vec!["pools".into(), s.pools.to_string()]);
    rows.push(vec![
        "domains".into(),
        format!(
            "{} ({} active): {} managed, {} unmanaged{}",
            s.domains.total,
            s.domains.active,
            s.domains.managed,
            s.domains.unmanaged,
            if s.domains.unadmitted > 0 {
                format!(", {} UNADMITTED", s.domains.unadmitted)
            } else {
                String::new()
            }
        ),
    ]);
    if !s.agent.paused_pools.is_empty() {
        rows.push(vec!["paused pools".into(), s.agent.paused_pools.join(", ")]);
    }
    if let Some(e) = &s.config_error {
        rows.push(vec!["CONFIG ERROR".into(), e.clone()]);
    }
    table(&rows)
}

fn render_pool(p: &PoolView) -> String {
    let leaving = |name: &str| p.leaving.iter().any(|l| l == name);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pool {} ({}){} — {} member(s){}{}",
        p.name,
        match p.source {
            PoolSource::Config => "config",
            PoolSource::Runtime => "runtime",
        },
        if p.paused { " [paused]" } else { "" },
        p.member_count,
        if p.pending.is_empty() {
            String::new()
        } else {
            format!(", {} pending", p.pending.len())
        },
        if p.unadmitted.is_empty() {
            String::new()
        } else {
            format!(", {} UNADMITTED", p.unadmitted.len())
        }
    );
    let mut rows = vec![vec![
        "  RESOURCE".to_string(),
        "BUDGET".into(),
        "ALLOCATED".into(),
        "FREE".into(),
        "RESERVED".into(),
    ]];
    for r in Resource::ALL {
        if let Some(b) = p.budget.get(r) {
            rows.push(vec![
                format!("  {r}"),
                r.human(*b),
                r.human(*p.allocated.get(r)),
                opt(r, *p.free.get(r)),
                r.human(*p.reserved.get(r)),
            ]);
        }
    }
    out.push_str(&table(&rows));
    let mut rows = vec![vec![
        "  DOMAIN".to_string(),
        "STATE".into(),
        "RESOURCE".into(),
        "FLOOR".into(),
        "TARGET".into(),
        "ACTUAL".into(),
        "USED".into(),
        "RESERVED".into(),
        "WHY".into(),
    ]];
    for m in &p.members {
        let mut first = true;
        let head = |first: bool| {
            if first {
                (format!("  {}", m.name), m.state.to_string())
            } else {
                (String::new(), String::new())
            }
        };
        for r in Resource::ALL {
            let Some(a) = m.resources.get(r) else {
                continue;
            };
            let (n, s) = head(first);
            let mut why = a.reason.to_string();
            if first {
                if let Some(note) = &m.note {
                    // A note that starts with the reason says it already.
                    why = if note.starts_with(&why) {
                        note.clone()
                    } else {
                        format!("{why}; {note}")
                    };
                }
                if leaving(&m.name) {
                    why = format!("{why}; {LEAVING}");
                }
            }
            rows.push(vec![
                n,
                s,
                r.key().into(),
                r.human(a.floor),
                r.human(a.target),
                r.human(a.actual),
                opt(r, a.used),
                opt(r, *m.reservation.get(r)),
                why,
            ]);
            first = false;
        }
        if first {
            let (n, s) = head(true);
            let mut why = m.note.clone().unwrap_or_else(|| {
                if m.admitted {
                    "-".into()
                } else {
                    "unadmitted".into()
                }
            });
            if leaving(&m.name) {
                why = format!("{why}; {LEAVING}");
            }
            rows.push(vec![
                n,
                s,
                "-".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                why,
            ]);
        }
    }
    for d in &p.pending {
        rows.push(vec![
            format!("  {d}"),
            "pending".into(),
            "-".into(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            "added; joins with the next cycle".into(),
        ]);
    }
    if p.members.is_empty() && p.pending.is_empty() {
        rows.push(vec!["  (no members)".into()]);
    }
    out.push_str(&table(&rows));
    if !p.unadmitted.is_empty() {
        let _ = writeln!(
            out,
            "  UNADMITTED ({}): floors do not fit the budget; left untouched",
            p.unadmitted.len()
        );
        for name in &p.unadmitted {
            let _ = writeln!(out, "    {name}");
        }
    }
    out
}

/// What the WHY column adds for a member removed through the API.
const LEAVING: &str = "removed; leaves with the next cycle";

fn render_domains(d: &DomainsResponse) -> String {
    let mut rows = vec![vec![
        "NAME".to_string(),
        "STATE".into(),
        "POOL".into(),
        "VCPUS".into(),
        "MEMORY".into(),
        "USED".into(),
        "UUID".into(),
    ]];
    for x in &d.domains {
        rows.push(vec![
            x.name.clone(),
            x.state.to_string(),
            x.pool.clone().unwrap_or_else(|| match x.release {
                Some(_) => "(released)".into(),
                None => "(unmanaged)".into(),
            }),
            format!("{}/{}", x.vcpus, x.vcpus_max),
            format!(
                "{} / {}",
                units::human_bytes(x.memory),
                units::human_bytes(x.memory_max)
            ),
            opt(Resource::Memory, x.memory_used),
            x.uuid.clone(),
        ]);
    }
    table(&rows)
}

fn render_domain(d: &DomainView) -> String {
    let mut rows = vec![
        vec!["name".to_string(), d.name.clone()],
        vec!["uuid".into(), d.uuid.clone()],
        vec!["state".into(), d.state.to_string()],
        vec![
            "pool".into(),
            match (&d.pool, d.admitted) {
                (Some(p), Some(false)) => format!("{p} (UNADMITTED)"),
                (Some(p), _) => p.clone(),
                (None, _) => format!(
                    "(unmanaged: {})",
                    virtpool::core::planner::Release::words(d.release)
                ),
            },
        ],
        vec!["vcpus".into(), format!("{} (max {})", d.vcpus, d.vcpus_max)],
        vec![
            "memory".into(),
            format!(
                "{} (max {}, used {})",
                units::human_bytes(d.memory),
                units::human_bytes(d.memory_max),
                opt(Resource::Memory, d.memory_used)
            ),
        ],
        vec![
            "disks".into(),
            if d.disks.is_empty() {
                "-".into()
            } else {
                d.disks.join(", ")
            },
        ],
        vec!["reservation".into(), describe(&d.reservation)],
    ];
    if d.cpu_used.is_some() || d.cpu_limit.is_some() {
        rows.insert(
            5,
            vec![
                "cpu".into(),
                format!(
                    "used {}, limit {}",
                    opt(Resource::Cpu, d.cpu_used),
                    d.cpu_limit
                        .map_or_else(|| "none".to_string(), |l| Resource::Cpu.human(l))
                ),
            ],
        );
    }
    for r in Resource::ALL {
        if let Some(a) = d.resources.get(r) {
            rows.push(vec![
                r.key().into(),
                format!(
                    "target {} (reason: {}), actual {}, floor {}, cap {}",
                    r.human(a.target),
                    a.reason,
                    r.human(a.actual),
                    r.human(a.floor),
                    a.cap.map_or_else(|| "none".to_string(), |c| r.human(c)),
                ),
            ]);
        }
    }
    table(&rows)
}

fn render_plan(p: &PlanResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan from cycle {}: {} action(s){}",
        p.cycle,
        p.actions.len(),
        if p.paused {
            " — NOT issued (paused or observe mode)"
        } else {
            ""
        }
    );
    let mut rows = Vec::new();
    for a in &p.actions {
        let what = virtpool::cli::report::action(&a.action);
        rows.push(vec![
            format!("  {}", a.action.domain()),
            a.pool.clone().unwrap_or_default(),
            what,
        ]);
    }
    out.push_str(&table(&rows));
    for pool in &p.pools {
        out.push('\n');
        out.push_str(&render_pool(pool));
    }
    out
}
