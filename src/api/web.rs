//! The web page at `/`: the cameras with their latest snapshots, search by words or by
//! meaning, results drawn with their box, clips played from the moment of the insight and
//! a live feed of new insights. It only calls the public API.
//!
//! The three files are compiled into the binary: no build step, no second server, no CDN.
//! No inline script or style, so the page runs under the strict Content-Security-Policy
//! sent with it. Images and clips may come from another origin (a presigned object-store
//! URL after a redirect), hence `http:`/`https:` for `img-src` and `media-src`.

use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const STYLE_CSS: &str = include_str!("web/style.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data: http: https:; media-src 'self' http: https:; connect-src 'self'; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One of the embedded files. `no-cache`: the browser revalidates, so a new binary's page
/// is used at once (the files are small).
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, HeaderValue); 5] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        // Media URLs may carry `?access_token=`: never hand page URLs to other origins.
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    (headers, body).into_response()
}

/// `GET /`: the page.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /assets/app.js`.
pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /assets/style.css`.
pub async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt;

    async fn fetch(path: &str) -> (StatusCode, String, String) {
        let app: Router = Router::new()
            .route("/", get(index))
            .route("/assets/app.js", get(app_js))
            .route("/assets/style.css", get(style_css));
        let resp = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let ct = resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, ct, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn serves_the_page_and_its_assets_with_their_types() {
        let (status, ct, html) = fetch("/").await;
        assert_eq!(
            (status, ct.as_str()),
            (StatusCode::OK, "text/html; charset=utf-8")
        );
        assert!(html.contains(r#"<script src="/assets/app.js" defer></script>"#));
        assert!(html.contains(r#"href="/assets/style.css""#));
        let (status, ct, _) = fetch("/assets/app.js").await;
        assert_eq!(
            (status, ct.as_str()),
            (StatusCode::OK, "text/javascript; charset=utf-8")
        );
        let (status, ct, _) = fetch("/assets/style.css").await;
        assert_eq!(
            (status, ct.as_str()),
            (StatusCode::OK, "text/css; charset=utf-8")
        );
    }

    #[test]
    fn the_page_has_no_inline_code_and_never_parses_api_text_as_html() {
        // Every <script> has a src (the CSP forbids inline script); no inline handlers or
        // styles.
        let scripts = INDEX_HTML.matches("<script").count();
        assert_eq!(scripts, INDEX_HTML.matches("<script src=").count());
        for attr in [" onclick=", " onload=", " onsubmit=", " style="] {
            assert!(!INDEX_HTML.contains(attr), "index.html has{attr}");
        }
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!APP_JS.contains(sink), "app.js uses {sink}");
        }
    }
}
