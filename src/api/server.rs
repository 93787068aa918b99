//! The Unix socket: start-up (lock, stale socket, bind, chmod, chgrp) and
//! the accept loop (connection limits per uid, timeouts: see [`conn`],
//! graceful stop).

use super::auth::{self, Peer};
use super::conn::{self, Limits};
use super::controller::AppState;
use super::routes;
use crate::agent::safe_fs::PathIoError;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("another virtpoold is already serving {socket} (lock {lock} is held): stop it first")]
    AlreadyRunning { socket: PathBuf, lock: PathBuf },
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error("{0}: exists and is not a socket: refusing to remove it")]
    NotASocket(PathBuf),
    /// The socket directory is not the agent's alone.
    #[error(transparent)]
    Dir(#[from] crate::agent::safe_fs::DirError),
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

/// A bound, locked API socket, ready to serve. The socket file is removed
/// when it is dropped (also when the agent fails to start after binding).
pub struct ApiSocket {
    listener: UnixListener,
    file: SocketFile,
    /// Held for the life of the process: a second agent can't take the socket.
    _lock: Flock<File>,
}

impl ApiSocket {
    pub fn path(&self) -> &Path {
        &self.file.0
    }
}

/// The bound socket's path: removed on drop (before the lock is released).
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(socket = %self.0.display(), error = %e, "cannot remove the API socket");
            }
        }
    }
}

/// Limits of the server (see [`conn`]); [`ServeOptions::default`] is what
/// `virtpoold` uses on the socket (fitted to its open-file limit with
/// [`ServeOptions::within_fd_limit`]), [`ServeOptions::metrics`] over TCP.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Open connections at most. Over a limit, the quietest connection in
    /// reach is closed for the new one, or the new one is refused.
    pub max_connections: usize,
    /// Open connections per peer: per uid on the socket (uid 0 has no
    /// share: it may use every slot), per address over TCP.
    pub per_peer_connections: usize,
    /// Slots only uid 0 can take.
    pub reserved_for_root: usize,
    /// A client must send a request's headers within this time (also bounds
    /// how long an idle keep-alive connection is kept).
    pub header_timeout: Duration,
    /// And its body within this time.
    pub body_timeout: Duration,
    /// From the first bytes of a reply the client does not take, it has
    /// this long to take the whole reply; then the connection is closed.
    pub write_timeout: Duration,
    /// A connection is closed after its request in progress once it is
    /// this old.
    pub max_lifetime: Duration,
    /// Bytes of requests read ahead per connection (at least 8 KiB).
    pub max_buf_size: usize,
    /// On shutdown, in-flight requests get this long to finish.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: 256,
            per_peer_connections: 64,
            reserved_for_root: 32,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_lifetime: Duration::from_secs(600),
            max_buf_size: 16 * 1024,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

impl ServeOptions {
    /// The TCP metrics listener: 64 connections, no per-address share, no
    /// reserve (there is no root over TCP).
    pub fn metrics() -> ServeOptions {
        ServeOptions {
            max_connections: 64,
            per_peer_connections: 64,
            reserved_for_root: 0,
            ..ServeOptions::default()
        }
    }

    /// Caps the connections at `1/share` of `fd_limit` (open files of the
    /// process), the per-peer share and the reserve scaled alike, so that
    /// the listeners together cannot run the agent out of file
    /// descriptors: `virtpoold` gives the socket a quarter and the TCP
    /// listener a sixteenth (256 and 64 from a limit of 1,024 up).
    pub fn within_fd_limit(mut self, fd_limit: u64, share: u64) -> ServeOptions {
        let cap = usize::try_from(fd_limit / share.max(1)).unwrap_or(usize::MAX);
        let old = self.max_connections.max(1);
        if cap < old {
            let max = cap.max(2);
            let scale = |n: usize| match n {
                0 => 0,
                n => (n.saturating_mul(max) / old).max(1),
            };
            self.per_peer_connections = scale(self.per_peer_connections);
            self.reserved_for_root = scale(self.reserved_for_root).min(max - 1);
            self.max_connections = max;
        }
        self
    }

    /// What `virtpoold` uses on the socket and over TCP: raises the soft
    /// open-file limit to the hard one, then gives the socket a quarter of
    /// it and the TCP listener a sixteenth at most, so that a flood on one
    /// listener cannot take the files the other, libvirt or the state need.
    pub fn for_daemon() -> (ServeOptions, ServeOptions) {
        let fd_limit = match conn::raise_fd_limit() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the open-file limit: assuming 1024");
                1024
            }
        };
        let api = ServeOptions::default().within_fd_limit(fd_limit, 4);
        let metrics = ServeOptions::metrics().within_fd_limit(fd_limit, 16);
        tracing::debug!(
            fd_limit,
            api = api.max_connections,
            metrics = metrics.max_connections,
            "connection caps"
        );
        (api, metrics)
    }

    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections,
            per_peer: self.per_peer_connections,
            reserved_for_root: self.reserved_for_root,
        }
    }

    pub(crate) fn conn(&self) -> conn::ConnOptions {
        conn::ConnOptions {
            header_timeout: self.header_timeout,
            write_timeout: self.write_timeout,
            max_lifetime: self.max_lifetime,
            max_buf_size: self.max_buf_size,
        }
    }
}

/// Takes the socket: checks (or creates, [`SOCKET_DIR_MODE`]) its
/// directory, which must be the agent's user's alone (see
/// [`crate::agent::safe_fs::check_dir`]), opens the lock file `PATH.lock` (0600,
/// never through a symbolic link) and holds its lock while the process
/// lives, removes a stale socket, binds, sets mode 0660 and group `group`.
///
/// A missing group (or no right to change it) leaves the socket's group as
/// it is, with a warning: the socket is then only reachable by its owner's
/// group, never wider.
pub async fn bind(path: &Path, group: &str) -> Result<ApiSocket, ApiError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::agent::safe_fs::ensure_dir(dir, SOCKET_DIR_MODE)?;
    }
    let mut lock_name = path.as_os_str().to_owned();
    lock_name.push(".lock");
    let lock_path = PathBuf::from(lock_name);
    let file = crate::agent::safe_fs::open_rw(&lock_path).map_err(|e| match e {
        crate::agent::safe_fs::FileError::Unsafe(problem) => ApiError::UnsafeLock {
            path: lock_path.clone(),
            problem,
        },
        crate::agent::safe_fs::FileError::Io(source) => {
            PathIoError::new(&lock_path, "open the lock file", source).into()
        }
    })?;
    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        if e == nix::errno::Errno::EWOULDBLOCK {
            ApiError::AlreadyRunning {
                socket: path.to_owned(),
                lock: lock_path.clone(),
            }
        } else {
            PathIoError::new(&lock_path, "lock", e.into()).into()
        }
    })?;
    // We hold the lock: a socket file left behind is stale.
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path)
                .map_err(|e| PathIoError::new(path, "remove the stale socket", e))?;
        }
        Ok(_) => return Err(ApiError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(PathIoError::new(path, "inspect the socket path", e).into()),
    }
    let listener = UnixListener::bind(path).map_err(|e| PathIoError::new(path, "bind", e))?;
    let file = SocketFile(path.to_owned());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| PathIoError::new(path, "set mode 0660 on", e))?;
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
        file,
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
        file,
        _lock,
    } = sock;
    let router = routes::router(state, opts.body_timeout);
    let admission = |stream: &tokio::net::UnixStream, _| {
        let peer = stream.peer_cred().ok().map(|c| Peer {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        });
        // Unknown credentials count as one unprivileged peer.
        let uid = peer.map_or(u32::MAX, |p| p.uid);
        Admission {
            peer,
            key: u64::from(uid),
            root: uid == 0,
        }
    };
    if !accept_loop(listener, "api", router, &opts, &shutdown, admission).await {
        tracing::warn!("API requests still running at shutdown: abandoned");
    }
    let path = file.0.clone();
    drop(file);
    tracing::info!(socket = %path.display(), "API stopped");
}

/// A listener [`accept_loop`] accepts connections from.
pub(crate) trait Listener {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    type Addr;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Addr)>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Addr)>> + Send {
        tokio::net::TcpListener::accept(self)
    }
}

impl Listener for UnixListener {
    type Stream = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Addr)>> + Send {
        UnixListener::accept(self)
    }
}

/// How the limiter counts a connection: its peer's credentials (handed to
/// the router), its limiter key, whether it may take a root slot.
pub(crate) struct Admission {
    pub(crate) peer: Option<Peer>,
    pub(crate) key: u64,
    pub(crate) root: bool,
}

/// The accept loop of the API socket and the metrics port: serves
/// `router` on the connections of `listener` (`what` names it in logs)
/// until `shutdown`, each admitted as `admit` says within the limits of
/// `opts` (accepts that fail are retried after a pause); then closes the
/// listener and waits for the connections (at most `drain_timeout`).
/// Whether they all ended in time.
pub(crate) async fn accept_loop<L: Listener>(
    listener: L,
    what: &'static str,
    router: axum::Router,
    opts: &ServeOptions,
    shutdown: &CancellationToken,
    admit: impl Fn(&L::Stream, L::Addr) -> Admission,
) -> bool {
    let limiter = conn::Limiter::new(opts.limits(), what);
    let tasks = conn::Tracker::default();
    let mut backoff = conn::Backoff::default();
    loop {
        let (stream, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(s) => { backoff.ok(); s }
                Err(e) => { backoff.failed(&e, what).await; continue; }
            },
        };
        let a = admit(&stream, addr);
        let Ok(ticket) = limiter.admit(a.key, a.root) else {
            continue;
        };
        tasks.spawn(conn::serve(
            stream,
            router.clone(),
            a.peer,
            opts.conn(),
            ticket,
            shutdown.clone(),
        ));
    }
    drop(listener);
    tasks.wait(opts.drain_timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_caps_fit_the_open_file_limit() {
        let api = ServeOptions::default();
        let metrics = ServeOptions::metrics();
        // From 1,024 files up: the defaults.
        for limit in [1024, 524_288] {
            assert_eq!(api.within_fd_limit(limit, 4).limits(), api.limits());
            assert_eq!(
                metrics.within_fd_limit(limit, 16).limits(),
                metrics.limits()
            );
        }
        // Below: scaled down, shares kept.
        let small = api.within_fd_limit(256, 4).limits();
        assert_eq!(
            (
                small.max_connections,
                small.per_peer,
                small.reserved_for_root
            ),
            (64, 16, 8)
        );
        let small = metrics.within_fd_limit(256, 16).limits();
        assert_eq!(
            (
                small.max_connections,
                small.per_peer,
                small.reserved_for_root
            ),
            (16, 16, 0)
        );
        let tiny = api.within_fd_limit(3, 4).limits();
        assert_eq!(
            (tiny.max_connections, tiny.per_peer, tiny.reserved_for_root),
            (2, 1, 1)
        );
    }
}
