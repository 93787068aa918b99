//! A small HTTP/1.1 client for the control API over the Unix socket, used
//! by `virtpoolctl` (and tests). Requests and answers are the typed
//! structs of [`crate::api::types`].

use crate::api::types::ErrorBody;
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};
use tokio::net::UnixStream;

/// Default socket path.
pub const DEFAULT_SOCKET: &str = "/run/virtpool/virtpool.sock";

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket (or it can't be opened).
    #[error("cannot reach virtpoold at {path}: is the service running? ({source})")]
    Unreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The agent answered with an error.
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The exchange itself failed.
    #[error("talking to virtpoold at {path}: {message}")]
    Protocol { path: PathBuf, message: String },
    /// The answer is not what this client expects (version mismatch?).
    #[error("unexpected answer from virtpoold: {0}")]
    Decode(String),
}

/// A name as one segment of a request path: every byte but ASCII letters,
/// digits, `-`, `_`, `.` and `~` percent-encoded (`web with spaces` →
/// `web%20with%20spaces`, `ü` → `%C3%BC`), and the dots of `.` and `..`
/// too (so no one reads them as "this" or "the parent" path). The server
/// decodes it back.
pub fn path_segment(name: &str) -> String {
    let dots = name == "." || name == "..";
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        let keep =
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') || (b == b'.' && !dots);
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A client for one socket path. Each call opens a connection.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

/// One open connection (keep-alive): several requests in a row.
pub struct Connection {
    socket: PathBuf,
    sender: SendRequest<Full<Bytes>>,
}

/// A raw answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    /// The body as `T` on 2xx, the API error otherwise.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        self.ok()?;
        serde_json::from_slice(&self.body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `Ok` on 2xx, the API error otherwise.
    pub fn ok(&self) -> Result<&Self, ClientError> {
        if self.status.is_success() {
            return Ok(self);
        }
        Err(match serde_json::from_slice::<ErrorBody>(&self.body) {
            Ok(e) => ClientError::Api {
                status: self.status.as_u16(),
                code: e.error.code,
                message: e.error.message,
            },
            Err(_) => ClientError::Api {
                status: self.status.as_u16(),
                code: "http".into(),
                message: format!(
                    "HTTP {}: {}",
                    self.status,
                    String::from_utf8_lossy(&self.body).trim()
                ),
            },
        })
    }
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Opens a keep-alive connection.
    pub async fn connect(&self) -> Result<Connection, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Unreachable {
                    path: self.socket.clone(),
                    source,
                })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Connection {
            socket: self.socket.clone(),
            sender,
        })
    }

    fn protocol(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Protocol {
            path: self.socket.clone(),
            message: e.to_string(),
        }
    }

    /// One request on a fresh connection.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, ClientError> {
        self.connect().await?.request(method, path, body).await
    }

    /// `GET path` as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.request(Method::GET, path, None).await?.json()
    }

    /// `method path` with a JSON body, answer as `T`.
    pub async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let bytes = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        self.request(method, path, bytes).await?.json()
    }
}

impl Connection {
    /// Sends one request and reads the whole answer.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, ClientError> {
        let perr = |e: &dyn std::fmt::Display| ClientError::Protocol {
            path: self.socket.clone(),
            message: e.to_string(),
        };
        self.sender.ready().await.map_err(|e| perr(&e))?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "virtpoold");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| perr(&e))?;
        let resp = self.sender.send_request(req).await.map_err(|e| perr(&e))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| perr(&e))?
            .to_bytes();
        Ok(Answer { status, body })
    }
}

#[cfg(test)]
mod tests {
    use super::path_segment;

    #[test]
    fn path_segments_are_percent_encoded() {
        for (segment, encoded) in [
            ("web-1.prod_x~", "web-1.prod_x~"),
            ("web with spaces", "web%20with%20spaces"),
            ("web-ünï", "web-%C3%BCn%C3%AF"),
            ("a%2Fb?c#d", "a%252Fb%3Fc%23d"),
            ("..", "%2E%2E"),
            (".", "%2E"),
            ("..x", "..x"),
        ] {
            assert_eq!(path_segment(segment), encoded, "{segment:?}");
        }
    }
}
