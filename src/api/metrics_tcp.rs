//! The optional TCP listener for Prometheus (`agent.metrics_listen`):
//! `GET /metrics` only, with the same connection limits and timeouts as
//! the control socket.

use crate::agent::metrics::{render, CONTENT_TYPE};
use crate::agent::reconciler::Handle;

/// `GET /metrics` for a [`Handle`] (mount on any axum router).
pub fn router(handle: Handle) -> axum::Router {
    use axum::routing::get;
    axum::Router::new().route(
        "/metrics",
        get(move || {
            let h = handle.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
                    render(&h.report(), &h.counters()),
                )
            }
        }),
    )
}

/// Serves `GET /metrics` on a TCP listener until `shutdown`, with the
/// connection limits and timeouts of `opts` (see [`super::conn`]:
/// [`ServeOptions::metrics`](super::ServeOptions::metrics) in
/// `virtpoold`).
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    handle: Handle,
    shutdown: tokio_util::sync::CancellationToken,
    opts: super::ServeOptions,
) {
    let admission = |_: &_, addr: std::net::SocketAddr| super::server::Admission {
        peer: None,
        key: address_key(addr.ip()),
        root: false,
    };
    super::server::accept_loop(
        listener,
        "metrics",
        router(handle),
        &opts,
        &shutdown,
        admission,
    )
    .await;
}

/// A peer address as a limiter key (IPv4-mapped IPv6 as IPv4).
fn address_key(ip: std::net::IpAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => u64::from(u32::from(v4)),
        v6 => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            v6.hash(&mut h);
            h.finish() | (1 << 63)
        }
    }
}
