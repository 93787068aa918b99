//! `virtpoold`'s command line: one clap definition ([`DaemonArgs`]) for
//! the parser, `--help`, the man page and the shell completions
//! ([`crate::cli::assets`], written by `virtpoolctl --generate-assets` at
//! packaging time).

use crate::core::config::DEFAULT_PATH;
use clap::Parser;
use std::path::PathBuf;

/// The first line of `--help` and the man page's description.
pub const ABOUT: &str = env!("CARGO_PKG_DESCRIPTION");

/// Signals, files and environment: the end of `--help`, and the man
/// page's NOTES.
pub const AFTER_HELP: &str = "\
Signals:
  SIGHUP           re-read and validate the config; swap it in only if valid
                   (else keep the running one and report the error)
  SIGTERM, SIGINT  finish the current cycle, save state, remove the socket, exit 0

Files:
  /etc/virtpool/virtpool.toml   config (--config, VIRTPOOL_CONFIG)
  /run/virtpool/virtpool.sock   control socket (api.socket)
  /var/lib/virtpool/state.json  runtime changes (agent.state_dir)
  /var/lib/virtpool/vcpu-holds.json  timed-out vCPU changes held until the
                                domain restarts
  /var/lib/virtpool/history.json  admission order and what domains had
                                before the agent changed them
  /var/lib/virtpool/audit.jsonl audit log, rotated at 10 MiB (.1 .. .3)

Environment:
  RUST_LOG         log filter (wins over agent.log_level)
  NOTIFY_SOCKET, WATCHDOG_USEC  set by systemd (Type=notify, WatchdogSec=)

Exit status:
  0   ok: stopped by SIGTERM or SIGINT, or the config checked is valid
  1   any other failure (a restart may help)
  2   invalid command line
  69  libvirt cannot be reached, in a single-cycle run
  75  another virtpoold holds the socket's lock (try again once it stops)
  78  invalid config, or a state file or directory the agent refuses
      (corrupt, a special file or a link, writable by others, another
      user's): fix it first, a restart does not help

See /usr/share/doc/virtpool/operations.md.";

/// Exit statuses (the `sysexits.h` values where one fits): see
/// [`AFTER_HELP`] and `RestartPreventExitStatus=` in the unit.
pub mod exit {
    /// Any failure not listed below: a restart may help.
    pub const FAILURE: u8 = 1;
    /// Invalid command line.
    pub const USAGE: u8 = 2;
    /// `--once`: libvirt cannot be reached (`EX_UNAVAILABLE`).
    pub const UNAVAILABLE: u8 = 69;
    /// Another agent holds the socket's lock (`EX_TEMPFAIL`).
    pub const TEMPFAIL: u8 = 75;
    /// Invalid config, state, or state/socket directory (`EX_CONFIG`): a
    /// restart cannot fix it.
    pub const CONFIG: u8 = 78;
}

/// What the command line asks for.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(
    name = "virtpoold",
    version,
    about = ABOUT,
    after_help = AFTER_HELP,
    max_term_width = 100
)]
pub struct DaemonArgs {
    /// Config file
    #[arg(
        short,
        long,
        value_name = "CONFIG",
        env = "VIRTPOOL_CONFIG",
        default_value = DEFAULT_PATH,
        value_hint = clap::ValueHint::FilePath
    )]
    pub config: PathBuf,
    /// Validate the config (against this host's capacity) and exit: 0
    /// valid, 78 invalid
    #[arg(long)]
    pub check_config: bool,
    /// Run exactly one cycle, print the pools and exit
    #[arg(long)]
    pub once: bool,
    /// Plan and report, change nothing (overrides `agent.mode`)
    #[arg(long)]
    pub observe: bool,
    /// Override `agent.libvirt_uri`
    #[arg(long, value_name = "URI")]
    pub uri: Option<String>,
    /// Move a corrupt or unwanted runtime state file aside and start fresh
    /// (an unreadable vcpu-holds.json or history.json too; readable ones
    /// are kept)
    #[arg(long)]
    pub reset_state: bool,
    /// Give back to every domain what the agent changed on it (vCPUs,
    /// balloon, I/O limits, weights as they were before its first change)
    /// and exit; for uninstalling. Stop the service first
    #[arg(long, conflicts_with_all = ["once", "observe", "check_config"])]
    pub release_all: bool,
}

/// The command line as clap sees it (for the man page and completions).
pub fn command() -> clap::Command {
    <DaemonArgs as clap::CommandFactory>::command()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<DaemonArgs, clap::Error> {
        DaemonArgs::try_parse_from(std::iter::once("virtpoold").chain(args.iter().copied()))
    }

    #[test]
    fn the_forms_an_operator_types() {
        let a = parse(&["-c", "/x.toml", "--observe", "--uri=test:///default"]).unwrap();
        assert_eq!(a.config, PathBuf::from("/x.toml"));
        assert!(a.observe && !a.once && !a.release_all);
        assert_eq!(a.uri.as_deref(), Some("test:///default"));
        assert_eq!(parse(&["--config=/y"]).unwrap().config, PathBuf::from("/y"));
        assert!(parse(&["--release-all"]).unwrap().release_all);
        for bad in [
            &["--nope"][..],
            &["extra"],
            &["--config"],
            &["--once", "--once"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), i32::from(exit::USAGE), "{bad:?}: {e}");
        }
        assert!(parse(&["--release-all", "--once"]).is_err());
        command().debug_assert();
    }
}
