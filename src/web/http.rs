//! The guards in front of every route of labmq-web; its listener (connection cap,
//! header timeout, bounded shutdown) is the shared [`crate::daemon::http::serve`].
//!
//! - `body_timeout_secs` to send a request's body ([`timed_body`]: 408);
//! - [`guard`] refuses, before any route runs, a `Host` that is not allowed (421, DNS
//!   rebinding) and a POST from another site (403, cross-site request forgery).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::routes::ApiError;

pub use crate::daemon::http::{Limits, Peer, serve};

/// What [`guard`] and [`timed_body`] check.
#[derive(Debug, Clone)]
pub struct Guard {
    /// Host names accepted besides `localhost` and IP addresses; `*` accepts any.
    pub allowed_hosts: Arc<Vec<String>>,
    pub body_timeout: Duration,
}

/// The host part of a `Host` header value (`name`, `name:port`, `[v6]:port`), lowercase.
fn host_name(value: &str) -> String {
    let value = value.trim();
    let host = if let Some(rest) = value.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        value.rsplit_once(':').map_or(value, |(host, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                host
            } else {
                value
            }
        })
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl Guard {
    /// An IP literal cannot be rebound (the browser's origin is the address itself), and
    /// `localhost` is what an operator types; a name must be listed.
    fn host_allowed(&self, host: &str) -> bool {
        host == "localhost"
            || host.parse::<IpAddr>().is_ok()
            || self
                .allowed_hosts
                .iter()
                .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(host))
    }

    /// Why a state-changing request comes from another site, if it does. Browsers send
    /// `Sec-Fetch-Site` (all current ones) and `Origin` on POSTs; clients that send
    /// neither (curl, scripts) are not browsers and carry no victim's ambient authority.
    fn cross_site(headers: &HeaderMap, host: Option<&str>) -> Option<String> {
        if let Some(site) = headers.get("sec-fetch-site") {
            let site = site.to_str().unwrap_or("?");
            if site != "same-origin" && site != "none" {
                return Some(format!("Sec-Fetch-Site: {site}"));
            }
        }
        let origin = headers.get(header::ORIGIN)?;
        let origin = origin.to_str().unwrap_or("?");
        let authority = origin
            .split_once("://")
            .map(|(_, rest)| rest.trim_end_matches('/'));
        match (authority, host) {
            (Some(authority), Some(host)) if authority.eq_ignore_ascii_case(host.trim()) => None,
            _ => Some(format!("Origin: {origin}")),
        }
    }
}

/// Refuses a request whose `Host` is not allowed (421) or a POST from another site (403).
pub async fn guard(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("?").to_owned());
    if let Some(host) = &host {
        let name = host_name(host);
        if !guard.host_allowed(&name) {
            tracing::info!(host = %host, "refused a request for a host that is not allowed");
            return ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "host_not_allowed",
                format!(
                    "host {name:?} is not served here; add it to allowed_hosts if it is a name of this server"
                ),
            )
            .into_response();
        }
    }
    let changes_state = request.method() != Method::GET && request.method() != Method::HEAD;
    let cross_site = changes_state
        .then(|| Guard::cross_site(request.headers(), host.as_deref()))
        .flatten();
    if let Some(why) = cross_site {
        tracing::info!(reason = %why, path = %request.uri().path(), "refused a cross-site request");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_site",
            format!("cross-site requests are refused ({why})"),
        )
        .into_response();
    }
    next.run(request).await
}

/// Gives the request's body `body_timeout`: a client that stops sending it gets 408 from
/// the route's extractor (see [`BODY_TIMEOUT_MARK`]) instead of holding the request.
pub async fn timed_body(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let body = Body::new(TimedBody {
        inner: body,
        deadline: Box::pin(tokio::time::sleep(guard.body_timeout)),
        secs: guard.body_timeout.as_secs(),
    });
    next.run(Request::from_parts(parts, body)).await
}

/// Part of the error a late body gives, so routes can answer 408.
pub const BODY_TIMEOUT_MARK: &str = "body_timeout_secs";

struct TimedBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    secs: u64,
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                let message = format!(
                    "the request body did not arrive within {} s ({BODY_TIMEOUT_MARK})",
                    self.secs
                );
                Poll::Ready(Some(Err(axum::Error::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    message,
                )))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(host_name("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(host_name("[::1]:8080"), "::1");
        assert_eq!(host_name("Example.ORG."), "example.org");
        assert_eq!(host_name("evil.example:80"), "evil.example");
    }

    #[test]
    fn hosts_and_origins() {
        let guard = Guard {
            allowed_hosts: Arc::new(vec!["labmq.example.org".into()]),
            body_timeout: Duration::from_secs(1),
        };
        assert!(guard.host_allowed("localhost"));
        assert!(guard.host_allowed("10.1.2.3"));
        assert!(guard.host_allowed("::1"));
        assert!(guard.host_allowed("labmq.example.org"));
        assert!(!guard.host_allowed("rebind.attacker.example"));
        let mut headers = HeaderMap::new();
        assert_eq!(Guard::cross_site(&headers, Some("127.0.0.1:8080")), None);
        headers.insert(header::ORIGIN, "http://127.0.0.1:8080".parse().unwrap());
        assert_eq!(Guard::cross_site(&headers, Some("127.0.0.1:8080")), None);
        headers.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(Guard::cross_site(&headers, Some("127.0.0.1:8080")).is_some());
        headers.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(Guard::cross_site(&headers, Some("127.0.0.1:8080")).is_some());
        let mut headers = HeaderMap::new();
        headers.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(Guard::cross_site(&headers, Some("127.0.0.1:8080")).is_some());
        headers.insert("sec-fetch-site", "same-site".parse().unwrap());
        assert!(Guard::cross_site(&headers, Some("127.0.0.1:8080")).is_some());
        headers.insert("sec-fetch-site", "same-origin".parse().unwrap());
        assert_eq!(Guard::cross_site(&headers, Some("127.0.0.1:8080")), None);
    }
}
