//! `virtpoolctl __complete`: the pool and domain names the shell
//! completion scripts offer, asked of the running agent.

use crate::api::types::{DomainsResponse, PoolsResponse};
use crate::cli::client::{Client, ClientError};
use crate::cli::ctl_args::{self, CompleteArgs};
use crate::cli::ctl_output::{out, Fail};
use std::path::PathBuf;
use std::time::Duration;

/// How long a completion may wait for the agent.
const COMPLETE_WITHIN: Duration = Duration::from_secs(2);

/// `__complete pools|domains`: the names, one per line. `__complete line
/// WORDS`: the names that fit the word being completed (the last of
/// WORDS) when it is a pool or domain argument; exit 1 when it is not
/// (the script then completes as usual). An agent that cannot be reached
/// gives no names.
pub async fn complete(c: &Client, a: &CompleteArgs) -> Result<(), Fail> {
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
