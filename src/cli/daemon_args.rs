//! `virtpoold`'s command line.
//!
//! Parsed here, by hand, rather than by a parser library: the daemon stays
//! resident for the life of the host, and a general-purpose parser (with
//! its help renderer) is about 0.6 MB of machine code that would stay
//! mapped for one look at six options. One table, [`OPTIONS`], drives the
//! parser, `--help`, and the man page and shell completions
//! ([`crate::cli::assets::daemon_command`], written by `virtpoolctl
//! --generate-assets` at packaging time).
//!
//! Accepted: `--config PATH`, `--config=PATH`, `-c PATH`, `-cPATH`,
//! `-c=PATH`; `--uri URI` (same forms); the flags; `-h`/`--help`,
//! `-V`/`--version`. Each option at most once; no positional arguments.
//! `VIRTPOOL_CONFIG` (if set and not empty) stands in for `--config`.

use crate::core::config::DEFAULT_PATH;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// One option of `virtpoold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opt {
    /// `--long` (without the dashes).
    pub long: &'static str,
    pub short: Option<char>,
    /// The value's placeholder (`CONFIG`), or `None` for a flag.
    pub value: Option<&'static str>,
    /// Environment variable used when the option is not given.
    pub env: Option<&'static str>,
    /// Value used when neither the option nor `env` is given.
    pub default: Option<&'static str>,
    pub help: &'static str,
}

const fn flag(long: &'static str, help: &'static str) -> Opt {
    Opt {
        long,
        short: None,
        value: None,
        env: None,
        default: None,
        help,
    }
}

/// Every option, in `--help` order (`--help` and `--version` come last).
pub const OPTIONS: [Opt; 6] = [
    Opt {
        long: "config",
        short: Some('c'),
        value: Some("CONFIG"),
        env: Some("VIRTPOOL_CONFIG"),
        default: Some(DEFAULT_PATH),
        help: "Config file",
    },
    flag(
        "check-config",
        "Validate the config (against this host's capacity) and exit: 0 valid, 78 invalid",
    ),
    flag("once", "Run exactly one cycle, print the pools and exit"),
    flag(
        "observe",
        "Plan and report, change nothing (overrides `agent.mode`)",
    ),
    Opt {
        long: "uri",
        short: None,
        value: Some("URI"),
        env: None,
        default: None,
        help: "Override `agent.libvirt_uri`",
    },
    flag(
        "reset-state",
        "Move a corrupt or unwanted runtime state file aside and start fresh (an unreadable \
         vcpu-holds.json too; a readable one is kept)",
    ),
];

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonArgs {
    pub config: PathBuf,
    pub check_config: bool,
    pub once: bool,
    pub observe: bool,
    pub uri: Option<String>,
    pub reset_state: bool,
}

/// The outcome of parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Run(DaemonArgs),
    /// `-h` / `--help`: print [`help`], exit 0.
    Help,
    /// `-V` / `--version`: print [`version`], exit 0.
    Version,
}

/// A command line `virtpoold` refuses (exit status [`exit::USAGE`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error("unexpected argument '{0}'")]
    Unexpected(String),
    #[error("a value is required for '--{0} <{1}>' but none was supplied")]
    MissingValue(&'static str, &'static str),
    #[error("'--{0}' takes no value (got '{1}')")]
    UnexpectedValue(&'static str, String),
    #[error("the argument '--{0}' cannot be used multiple times")]
    Repeated(&'static str),
    #[error("the value of '--{0}' is not valid UTF-8")]
    NotUtf8(&'static str),
}

impl ArgError {
    /// The message printed on standard error for this error.
    pub fn report(&self) -> String {
        format!("virtpoold: error: {self}\n\nUsage: virtpoold [OPTIONS]\n\nFor more information, try '--help'.")
    }
}

/// Parses the arguments after the program name; `env_config` is the value
/// of `VIRTPOOL_CONFIG`. `-h`/`--help` and `-V`/`--version` win as soon as
/// they are seen.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    env_config: Option<OsString>,
) -> Result<Parsed, ArgError> {
    let mut args = args.into_iter();
    let mut seen = [false; OPTIONS.len()];
    let mut values: [Option<OsString>; OPTIONS.len()] = Default::default();
    while let Some(arg) = args.next() {
        let bytes = arg.as_bytes();
        let (index, inline) = match bytes {
            b"-h" | b"--help" => return Ok(Parsed::Help),
            b"-V" | b"--version" => return Ok(Parsed::Version),
            // The end of options: there are no positional arguments.
            b"--" => match args.next() {
                Some(extra) => return Err(unexpected(&extra)),
                None => break,
            },
            [b'-', b'-', long @ ..] => {
                let (name, inline) = match long.iter().position(|&b| b == b'=') {
                    Some(i) => (&long[..i], Some(&long[i + 1..])),
                    None => (long, None),
                };
                let index = OPTIONS
                    .iter()
                    .position(|o| o.long.as_bytes() == name)
                    .ok_or_else(|| unexpected(&arg))?;
                (index, inline)
            }
            [b'-', short, rest @ ..] => {
                let index = OPTIONS
                    .iter()
                    .position(|o| o.short.is_some_and(|c| c as u32 == u32::from(*short)))
                    .ok_or_else(|| unexpected(&arg))?;
                let rest = rest.strip_prefix(b"=").unwrap_or(rest);
                (index, (!rest.is_empty()).then_some(rest))
            }
            _ => return Err(unexpected(&arg)),
        };
        let opt = &OPTIONS[index];
        if std::mem::replace(&mut seen[index], true) {
            return Err(ArgError::Repeated(opt.long));
        }
        let Some(placeholder) = opt.value else {
            if let Some(v) = inline {
                return Err(ArgError::UnexpectedValue(
                    opt.long,
                    String::from_utf8_lossy(v).into_owned(),
                ));
            }
            continue;
        };
        let value = match inline {
            Some(v) => OsStr::from_bytes(v).to_owned(),
            // A following option is not taken as the value.
            None => match args.next() {
                Some(v) if !(v.as_bytes().starts_with(b"-") && v.len() > 1) => v,
                _ => return Err(ArgError::MissingValue(opt.long, placeholder)),
            },
        };
        values[index] = Some(value);
    }
    // In OPTIONS order.
    let [_, check_config, once, observe, _, reset_state] = seen;
    let [config, _, _, _, uri, _] = values;
    let config = config
        .or(env_config.filter(|v| !v.is_empty()))
        .map_or_else(|| PathBuf::from(DEFAULT_PATH), PathBuf::from);
    let uri = uri
        .map(|v| v.into_string().map_err(|_| ArgError::NotUtf8("uri")))
        .transpose()?;
    Ok(Parsed::Run(DaemonArgs {
        config,
        check_config,
        once,
        observe,
        uri,
        reset_state,
    }))
}

fn unexpected(arg: &OsStr) -> ArgError {
    ArgError::Unexpected(arg.to_string_lossy().into_owned())
}

/// `virtpoold --version`.
pub fn version() -> String {
    format!("virtpoold {}", env!("CARGO_PKG_VERSION"))
}

/// `virtpoold --help`.
pub fn help() -> String {
    let mut rows: Vec<(String, String)> = OPTIONS
        .iter()
        .map(|o| {
            let mut left = match o.short {
                Some(c) => format!("-{c}, --{}", o.long),
                None => format!("    --{}", o.long),
            };
            if let Some(v) = o.value {
                left.push_str(&format!(" <{v}>"));
            }
            let mut right = o.help.to_string();
            if let Some(e) = o.env {
                right.push_str(&format!(" [env: {e}]"));
            }
            if let Some(d) = o.default {
                right.push_str(&format!(" [default: {d}]"));
            }
            (left, right)
        })
        .collect();
    rows.push(("-h, --help".into(), "Print help".into()));
    rows.push(("-V, --version".into(), "Print version".into()));
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let mut out = format!("{ABOUT}\n\nUsage: virtpoold [OPTIONS]\n\nOptions:\n");
    for (left, right) in rows {
        out.push_str(&format!("  {left:width$}  {right}\n"));
    }
    out.push('\n');
    out.push_str(AFTER_HELP);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn run(args: &[&str]) -> Result<Parsed, ArgError> {
        parse(args.iter().map(OsString::from), None)
    }

    fn args(args: &[&str]) -> DaemonArgs {
        match run(args) {
            Ok(Parsed::Run(a)) => a,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn defaults_and_every_option() {
        let a = args(&[]);
        assert_eq!(a.config, PathBuf::from(DEFAULT_PATH));
        assert!(!a.check_config && !a.once && !a.observe && !a.reset_state);
        assert_eq!(a.uri, None);

        let a = args(&[
            "--config",
            "/x.toml",
            "--check-config",
            "--once",
            "--observe",
            "--uri",
            "test:///default",
            "--reset-state",
        ]);
        assert_eq!(
            a,
            DaemonArgs {
                config: "/x.toml".into(),
                check_config: true,
                once: true,
                observe: true,
                uri: Some("test:///default".into()),
                reset_state: true,
            }
        );
    }

    #[test]
    fn value_forms() {
        for form in [
            &["--config", "/a b.toml"][..],
            &["--config=/a b.toml"],
            &["-c", "/a b.toml"],
            &["-c/a b.toml"],
            &["-c=/a b.toml"],
        ] {
            assert_eq!(args(form).config, PathBuf::from("/a b.toml"), "{form:?}");
        }
        assert_eq!(
            args(&["--uri=qemu:///system"]).uri.as_deref(),
            Some("qemu:///system")
        );
        // A value may contain '=' and be '-' (not an option).
        assert_eq!(args(&["--config=a=b"]).config, PathBuf::from("a=b"));
        assert_eq!(args(&["-c", "-"]).config, PathBuf::from("-"));
        // Paths need not be UTF-8.
        let raw = OsStr::from_bytes(b"/etc/\xff.toml").to_owned();
        match parse([OsString::from("-c"), raw.clone()], None).unwrap() {
            Parsed::Run(a) => assert_eq!(a.config, PathBuf::from(raw)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn environment_stands_in_for_config() {
        let env = |v: &str, a: &[&str]| match parse(
            a.iter().map(OsString::from),
            Some(OsString::from(v)),
        ) {
            Ok(Parsed::Run(a)) => a.config,
            other => panic!("{other:?}"),
        };
        assert_eq!(env("/env.toml", &[]), PathBuf::from("/env.toml"));
        assert_eq!(
            env("/env.toml", &["-c", "/arg.toml"]),
            PathBuf::from("/arg.toml")
        );
        assert_eq!(env("", &[]), PathBuf::from(DEFAULT_PATH), "empty = unset");
    }

    #[test]
    fn help_and_version_win() {
        for a in [
            &["-h"][..],
            &["--help"],
            &["--once", "--help"],
            &["-c", "x", "-h"],
        ] {
            assert_eq!(run(a), Ok(Parsed::Help), "{a:?}");
        }
        // An error met before the help is reported.
        assert_eq!(
            run(&["--bogus", "-h"]),
            Err(ArgError::Unexpected("--bogus".into()))
        );
        assert_eq!(run(&["-V"]), Ok(Parsed::Version));
        assert_eq!(run(&["--version"]), Ok(Parsed::Version));
        assert_eq!(
            version(),
            format!("virtpoold {}", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn refusals_name_the_problem() {
        let cases: [(&[&str], ArgError); 10] = [
            (&["--bogus"], ArgError::Unexpected("--bogus".into())),
            (&["-x"], ArgError::Unexpected("-x".into())),
            (&["config.toml"], ArgError::Unexpected("config.toml".into())),
            (&["--", "x"], ArgError::Unexpected("x".into())),
            (&["--config"], ArgError::MissingValue("config", "CONFIG")),
            (
                &["-c", "--once"],
                ArgError::MissingValue("config", "CONFIG"),
            ),
            (&["--uri"], ArgError::MissingValue("uri", "URI")),
            (
                &["--once=yes"],
                ArgError::UnexpectedValue("once", "yes".into()),
            ),
            (&["--once", "--once"], ArgError::Repeated("once")),
            (&["-c", "a", "--config=b"], ArgError::Repeated("config")),
        ];
        for (a, want) in cases {
            assert_eq!(run(a), Err(want), "{a:?}");
        }
        let bad = OsStr::from_bytes(b"\xff").to_owned();
        assert_eq!(
            parse([OsString::from("--uri"), bad], None),
            Err(ArgError::NotUtf8("uri"))
        );
        assert!(args(&["--"]).config.ends_with("virtpool.toml"));
        let report = ArgError::Unexpected("--bogus".into()).report();
        assert!(report.starts_with("virtpoold: error: unexpected argument '--bogus'"));
        assert!(report.contains("Usage: virtpoold [OPTIONS]"));
    }

    /// The hand parser and the clap definition the man page is made from
    /// accept and refuse the same command lines, with the same values.
    #[test]
    fn agrees_with_the_clap_definition() {
        let lines: [&[&str]; 14] = [
            &[],
            &["--config", "/x"],
            &["--config=/x"],
            &["-c", "/x", "--once"],
            &["-c/x"],
            &["--check-config", "--observe", "--reset-state"],
            &["--uri", "test:///default", "--once"],
            &["--uri=a=b"],
            &["--bogus"],
            &["-x"],
            &["positional"],
            &["--config"],
            &["--once", "--once"],
            &["--once=1"],
        ];
        // Both read VIRTPOOL_CONFIG; set but empty, clap would take "" as
        // the path where virtpoold uses the default.
        let env = std::env::var_os("VIRTPOOL_CONFIG");
        if env.as_ref().is_some_and(|v| v.is_empty()) {
            return;
        }
        for line in lines {
            let clap = crate::cli::assets::daemon_command()
                .try_get_matches_from(std::iter::once("virtpoold").chain(line.iter().copied()));
            let ours = parse(line.iter().map(OsString::from), env.clone());
            match (clap, ours) {
                (Ok(m), Ok(Parsed::Run(a))) => {
                    let flag = |n: &str| m.get_flag(n);
                    let config = m.get_one::<String>("config").map(PathBuf::from);
                    assert_eq!(config, Some(a.config.clone()), "{line:?}");
                    assert_eq!(m.get_one::<String>("uri"), a.uri.as_ref(), "{line:?}");
                    assert_eq!(
                        (
                            flag("check-config"),
                            flag("once"),
                            flag("observe"),
                            flag("reset-state")
                        ),
                        (a.check_config, a.once, a.observe, a.reset_state),
                        "{line:?}"
                    );
                }
                (Err(_), Err(_)) => {}
                (clap, ours) => panic!("{line:?}: clap {clap:?}, ours {ours:?}"),
            }
        }
    }

    #[test]
    fn help_lists_every_option_with_its_help() {
        let h = help();
        assert!(h.starts_with(ABOUT));
        for o in OPTIONS {
            let long = format!("--{}", o.long);
            let line = h
                .lines()
                .find(|l| {
                    l.split_whitespace()
                        .any(|w| w.trim_end_matches(',') == long)
                })
                .unwrap_or_else(|| panic!("{long} not in\n{h}"));
            assert!(line.contains(o.help), "{line}");
        }
        assert!(h.contains("-c, --config <CONFIG>"));
        assert!(h.contains("[env: VIRTPOOL_CONFIG]"));
        assert!(h.contains("-h, --help") && h.contains("-V, --version"));
        assert!(h.trim_end().ends_with("operations.md."));
        for code in [
            exit::FAILURE,
            exit::USAGE,
            exit::UNAVAILABLE,
            exit::TEMPFAIL,
            exit::CONFIG,
        ] {
            assert!(
                h.lines().any(|l| l.starts_with(&format!("  {code} "))),
                "exit status {code} not in --help"
            );
        }
    }
}
