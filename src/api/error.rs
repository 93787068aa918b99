//! The one error type of request handling, and the one place it becomes an
//! HTTP status. The `match` in [`Error::status`] has no `_` arm: a new error
//! forces a decision.

use super::types::{ErrorBody, ErrorDetail, MAX_BODY};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that is well-formed JSON but not acceptable (names, ranges, specs).
    #[error("{0}")]
    BadRequest(String),
    /// The body is not JSON of the expected shape.
    #[error("{0}")]
    InvalidJson(String),
    /// A body was sent without `Content-Type: application/json`.
    #[error("expected a request with Content-Type: application/json")]
    UnsupportedMediaType,
    /// Changes need uid 0 or membership of the API group.
    #[error(
        "uid {uid} may read but not change: changes need root or membership of group {group:?}"
    )]
    Forbidden { uid: u32, group: String },
    /// The audit log needs uid 0 or membership of the API group.
    #[error(
        "uid {uid} may not read the audit log: it needs root or membership of group {group:?}"
    )]
    ForbiddenAudit { uid: u32, group: String },
    /// Peer credentials could not be read: refuse changes.
    #[error("cannot identify the caller: changes refused")]
    NoPeer,
    #[error("{0}")]
    NotFound(String),
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    /// The change conflicts with the current configuration (names, membership).
    #[error("{0}")]
    Conflict(String),
    /// A reservation or budget does not fit.
    #[error("{0}")]
    DoesNotFit(String),
    #[error("request body is larger than {} bytes", MAX_BODY)]
    TooLarge,
    /// The client did not send the body in time.
    #[error("request body not received in time")]
    Timeout,
    /// The change needs a live libvirt view and libvirt is down.
    #[error("libvirt is not connected ({0}): try again when it is")]
    LibvirtDown(String),
    /// No observation yet (the first cycle has not run).
    #[error("the agent has not observed the host yet: try again in a moment")]
    NotReady,
    /// The monitor is gone (agent stopping).
    #[error("the agent is stopping")]
    Stopping,
    /// A reload read a config file that is invalid: the running config stays.
    #[error("reload refused, the running config stays: {0}")]
    ConfigRefused(String),
    /// A what-if's candidate config is one a reload would refuse (the
    /// message is the reload's).
    #[error("a reload would refuse this config: {0}")]
    CandidateRefused(String),
    /// The reload was handed over, but the monitor did not take it within
    /// the wait (its cycle is still running): it takes effect when that
    /// cycle ends.
    #[error(
        "reload not taken within {}s: the agent's cycle is still running (stuck in libvirt?); \
         the file is read when that cycle ends: see `virtpoolctl status` (config_error) for the outcome",
        .0.as_secs()
    )]
    ReloadPending(std::time::Duration),
    /// `POST /v1/reconcile?wait=true`: no cycle finished within the wait
    /// (one is stuck); the requested cycle runs when it ends.
    #[error(
        "no cycle finished within {}s: the agent's cycle is still running (stuck in libvirt?); \
         the requested cycle runs when it ends",
        .0.as_secs()
    )]
    CyclePending(std::time::Duration),
    /// This agent takes reloads by SIGHUP only (no service loop behind the API).
    #[error("reloads are not taken through the API here: send SIGHUP")]
    NoReload,
    /// The runtime state could not be saved: nothing was changed.
    #[error("change not saved, nothing changed: {0}")]
    Persist(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status and the stable machine code of each error.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            Error::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Error::Forbidden { .. } | Error::ForbiddenAudit { .. } | Error::NoPeer => {
                (StatusCode::FORBIDDEN, "forbidden")
            }
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::DoesNotFit(_) => (StatusCode::CONFLICT, "does_not_fit"),
            Error::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            Error::Timeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Error::LibvirtDown(_) => (StatusCode::SERVICE_UNAVAILABLE, "libvirt_unavailable"),
            Error::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            Error::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "stopping"),
            Error::ConfigRefused(_) | Error::CandidateRefused(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "config_refused")
            }
            Error::NoReload => (StatusCode::SERVICE_UNAVAILABLE, "reload_unavailable"),
            Error::ReloadPending(_) => (StatusCode::SERVICE_UNAVAILABLE, "reload_pending"),
            Error::CyclePending(_) => (StatusCode::SERVICE_UNAVAILABLE, "cycle_pending"),
            Error::Persist(_) => (StatusCode::INTERNAL_SERVER_ERROR, "state_not_saved"),
            Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The JSON body of this error.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.status().1.to_string(),
                message: self.to_string(),
            },
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, _) = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "API request failed");
        }
        (status, axum::Json(self.body())).into_response()
    }
}

impl From<crate::core::planner::reserve::ReserveRefusal> for Error {
    fn from(e: crate::core::planner::reserve::ReserveRefusal) -> Error {
        Error::DoesNotFit(e.to_string())
    }
}

impl From<axum::extract::rejection::JsonRejection> for Error {
    fn from(r: axum::extract::rejection::JsonRejection) -> Error {
        use axum::extract::rejection::JsonRejection as J;
        match r {
            J::MissingJsonContentType(_) => Error::UnsupportedMediaType,
            J::JsonDataError(e) => {
                Error::InvalidJson(format!("invalid request: {}", source_text(&e)))
            }
            J::JsonSyntaxError(e) => {
                Error::InvalidJson(format!("malformed JSON: {}", source_text(&e)))
            }
            J::BytesRejection(e) => {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Error::TooLarge
                } else {
                    Error::BadRequest(e.body_text())
                }
            }
            other => Error::BadRequest(other.body_text()),
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for Error {
    fn from(r: axum::extract::rejection::QueryRejection) -> Error {
        Error::BadRequest(format!("bad query string: {}", source_text(&r)))
    }
}

impl From<axum::extract::rejection::PathRejection> for Error {
    fn from(r: axum::extract::rejection::PathRejection) -> Error {
        Error::BadRequest(r.body_text())
    }
}

/// The innermost message of an error chain (serde's own text, without
/// axum's wrapper sentences).
fn source_text(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape() {
        let e = Error::NotFound("no pool \"x\"".into());
        let v = serde_json::to_value(e.body()).unwrap_or_default();
        assert_eq!(
            v,
            serde_json::json!({"error": {"code": "not_found", "message": "no pool \"x\""}})
        );
        assert_eq!(e.status().0, StatusCode::NOT_FOUND);
    }
}
