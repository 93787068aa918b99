//! Man pages and shell completions of both binaries, for packaging:
//! `virtpoolctl --generate-assets DIR` writes them (see
//! `scripts/build-deb.sh`). `virtpoolctl`'s come from its clap
//! definition; `virtpoold`'s from [`daemon_command`], a clap definition
//! built from the daemon's own option table ([`crate::cli::daemon_args`]),
//! which parses its command line without clap.
//!
//! The flag is recognised before clap parses the command line
//! ([`requested`]), so it appears in no help, man page or completion.
//!
//! Into `DIR`: `NAME.SECTION` (plus `NAME-SUB.SECTION` for each subcommand,
//! recursively, which the main page's SUBCOMMANDS list refers to),
//! `NAME.bash`, `_NAME` (zsh) and `NAME.fish`.

use clap_complete::Shell;
use std::path::{Path, PathBuf};

/// The flag that asks a binary to write its assets.
pub const FLAG: &str = "--generate-assets";

/// `Some(DIR)` if the command line is exactly `PROGRAM --generate-assets DIR`.
pub fn requested() -> Option<PathBuf> {
    let mut args = std::env::args_os().skip(1);
    match (args.next(), args.next(), args.next()) {
        (Some(flag), Some(dir), None) if flag == FLAG => Some(PathBuf::from(dir)),
        _ => None,
    }
}

/// `virtpoold`'s command line as a clap definition, for its man page and
/// completions: the same options, help, environment and defaults as
/// [`crate::cli::daemon_args::OPTIONS`].
pub fn daemon_command() -> clap::Command {
    use crate::cli::daemon_args::{ABOUT, AFTER_HELP, OPTIONS};
    // `-h` and `--help` print the same text in virtpoold: clap's own flag
    // would say otherwise.
    let mut cmd = clap::Command::new("virtpoold")
        .version(env!("CARGO_PKG_VERSION"))
        .about(ABOUT)
        .after_long_help(AFTER_HELP)
        .disable_help_flag(true);
    for o in OPTIONS {
        let mut arg = clap::Arg::new(o.long).long(o.long).help(o.help);
        if let Some(c) = o.short {
            arg = arg.short(c);
        }
        arg = match o.value {
            Some(v) => arg.value_name(v).action(clap::ArgAction::Set),
            None => arg.action(clap::ArgAction::SetTrue),
        };
        if let Some(e) = o.env {
            arg = arg.env(e);
        }
        if let Some(d) = o.default {
            arg = arg.default_value(d);
        }
        if o.long == "config" {
            arg = arg.value_hint(clap::ValueHint::FilePath);
        }
        cmd = cmd.arg(arg);
    }
    cmd.arg(
        clap::Arg::new("help")
            .short('h')
            .long("help")
            .help("Print help")
            .action(clap::ArgAction::Help),
    )
}

/// A file that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct AssetsError {
    what: String,
    #[source]
    source: std::io::Error,
}

/// Writes the man pages (in `section`) and completions of `cmd` into
/// `dir`, creating it; returns the files written.
pub fn generate(
    cmd: clap::Command,
    section: &'static str,
    dir: &Path,
) -> Result<Vec<PathBuf>, AssetsError> {
    std::fs::create_dir_all(dir).map_err(|source| AssetsError {
        what: format!("cannot create {}", dir.display()),
        source,
    })?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    man_pages(&cmd, section, dir, &mut out)?;
    let name = cmd.get_name().to_string();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let file =
            clap_complete::generate_to(shell, &mut cmd.clone(), &name, dir).map_err(|source| {
                AssetsError {
                    what: format!("cannot write {shell} completions into {}", dir.display()),
                    source,
                }
            })?;
        out.push(file);
    }
    Ok(out)
}

fn man_pages(
    cmd: &clap::Command,
    section: &'static str,
    dir: &Path,
    out: &mut Vec<PathBuf>,
) -> Result<(), AssetsError> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, section, dir, out)?;
    }
    let man = clap_mangen::Man::new(cmd.clone())
        .section(section)
        .source(format!("virtpool {}", env!("CARGO_PKG_VERSION")));
    let file = dir.join(man.get_filename());
    let err = |source| AssetsError {
        what: format!("cannot write the man page {}", file.display()),
        source,
    };
    let text = render(&man, cmd).map_err(err)?;
    std::fs::write(&file, text).map_err(err)?;
    out.push(file);
    Ok(())
}

/// clap_mangen's page, with the long help's closing text (signals, files,
/// environment) as a NOTES section kept as laid out (`.nf`), not refilled.
/// What clap_mangen writes before every part.
const PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

fn render(man: &clap_mangen::Man, cmd: &clap::Command) -> std::io::Result<Vec<u8>> {
    let mut w = Vec::new();
    // Each part repeats the same two-line preamble; the first one is enough.
    let part = |w: &mut Vec<u8>, f: &dyn Fn(&mut Vec<u8>) -> std::io::Result<()>| {
        let mut buf = Vec::new();
        f(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        let body = if w.is_empty() {
            &text[..]
        } else {
            text.strip_prefix(PREAMBLE).unwrap_or(&text)
        };
        w.extend_from_slice(body.as_bytes());
        Ok::<(), std::io::Error>(())
    };
    part(&mut w, &|b| man.render_title(b))?;
    part(&mut w, &|b| man.render_name_section(b))?;
    part(&mut w, &|b| man.render_synopsis_section(b))?;
    part(&mut w, &|b| man.render_description_section(b))?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        part(&mut w, &|b| man.render_options_section(b))?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        part(&mut w, &|b| man.render_subcommands_section(b))?;
    }
    if let Some(text) = cmd.get_after_long_help().or(cmd.get_after_help()) {
        w.extend_from_slice(b".SH NOTES\n.nf\n");
        for line in text.to_string().lines() {
            let line = line.replace('\\', "\\e");
            // A leading dot or quote would be read as a request.
            if line.starts_with(['.', '\'']) {
                w.extend_from_slice(b"\\&");
            }
            w.extend_from_slice(line.as_bytes());
            w.push(b'\n');
        }
        w.extend_from_slice(b".fi\n");
    }
    if cmd.get_version().is_some() {
        part(&mut w, &|b| man.render_version_section(b))?;
    }
    Ok(w)
}
