//! `virtpoolctl`'s output and failures: stdout that ends quietly on a
//! closed pipe, and failures as text or JSON with their exit codes.

use crate::api::types::{ErrorBody, ErrorDetail};
use crate::cli::client::ClientError;
use std::io::Write as _;
use std::process::ExitCode;

/// A failure: the machine code (as the API's errors have), the message
/// and the exit code.
#[derive(Debug)]
pub struct Fail {
    pub code: String,
    pub message: String,
    pub exit: u8,
}

impl Fail {
    /// An invalid command line (exit 2).
    pub fn usage(message: impl Into<String>) -> Fail {
        Fail {
            code: "usage".into(),
            message: message.into(),
            exit: 2,
        }
    }

    /// A refusal or failure (exit 1).
    pub fn failed(code: &str, message: impl Into<String>) -> Fail {
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

/// A clap error as a failure: its first line, without clap's `error: `.
pub fn usage_fail(e: &clap::Error) -> Fail {
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("invalid command line");
    Fail::usage(first.strip_prefix("error: ").unwrap_or(first).trim())
}

/// Writes `text` to stdout. A closed pipe (the reader is gone, as after
/// `| head -1`) ends the program quietly with exit 0: there is no one left
/// to tell.
pub fn out(text: &str) {
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
pub fn reader_gone() -> bool {
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
pub fn err(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Prints a failure (JSON on stdout under `--json`, else text on stderr)
/// and gives its exit code.
pub fn report(json: bool, f: Fail) -> ExitCode {
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

/// `v` as pretty JSON, with a final newline.
pub fn pretty<T: serde::Serialize>(v: &T) -> Result<String, Fail> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(|e| Fail::failed("failed", e.to_string()))
}

/// `v` as a JSON request body.
pub fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, Fail> {
    serde_json::to_vec(v).map_err(|e| Fail::failed("failed", e.to_string()))
}
