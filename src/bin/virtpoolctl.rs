//! virtpoolctl: the command-line client of virtpoold's control API.
//!
//! Exit codes: 0 ok, 1 refused or failed (the agent's message is printed),
//! 2 usage. Under `--json`, a failure is printed as JSON on stdout
//! (`{"error": {"code": ..., "message": ...}}`) with the same exit code.
//! A closed output pipe (`virtpoolctl pools | head -1`) ends it quietly
//! with exit 0.
//!
//! The options are [`virtpool::cli::ctl_args`]; what the commands do is in
//! the `ctl_*` modules of [`virtpool::cli`].

use clap::FromArgMatches;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use virtpool::cli::assets;
use virtpool::cli::client::Client;
use virtpool::cli::ctl_args::{self, Cli, Cmd};
use virtpool::cli::ctl_output::{out, report, usage_fail, Fail};
use virtpool::cli::top::{self, TopArgs, TopError};
use virtpool::cli::{ctl_complete, ctl_events, ctl_request};

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
            Cmd::Events(a) => ctl_events::events(&c, a, json).await,
            Cmd::Complete(a) => ctl_complete::complete(&c, a).await,
            Cmd::Top(a) => run_top(&c, a, json).await,
            _ => ctl_request::run(&c, &cmd, json)
                .await
                .map(|text| out(&text)),
        }
    });
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => report(json, f),
    }
}

/// `--generate-assets DIR`: both binaries' man pages and completions.
fn generate_assets(dir: &Path) -> ExitCode {
    let written = assets::generate(ctl_args::command(), "1", dir).and_then(|mut a| {
        a.extend(assets::generate(assets::daemon_command(), "8", dir)?);
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

/// `top`: the screen, or with `--once` one screen as text.
async fn run_top(c: &Client, a: &TopArgs, json: bool) -> Result<(), Fail> {
    if json {
        return Err(Fail::usage(
            "top draws a screen: for JSON, use status, pools or pool history",
        ));
    }
    match top::command(c, a).await {
        Ok(text) => {
            out(&text.unwrap_or_default());
            Ok(())
        }
        Err(TopError::Client(e)) => Err(e.into()),
        Err(e) => Err(Fail::failed("failed", e.to_string())),
    }
}
