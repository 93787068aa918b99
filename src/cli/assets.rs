//! Man pages and shell completions of both binaries, for packaging:
//! `virtpoolctl --generate-assets DIR` writes them (see
//! `scripts/build-deb.sh`). `virtpoolctl`'s come from its clap
//! definition ([`crate::cli::ctl_args`]); `virtpoold`'s from
//! [`daemon_command`], its own clap definition
//! ([`crate::cli::daemon_args`]).
//!
//! Into `DIR`: `NAME.SECTION` (plus `NAME-SUB.SECTION` for each subcommand,
//! recursively, which the main page's SUBCOMMANDS list refers to), each
//! with the EXAMPLES of [`crate::cli::man_examples`]; `NAME.bash`, `_NAME`
//! (zsh) and `NAME.fish`. A command with the hidden subcommand
//! [`COMPLETE`] (`virtpoolctl`) gets completions that ask it for the
//! pool and domain names of the running agent (see [`dynamic_names`]).

use clap_complete::Shell;
use std::path::{Path, PathBuf};

/// The hidden subcommand that prints names for the completion scripts:
/// `__complete pools`, `__complete domains`, or `__complete line --
/// WORDS` (the names fitting the last of WORDS when it is a pool or domain
/// argument; exit 1 when it is not).
pub const COMPLETE: &str = "__complete";

/// `virtpoold`'s command line (see [`crate::cli::daemon_args`]).
pub fn daemon_command() -> clap::Command {
    crate::cli::daemon_args::command()
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
    let name = cmd.get_name().to_string();
    man_pages(&cmd, &name, section, dir, &mut out)?;
    let dynamic = cmd.find_subcommand(COMPLETE).is_some();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let werr = |source| AssetsError {
            what: format!("cannot write {shell} completions into {}", dir.display()),
            source,
        };
        let file = clap_complete::generate_to(shell, &mut cmd.clone(), &name, dir).map_err(werr)?;
        if dynamic {
            let text = std::fs::read_to_string(&file).map_err(werr)?;
            std::fs::write(&file, dynamic_names(shell, &name, &text)).map_err(werr)?;
        }
        out.push(file);
    }
    Ok(out)
}

/// `script` (clap's completions of `name`) made to complete the values of
/// arguments named `pool` and `domain` (positional, or `--pool` and
/// `--domain`) with the names the running agent knows, which `name
/// __complete` prints. Elsewhere, and when the agent cannot be reached,
/// the completion is clap's.
///
/// bash and fish hand the whole command line to `name __complete line`,
/// which finds out whether the word completed is such a value (bash runs
/// the command as typed, so a path to the binary works too); zsh's clap
/// script names each argument's completer, so `pool` and `domain`
/// arguments get one that runs `name __complete pools|domains`.
pub fn dynamic_names(shell: Shell, name: &str, script: &str) -> String {
    let f = name.replace('-', "_");
    match shell {
        Shell::Bash => format!(
            r#"{script}
# Pool and domain names from the running agent; clap's completion elsewhere.
_{f}_names() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" names
    if names=$("${{COMP_WORDS[0]}}" {COMPLETE} line -- "${{COMP_WORDS[@]:1:COMP_CWORD}}" 2>/dev/null); then
        local IFS=$'
'
        COMPREPLY=($(compgen -W "${{names}}" -- "${{cur}}"))
        return 0
    fi
    _{f} "$@"
}}
if [[ "${{BASH_VERSINFO[0]}}" -eq 4 && "${{BASH_VERSINFO[1]}}" -ge 4 || "${{BASH_VERSINFO[0]}}" -gt 4 ]]; then
    complete -F _{f}_names -o nosort -o bashdefault -o default {name}
else
    complete -F _{f}_names -o bashdefault -o default {name}
fi
"#
        ),
        Shell::Zsh => {
            let mut s = script.to_string();
            for (arg, kind) in [
                ("pool", "pools"),
                ("POOL", "pools"),
                ("domain", "domains"),
                ("DOMAIN", "domains"),
            ] {
                s = s.replace(
                    &format!(":{arg}:_default'"),
                    &format!(":{arg}:_{f}_names {kind}'"),
                );
            }
            let helper = format!(
                r#"(( $+functions[_{f}_names] )) ||
_{f}_names() {{
    local -a names
    names=(${{(f)"$(_call_program $1 {name} {COMPLETE} $1 2>/dev/null)"}})
    compadd -a names
}}

"#
            );
            match s.rfind("if [ \"$funcstack[1]\"") {
                Some(i) => format!("{}{helper}{}", &s[..i], &s[i..]),
                None => s + &helper,
            }
        }
        Shell::Fish => format!(
            r#"{script}
# Pool and domain names from the running agent.
function __{f}_names
    set -l words (commandline -opc) (commandline -ct)
    command $words[1] {COMPLETE} line -- $words[2..-1] 2>/dev/null
end
complete -c {name} -f -n '__{f}_names >/dev/null' -a '(__{f}_names)'
"#
        ),
        _ => script.to_string(),
    }
}

fn man_pages(
    cmd: &clap::Command,
    path: &str,
    section: &'static str,
    dir: &Path,
    out: &mut Vec<PathBuf>,
) -> Result<(), AssetsError> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(
            sub,
            &format!("{path} {}", sub.get_name()),
            section,
            dir,
            out,
        )?;
    }
    let man = clap_mangen::Man::new(cmd.clone())
        .section(section)
        .source(format!("virtpool {}", env!("CARGO_PKG_VERSION")));
    let file = dir.join(man.get_filename());
    let err = |source| AssetsError {
        what: format!("cannot write the man page {}", file.display()),
        source,
    };
    let text = render(&man, cmd, crate::cli::man_examples::examples(path)).map_err(err)?;
    std::fs::write(&file, text).map_err(err)?;
    out.push(file);
    Ok(())
}

/// clap_mangen's page, with the long help's closing text (signals, files,
/// environment) as a NOTES section kept as laid out (`.nf`), not refilled.
/// What clap_mangen writes before every part.
const PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

fn render(
    man: &clap_mangen::Man,
    cmd: &clap::Command,
    examples: &[crate::cli::man_examples::Example],
) -> std::io::Result<Vec<u8>> {
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
            w.extend_from_slice(roff_line(line).as_bytes());
            w.push(b'\n');
        }
        w.extend_from_slice(b".fi\n");
    }
    if !examples.is_empty() {
        w.extend_from_slice(b".SH EXAMPLES\n");
        for (what, line) in examples {
            w.extend_from_slice(b".PP\n");
            w.extend_from_slice(roff_line(what).as_bytes());
            w.extend_from_slice(b"\n.PP\n.RS 4\n.nf\n");
            w.extend_from_slice(roff_line(line).replace('-', "\\-").as_bytes());
            w.extend_from_slice(b"\n.fi\n.RE\n");
        }
    }
    if cmd.get_version().is_some() {
        part(&mut w, &|b| man.render_version_section(b))?;
    }
    Ok(w)
}

/// A line of text for roff: backslashes escaped, and a leading dot or quote
/// (which would be read as a request) made plain.
fn roff_line(text: &str) -> String {
    let line = text.replace('\\', "\\e");
    if line.starts_with(['.', '\'']) {
        format!("\\&{line}")
    } else {
        line
    }
}
