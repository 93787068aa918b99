//! The local control API: HTTP/1.1 + JSON on a Unix socket (SPEC §5).
//!
//! How a request flows:
//! 1. [`server`] accepts a connection, reads the peer's uid/gid with
//!    SO_PEERCRED and serves HTTP/1.1 on it within the limits of [`conn`]
//!    (256 connections, 64 per uid, 32 kept for root; header, write and
//!    idle timeouts; one request at a time).
//! 2. [`routes`] checks the caller of a change or of the audit log first
//!    ([`auth`]), buffers the body (≤ 64 KiB, with a timeout), routes it,
//!    and parses path, query and body into the typed requests of [`types`]
//!    (unknown fields rejected).
//! 3. Reads are answered by [`controller::AppState`] from the monitor's last
//!    published snapshot ([`views`]); they never wait on libvirt. A
//!    what-if (`POST /v1/plan`, [`whatif`]) is a read too: it plans a
//!    candidate on that snapshot and changes nothing; a pool's history
//!    ([`history`]) comes from the monitor's rings.
//! 4. Changes are authorized ([`auth`]: uid 0 or member of `api.group`),
//!    then run as one transaction under the runtime mutex: apply to a copy,
//!    validate (admission for reservations), save `state.json` atomically,
//!    swap in, record it in the audit log, ask the monitor for a cycle and
//!    answer 2xx (`?wait=true`: after that cycle). All but the answer runs
//!    in a task of its own: a client that hangs up does not cut it short.
//! 5. Every failure is an [`error::Error`]; [`error::Error::status`] is the
//!    one place that maps it to an HTTP status and a JSON error body.
//!
//! Responses leave absent per-resource values out (`"reservation": {}`,
//! `"budget": {"vcpus": 8}`) instead of sending nulls. The status, pool and
//! domain-list answers are serialized once per (published cycle, runtime
//! change, file config) and then served from a cache, with an `ETag`
//! (`If-None-Match` → 304). `GET /v1/pools?members=false` gives budgets and totals
//! without member lists (cheap for dashboards on big hosts).
//!
//! With curl: `curl --unix-socket /run/virtpool/virtpool.sock
//! -H 'Content-Type: application/json' -X POST -d '{"domain":"web-1","vcpus":4}'
//! http://localhost/v1/pools/web/allocate?wait=true` (bodies need the
//! JSON content type: 415 otherwise).
//!
//! Which changes need libvirt (503 `libvirt_unavailable` while it is down):
//! only `allocate`, because admission is checked against members' current
//! floors. Everything else only changes the runtime state (applied when
//! libvirt is back); `reconcile` runs anyway, since a cycle is what
//! reconnects.

pub mod auth;
pub mod conn;
pub mod controller;
pub mod error;
pub mod events;
pub mod history;
pub mod metrics_tcp;
pub mod moves;
pub mod routes;
pub mod server;
pub mod transactions;
pub mod types;
pub mod views;
pub mod whatif;

pub use controller::{AppState, WAIT_LIMIT};
pub use error::Error;
pub use server::{bind, serve, serve_with, ApiError, ApiSocket, ServeOptions};
