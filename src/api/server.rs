//! The Unix socket: start-up (lock, stale socket, bind, chmod, chgrp) and
//! the accept loop (connection cap, header read timeout, graceful stop).

use super::auth::{self, Peer};
use super::controller::AppState;
use super::routes;
use hyper_util::rt::{TokioIo, TokioTimer};
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("another virtpoold is already serving {socket} (lock {lock} is held): stop it first")]
    AlreadyRunning { socket: PathBuf, lock: PathBuf },
    #[error("{path}: cannot {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: exists and is not a socket: refusing to remove it")]
    NotASocket(PathBuf),
    /// The socket directory is not the agent's alone.
    #[error(transparent)]
    Dir(#[from] crate::safe_fs::DirError),
    #[error("{path}: refusing to use it as the lock file: {problem}")]
    UnsafeLock { path: PathBuf, problem: String },
}

/// Mode of the socket directory when the agent creates it: 0755, not
/// 0700, because a client must be able to search the directory to reach
/// the socket at all; who may connect is the socket's own mode (0660,
/// group `api.group`) and who may change anything is checked per request
/// (SO_PEERCRED). Nobody but the agent's user may write to it (checked
/// either way), so nobody else can plant a link or replace the socket.
pub const SOCKET_DIR_MODE: u32 = 0o755;

/// A bound, locked API socket, ready to serve.
pub struct ApiSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Held for the life of the process: a second agent can't take the socket.
    _lock: Flock<File>,
}

impl ApiSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Limits of the server; [`ServeOptions::default`] is what `virtpoold` uses.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Concurrent connections; more wait in the listen backlog.
    pub max_connections: usize,
    /// A client must send a request's headers within this time (also bounds
    /// how long an idle keep-alive connection is kept).
    pub header_timeout: Duration,
    /// And its body within this time.
    pub body_timeout: Duration,
    /// On shutdown, in-flight requests get this long to finish.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

fn io<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> ApiError + 'a {
    move |source| ApiError::Io {
        path: path.to_owned(),
        what,
        source,
    }
}

/// Takes the socket: checks (or creates, [`SOCKET_DIR_MODE`]) its
/// directory, which must be the agent's user's alone (see
/// [`crate::safe_fs::check_dir`]), opens the lock file `PATH.lock` (0600,
/// never through a symbolic link) and holds its lock while the process
/// lives, removes a stale socket, binds, sets mode 0660 and group `group`.
///
/// A missing group (or no right to change it) leaves the socket's group as
/// it is, with a warning: the socket is then only reachable by its owner's
/// group, never wider.
pub async fn bind(path: &Path, group: &str) -> Result<ApiSocket, ApiError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::safe_fs::ensure_dir(dir, SOCKET_DIR_MODE)?;
    }
    let mut lock_name = path.as_os_str().to_owned();
    lock_name.push(".lock");
    let lock_path = PathBuf::from(lock_name);
    let file = crate::safe_fs::open_rw(&lock_path).map_err(|e| match e {
        crate::safe_fs::FileError::Unsafe(problem) => ApiError::UnsafeLock {
            path: lock_path.clone(),
            problem,
        },
        crate::safe_fs::FileError::Io(source) => ApiError::Io {
            path: lock_path.clone(),
            what: "open the lock file",
            source,
        },
    })?;
    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        if e == nix::errno::Errno::EWOULDBLOCK {
            ApiError::AlreadyRunning {
                socket: path.to_owned(),
                lock: lock_path.clone(),
            }
        } else {
            ApiError::Io {
                path: lock_path.clone(),
                what: "lock",
                source: e.into(),
            }
        }
    })?;
    // We hold the lock: a socket file left behind is stale.
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(io(path, "remove the stale socket"))?;
        }
        Ok(_) => return Err(ApiError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(path, "inspect the socket path")(e)),
    }
    let listener = UnixListener::bind(path).map_err(io(path, "bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(io(path, "set mode 0660 on"))?;
    match auth::group_gid(group) {
        Some(gid) => {
            if let Err(e) = nix::unistd::chown(path, None, Some(gid)) {
                tracing::warn!(socket = %path.display(), %group, error = %e, "cannot give the socket to the API group: only the owner's group can use it");
            }
        }
        None => {
            tracing::warn!(socket = %path.display(), %group, "API group does not exist: only the owner's group can use the socket");
        }
    }
    tracing::info!(socket = %path.display(), %group, "API socket bound");
    Ok(ApiSocket {
        listener,
        path: path.to_owned(),
        _lock: lock,
    })
}

/// Serves the API until `shutdown` with the default limits.
pub async fn serve(sock: ApiSocket, state: AppState, shutdown: CancellationToken) {
    serve_with(sock, state, shutdown, ServeOptions::default()).await
}

/// Serves the API until `shutdown`: stops accepting, lets in-flight
/// requests finish (up to `drain_timeout`), removes the socket file.
pub async fn serve_with(
    sock: ApiSocket,
    state: AppState,
    shutdown: CancellationToken,
    opts: ServeOptions,
) {
    let ApiSocket {
        listener,
        path,
        _lock,
    } = sock;
    let router = routes::router(state, opts.body_timeout);
    let max = opts.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max));
    let mut failures: u32 = 0;
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => { failures = 0; s }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    failures = failures.saturating_add(1);
                    let pause = Duration::from_millis(10u64 << failures.min(7));
                    tracing::warn!(error = %e, retry_in = ?pause, "API accept failed");
                    tokio::time::sleep(pause).await;
                    continue;
                }
            },
        };
        let peer = stream.peer_cred().ok().map(|c| Peer {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        });
        let router = router.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    if let Some(p) = peer {
                        req.extensions_mut().insert(p);
                    }
                    router.clone().oneshot(req)
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(opts.header_timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "API connection ended with an error");
                    }
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    // Every slot back = every connection finished.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(opts.drain_timeout, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("API requests still running at shutdown: abandoned");
    }
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::debug!(socket = %path.display(), error = %e, "cannot remove the API socket");
    }
    tracing::info!(socket = %path.display(), "API stopped");
}
