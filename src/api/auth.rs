//! Who may call the API, and how often: bearer API keys on `/v1/*` and `/metrics` (when
//! keys are configured), a per-client rate limit and a request body limit. `/healthz`,
//! `/readyz`, the API description and the web page stay open.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::config::Secret;

/// The configured keys.
#[derive(Clone, Default)]
pub struct Keys(Arc<Vec<Secret>>);

impl Keys {
    /// Keys from the config; none means the API is open.
    pub fn new(keys: &[Secret]) -> Keys {
        Keys(Arc::new(keys.to_vec()))
    }

    fn accepts(&self, presented: &str) -> bool {
        // Every key is compared, in constant time, whatever matches first.
        self.0.iter().fold(false, |ok, k| {
            ok | bool::from(k.expose().as_bytes().ct_eq(presented.as_bytes()))
        })
    }
}

/// Whether a path needs a key when keys are configured.
pub fn protected(path: &str) -> bool {
    path == "/metrics" || path == "/v1" || path.starts_with("/v1/")
}

/// The key a request presents: `Authorization: Bearer <key>`, or `access_token=<key>` in
/// the query for what cannot send headers (images, video, EventSource).
fn presented(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION)
        && let Ok(v) = v.to_str()
        && let Some(key) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    {
        return Some(key.trim().to_string());
    }
    req.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v.into_owned())
    })
}

/// The request's path and query with any `access_token` value replaced, for logs.
pub fn redacted_uri(uri: &axum::http::Uri) -> String {
    match uri.query() {
        None => uri.path().to_string(),
        Some(q) => {
            let query: Vec<String> = q
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some(("access_token", _)) => "access_token=***".to_string(),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{}?{}", uri.path(), query.join("&"))
        }
    }
}

/// The request with `access_token` taken off its query: handlers see only their own
/// parameters (and reject unknown ones), whether or not keys are configured.
fn without_token(mut req: Request) -> Request {
    let Some(q) = req.uri().query() else {
        return req;
    };
    if !q
        .split('&')
        .any(|p| p == "access_token" || p.starts_with("access_token="))
    {
        return req;
    }
    let kept: Vec<&str> = q
        .split('&')
        .filter(|p| *p != "access_token" && !p.starts_with("access_token="))
        .collect();
    let path_and_query = if kept.is_empty() {
        req.uri().path().to_string()
    } else {
        format!("{}?{}", req.uri().path(), kept.join("&"))
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = axum::http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    req
}

/// Middleware: 401 on a protected path without a valid key.
pub async fn require_key(keys: Keys, req: Request, next: Next) -> Response {
    if keys.0.is_empty() || !protected(req.uri().path()) {
        return next.run(without_token(req)).await;
    }
    match presented(&req) {
        Some(k) if keys.accepts(&k) => next.run(without_token(req)).await,
        found => {
            let message = if found.is_some() {
                "the API key is not valid"
            } else {
                "an API key is required: send `Authorization: Bearer <key>`"
            };
            let mut resp = ApiError {
                status: StatusCode::UNAUTHORIZED,
                code: "unauthorized",
                message: message.into(),
            }
            .into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"panoptes\""),
            );
            resp
        }
    }
}

/// The rate limiter's answer, in the API's error shape.
pub fn too_many(e: tower_governor::GovernorError) -> Response {
    match e {
        tower_governor::GovernorError::TooManyRequests { wait_time, .. } => {
            let mut resp = ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: "rate_limited",
                message: format!("too many requests from this address; retry in {wait_time} s"),
            }
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&wait_time.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            resp
        }
        _ => ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "cannot tell the client's address".into(),
        }
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Secret {
        serde_json::from_value(serde_json::Value::String(s.into())).unwrap()
    }

    #[test]
    fn only_api_and_metrics_paths_are_protected() {
        for p in ["/v1/cameras", "/v1/insights/x/snapshot", "/metrics", "/v1"] {
            assert!(protected(p), "{p}");
        }
        for p in [
            "/healthz",
            "/readyz",
            "/",
            "/assets/app.js",
            "/openapi.json",
            "/v1x",
        ] {
            assert!(!protected(p), "{p}");
        }
    }

    #[test]
    fn handlers_never_see_the_token() {
        let req = |uri: &str| {
            Request::builder()
                .uri(uri)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let uri = |u: &str| without_token(req(u)).uri().to_string();
        assert_eq!(
            uri("/v1/events?kind=text&access_token=k"),
            "/v1/events?kind=text"
        );
        assert_eq!(uri("/v1/events?access_token=k"), "/v1/events");
        assert_eq!(uri("/v1/insights?q=dock"), "/v1/insights?q=dock");
    }

    #[test]
    fn logged_uris_hide_the_key() {
        let uri: axum::http::Uri = "/v1/events?kind=text&access_token=secret-1&x=1"
            .parse()
            .unwrap();
        assert_eq!(
            redacted_uri(&uri),
            "/v1/events?kind=text&access_token=***&x=1"
        );
        assert_eq!(redacted_uri(&"/v1/cameras".parse().unwrap()), "/v1/cameras");
    }

    #[test]
    fn any_configured_key_is_accepted_and_nothing_else() {
        let keys = Keys::new(&[key("first-key-0123456789"), key("second-key-0123456789")]);
        assert!(keys.accepts("first-key-0123456789"));
        assert!(keys.accepts("second-key-0123456789"));
        assert!(!keys.accepts("first-key-012345678"));
        assert!(!keys.accepts(""));
    }

    #[test]
    fn keys_come_from_the_header_or_the_query() {
        let req = |uri: &str, auth: Option<&str>| {
            let mut b = Request::builder().uri(uri);
            if let Some(a) = auth {
                b = b.header(header::AUTHORIZATION, a);
            }
            b.body(axum::body::Body::empty()).unwrap()
        };
        assert_eq!(
            presented(&req("/v1/cameras", Some("Bearer abc"))).as_deref(),
            Some("abc")
        );
        assert_eq!(
            presented(&req("/v1/events?kind=text&access_token=a%2Bb", None)).as_deref(),
            Some("a+b")
        );
        assert_eq!(presented(&req("/v1/cameras", Some("Basic abc"))), None);
    }
}
