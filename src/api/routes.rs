//! The router: paths → thin handlers over [`AppState`]. Every response,
//! including axum's own rejections, unknown routes (404) and wrong methods
//! (405), is JSON; errors have the shape of [`ErrorBody`](super::types::ErrorBody).
//!
//! To add an endpoint (e.g. `GET /metrics`), add a `.route(...)` in
//! [`routes`].

use super::auth::{Peer, Privilege};
use super::controller::{self, AppState};
use super::error::Error;
use super::transactions;
use super::types::*;
use crate::agent::state::RuntimeState;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// JSON body with errors in the API's shape.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = Error;
    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Json(v))
    }
}

/// Query string with errors in the API's shape.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(v))
    }
}

/// Path parameters with errors in the API's shape.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let axum::extract::Path(v) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(v))
    }
}

/// The caller's credentials (set by the server per connection).
pub struct Caller(pub Option<Peer>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        Ok(Caller(parts.extensions.get::<Peer>().copied()))
    }
}

type R<T> = Result<axum::Json<T>, Error>;

/// Every API route, without state.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/pools", get(pools))
        .route(
            "/v1/pools/{pool}",
            get(pool).put(put_pool).delete(delete_pool),
        )
        .route("/v1/pools/{pool}/members", post(add_member))
        .route("/v1/pools/{pool}/members/{domain}", delete(remove_member))
        .route("/v1/pools/{pool}/allocate", post(allocate))
        .route("/v1/pools/{pool}/release", post(release))
        .route("/v1/pools/{pool}/pause", post(set_pool_paused::<true>))
        .route("/v1/pools/{pool}/resume", post(set_pool_paused::<false>))
        .route("/v1/pools/{pool}/history", get(pool_history))
        .route("/v1/domains", get(domains))
        .route("/v1/domains/{domain}", get(domain))
        .route("/v1/plan", get(plan).post(what_if))
        .route("/v1/reconcile", post(reconcile))
        .route("/v1/reload", post(reload))
        .route("/v1/pause", post(set_all_paused::<true>))
        .route("/v1/resume", post(set_all_paused::<false>))
        .route("/v1/events", get(events))
        .route("/v1/audit", get(events))
        .route("/metrics", get(metrics))
}

/// The complete service: who may ask, routes, JSON fallbacks, body limit
/// and timeout.
pub fn router(state: AppState, body_timeout: Duration) -> Router {
    routes()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            body_timeout,
            buffer_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .with_state(state)
}

/// Whether a request needs root or the API group (see [`super::auth`]):
/// every method but GET/HEAD (changes), and the audit log. A what-if
/// (`POST /v1/plan`) changes nothing: anyone who may read may ask.
fn privileged(method: &Method, path: &str) -> Option<Privilege> {
    if path == "/v1/events" || path == "/v1/audit" {
        return Some(Privilege::Audit);
    }
    if path == "/v1/plan" {
        return None;
    }
    (method != Method::GET && method != Method::HEAD).then_some(Privilege::Change)
}

/// Checks the caller before anything else (before a body is read or
/// parsed): an unprivileged peer gets 403 whatever it sent.
async fn authorize(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(what) = privileged(req.method(), req.uri().path()) {
        let peer = req.extensions().get::<Peer>().copied();
        if let Err(e) = super::auth::authorize(peer, s.group(), what) {
            return e.into_response();
        }
    }
    next.run(req).await
}

async fn not_found(uri: Uri) -> Error {
    Error::NotFound(format!("no such endpoint: {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Error {
    Error::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

/// Reads the whole body (at most [`MAX_BODY`] bytes, within `timeout`)
/// before routing, so a slow or oversized upload is refused in one place.
async fn buffer_body(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    if axum::body::HttpBody::is_end_stream(req.body()) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > MAX_BODY as u64 {
            return Error::TooLarge.into_response();
        }
    }
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    let bytes: Bytes = match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => return Error::Timeout.into_response(),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Error::TooLarge.into_response();
            }
            return Error::BadRequest(format!("cannot read the request body: {e}")).into_response();
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

// ------------------------------------------------------------------ reads

/// A cached answer: 304 when the caller's `If-None-Match` names its ETag,
/// the JSON body otherwise.
fn cached_response(req: &HeaderMap, c: controller::Cached) -> Response {
    if let Ok(etag) = HeaderValue::from_str(&c.etag) {
        let fresh = req
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == c.etag);
        if fresh {
            return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
        }
        return (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (header::ETAG, etag),
            ],
            c.body,
        )
            .into_response();
    }
    ([(header::CONTENT_TYPE, "application/json")], c.body).into_response()
}

async fn status(State(s): State<AppState>, h: HeaderMap) -> Result<Response, Error> {
    Ok(cached_response(&h, s.status_json()?))
}

async fn pools(
    State(s): State<AppState>,
    h: HeaderMap,
    Query(q): Query<PoolsQuery>,
) -> Result<Response, Error> {
    Ok(cached_response(
        &h,
        s.pools_json(q.members.unwrap_or(true))?,
    ))
}

async fn pool(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, Error> {
    controller::parse_name("pool", &name)?;
    Ok(cached_response(&h, s.pool_json(&name)?))
}

async fn domains(State(s): State<AppState>, h: HeaderMap) -> Result<Response, Error> {
    Ok(cached_response(&h, s.domains_json()?))
}

async fn domain(State(s): State<AppState>, Path(key): Path<String>) -> R<DomainView> {
    controller::parse_domain(&key)?;
    Ok(axum::Json(s.domain(&key)?))
}

async fn plan(State(s): State<AppState>) -> R<PlanResponse> {
    Ok(axum::Json(s.plan()?))
}

/// `POST /v1/plan`: a what-if (see [`super::whatif`]), planned on a
/// blocking thread (a whole plan, and a candidate config to check).
async fn what_if(
    State(s): State<AppState>,
    Json(req): Json<super::whatif::WhatIf>,
) -> R<super::whatif::WhatIfResponse> {
    let answer = tokio::task::spawn_blocking(move || super::whatif::what_if(&s, &req))
        .await
        .map_err(|e| Error::Internal(format!("what-if task failed: {e}")))??;
    Ok(axum::Json(answer))
}

async fn pool_history(
    State(s): State<AppState>,
    Path(pool): Path<String>,
) -> R<super::history::PoolHistory> {
    Ok(axum::Json(super::history::pool_history(&s, &pool)?))
}

/// `/v1/events` and its alias `/v1/audit`: the audit log's tail.
async fn events(State(s): State<AppState>, Query(q): Query<EventsQuery>) -> R<EventsResponse> {
    Ok(axum::Json(
        super::events::read(s.control().audit().clone(), q).await?,
    ))
}

/// Prometheus text format (`crate::agent::metrics`), from the last published cycle.
async fn metrics(State(s): State<AppState>) -> Response {
    let h = s.control();
    (
        [(header::CONTENT_TYPE, crate::agent::metrics::CONTENT_TYPE)],
        crate::agent::metrics::render(&h.report(), &h.counters()),
    )
        .into_response()
}

// ---------------------------------------------------------------- changes

/// What every change takes besides its path and body: the state, the
/// caller's credentials and `?wait` (extracted where the handler names it,
/// so a bad path is refused before a bad query).
struct Change {
    s: AppState,
    peer: Option<Peer>,
    wait: bool,
}

impl FromRequestParts<AppState> for Change {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, Error> {
        let Caller(peer) = Caller::from_request_parts(parts, s).await?;
        let Query(q) = Query::<WaitQuery>::from_request_parts(parts, s).await?;
        Ok(Change {
            s: s.clone(),
            peer,
            wait: q.wait,
        })
    }
}

fn change_response<T>(
    out: controller::Outcome<T>,
    cycle: Option<CycleResult>,
) -> axum::Json<ChangeResponse> {
    axum::Json(ChangeResponse {
        message: out.message,
        changed: out.changed,
        cycle,
    })
}

impl Change {
    /// A change that answers with a [`ChangeResponse`]: `f` in a
    /// transaction (see [`AppState::change`]), then its message and cycle.
    async fn apply<F>(self, f: F) -> R<ChangeResponse>
    where
        F: FnOnce(&controller::Ctx, &mut RuntimeState) -> Result<controller::Outcome<()>, Error>
            + Send
            + 'static,
    {
        let (out, cycle) = self.s.change(self.peer, self.wait, f).await?;
        Ok(change_response(out, cycle))
    }

    /// Allocate or release (`change`) in `pool`: a change scoped to the
    /// reservation's domain, answered with the reservation and its cycle.
    async fn reserve(
        self,
        pool: String,
        req: Reservation,
        change: ReservationChange,
    ) -> R<ReservationResponse> {
        let (out, cycle) = self
            .s
            .change_scoped(
                self.peer,
                self.wait,
                move |ctx, rt| change(ctx, rt, &pool, &req),
                |v: &ReservationResponse| Some(v.domain.clone()),
            )
            .await?;
        let mut v = out.value;
        v.cycle = cycle;
        Ok(axum::Json(v))
    }
}

/// The signature of [`transactions::allocate`] and [`transactions::release`].
type ReservationChange = fn(
    &controller::Ctx,
    &mut RuntimeState,
    &str,
    &Reservation,
) -> Result<controller::Outcome<ReservationResponse>, Error>;

async fn put_pool(
    Path(name): Path<String>,
    c: Change,
    Json(body): Json<PutPool>,
) -> Result<Response, Error> {
    let (out, cycle) =
        c.s.change(c.peer, c.wait, move |ctx, rt| {
            transactions::put_pool(ctx, rt, &name, body)
        })
        .await?;
    let code = if out.value {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, change_response(out, cycle)).into_response())
}

async fn delete_pool(Path(name): Path<String>, c: Change) -> R<ChangeResponse> {
    c.apply(move |ctx, rt| transactions::delete_pool(ctx, rt, &name))
        .await
}

async fn add_member(
    Path(pool): Path<String>,
    c: Change,
    Json(body): Json<AddMember>,
) -> R<ChangeResponse> {
    c.apply(move |ctx, rt| transactions::add_member(ctx, rt, &pool, &body))
        .await
}

async fn remove_member(
    Path((pool, domain)): Path<(String, String)>,
    c: Change,
) -> R<ChangeResponse> {
    c.apply(move |ctx, rt| transactions::remove_member(ctx, rt, &pool, &domain))
        .await
}

async fn allocate(
    Path(pool): Path<String>,
    c: Change,
    Json(req): Json<Reservation>,
) -> R<ReservationResponse> {
    c.reserve(pool, req, transactions::allocate).await
}

async fn release(
    Path(pool): Path<String>,
    c: Change,
    Json(req): Json<Reservation>,
) -> R<ReservationResponse> {
    c.reserve(pool, req, transactions::release).await
}

/// Pauses (`paused`) or resumes `pool`, or all pools.
async fn set_paused(c: Change, pool: Option<String>, paused: bool) -> R<ChangeResponse> {
    c.apply(move |ctx, rt| transactions::set_paused(ctx, rt, pool.as_deref(), paused))
        .await
}

/// `POST /v1/pause` (`PAUSED`) and `POST /v1/resume`.
async fn set_all_paused<const PAUSED: bool>(c: Change) -> R<ChangeResponse> {
    set_paused(c, None, PAUSED).await
}

/// `POST /v1/pools/{pool}/pause` (`PAUSED`) and `.../resume`.
async fn set_pool_paused<const PAUSED: bool>(
    Path(pool): Path<String>,
    c: Change,
) -> R<ChangeResponse> {
    set_paused(c, Some(pool), PAUSED).await
}

async fn reload(State(s): State<AppState>, Caller(peer): Caller) -> R<ReloadResponse> {
    super::auth::authorize_change(peer, s.group())?;
    Ok(axum::Json(s.reload().await?))
}

/// `POST /v1/reconcile`: runs a cycle now, also while libvirt is down (the
/// cycle is what reconnects).
async fn reconcile(c: Change) -> R<ReconcileResponse> {
    super::auth::authorize_change(c.peer, c.s.group())?;
    let cycle = c.s.reconcile(c.wait, true).await?;
    Ok(axum::Json(ReconcileResponse {
        waited: c.wait,
        cycle,
    }))
}
