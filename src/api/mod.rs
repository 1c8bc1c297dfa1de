//! The HTTP API (axum): health, metrics, cameras, snapshots, clips, insights, semantic
//! search, live events and the OpenAPI description generated from the handlers.
//!
//! Errors are `{"error": {"code", "message"}}` with the matching status; lists are
//! `{"items": [...], "next_cursor": ...}`; times are RFC 3339.

pub mod auth;
pub mod insights;
mod web;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use crate::bus::Bus;
use crate::edge::status::CameraRegistry;
use crate::store::objects::{ObjectStore, clip_key, parse_clip_id};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Camera state.
    pub registry: Arc<CameraRegistry>,
    /// Clips and snapshots.
    pub store: ObjectStore,
    /// The bus, for readiness.
    pub bus: Bus,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Insights, search and events, where this process serves them.
    pub insights: Option<insights::InsightApi>,
    /// Every edge node's cameras, on a cluster bus.
    pub cluster: Option<ClusterApi>,
}

/// Camera state of the whole cluster, as reported by the edge nodes.
#[derive(Clone)]
pub struct ClusterApi {
    /// The shared buckets.
    pub cameras: crate::edge::cluster::ClusterCameras,
    /// The cameras of the config, kept current on reload.
    pub configured: Arc<std::sync::RwLock<Vec<crate::config::CameraConfig>>>,
}

impl ClusterApi {
    async fn views(&self) -> Vec<serde_json::Value> {
        let configured = self
            .configured
            .read()
            .map(|c| c.clone())
            .unwrap_or_default();
        self.cameras.views(&configured).await
    }
}

/// The API description, generated from the handlers and their types.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Panoptes API",
        description = "Cameras, clips and what the cameras saw and heard."
    ),
    paths(
        healthz,
        readyz,
        list_cameras,
        get_camera,
        get_snapshot,
        list_clips,
        get_clip,
        insights::list_insights,
        insights::search,
        insights::get_insight,
        insights::get_insight_snapshot,
        insights::events
    )
)]
pub struct ApiDoc;

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(<ApiDoc as utoipa::OpenApi>::openapi())
}

/// An API error: status, stable code and a message for people.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

/// The routes every role serves: liveness, readiness and metrics.
pub fn health_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::not_found(
                "this process runs no api role: only /healthz, /readyz and /metrics",
            )
        })
        .with_state(state)
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/cameras", get(list_cameras))
        .route("/v1/cameras/{id}", get(get_camera))
        .route("/v1/cameras/{id}/snapshot", get(get_snapshot))
        .route("/v1/clips", get(list_clips))
        .route("/v1/clips/{id}", get(get_clip))
        .route("/v1/insights", get(insights::list_insights))
        .route("/v1/insights/{id}", get(insights::get_insight))
        .route(
            "/v1/insights/{id}/snapshot",
            get(insights::get_insight_snapshot),
        )
        .route("/v1/search", get(insights::search))
        .route("/v1/events", get(insights::events))
        .route("/openapi.json", get(openapi))
        .route("/", get(web::index))
        .route("/assets/app.js", get(web::app_js))
        .route("/assets/style.css", get(web::style_css))
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(state)
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                |req: &axum::http::Request<axum::body::Body>| {
                    // The query may carry an API key (access_token): never in the logs.
                    tracing::debug_span!(
                        "request",
                        method = %req.method(),
                        uri = %auth::redacted_uri(req.uri()),
                        version = ?req.version(),
                    )
                },
            ),
        )
}

/// A temporary redirect to a presigned object URL.
pub(crate) fn redirect(url: &str) -> Response {
    match HeaderValue::from_str(url) {
        Ok(v) => (
            StatusCode::TEMPORARY_REDIRECT,
            [
                (header::LOCATION, v),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
        )
            .into_response(),
        Err(_) => ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "the object store gave an unusable URL".into(),
        }
        .into_response(),
    }
}

/// Serves the API (or, with `full` false, only the health routes) on `listener` until
/// `shutdown` completes.
/// Requests carry API keys when `api.keys` is set, are limited per client address
/// (`api.rate_limit`) and in body size (`api.max_body`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    full: bool,
    config: &crate::config::ApiConfig,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let app = if full {
        router(state)
    } else {
        health_router(state)
    };
    let keys = auth::Keys::new(&config.keys);
    let mut app = app
        .layer(axum::middleware::from_fn(move |req, next| {
            auth::require_key(keys.clone(), req, next)
        }))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            config.max_body,
        ));
    if config.rate_limit > 0 {
        let limiter = tower_governor::governor::GovernorConfigBuilder::default()
            .per_millisecond((1000 / u64::from(config.rate_limit)).max(1))
            .burst_size(config.rate_limit.saturating_mul(2))
            .finish()
            .ok_or_else(|| std::io::Error::other("api.rate_limit: cannot build the limiter"))?;
        app = app.layer(tower_governor::GovernorLayer::new(limiter).error_handler(auth::too_many));
    }
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: bus and stores reachable.
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "ready"), (status = 503, description = "not ready")))]
async fn readyz(State(s): State<AppState>) -> Response {
    let store_ok = s.store.spool_dir().is_dir();
    let bus_ok = s.bus.is_ready();
    let body = serde_json::json!({ "bus": bus_ok, "store": store_ok });
    if store_ok && bus_ok {
        (StatusCode::OK, Json(body)).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    // Sampled when scraped: a task count that only grows is a leak.
    let runtime = tokio::runtime::Handle::current().metrics();
    metrics::gauge!("panoptes_runtime_tasks").set(runtime.num_alive_tasks() as f64);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// Every camera with its state.
#[utoipa::path(get, path = "/v1/cameras", responses((status = 200, description = "cameras")))]
async fn list_cameras(State(s): State<AppState>) -> Json<serde_json::Value> {
    let items = match &s.cluster {
        Some(c) => serde_json::Value::from(c.views().await),
        None => serde_json::to_value(s.registry.views()).unwrap_or_default(),
    };
    Json(serde_json::json!({ "items": items, "next_cursor": null }))
}

/// One camera.
#[utoipa::path(get, path = "/v1/cameras/{id}", params(("id" = String, Path, description = "camera id")),
    responses((status = 200, description = "the camera"), (status = 404, description = "no such camera")))]
async fn get_camera(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    if let Some(c) = &s.cluster {
        return match c.views().await.into_iter().find(|v| v["id"] == id.as_str()) {
            Some(v) => Json(v).into_response(),
            None => ApiError::not_found(format!("no camera \"{id}\"")).into_response(),
        };
    }
    match s.registry.get(&id) {
        Some(c) => Json(c.view(s.registry.node())).into_response(),
        None => ApiError::not_found(format!("no camera \"{id}\"")).into_response(),
    }
}

/// The latest sampled frame of a camera.
#[utoipa::path(get, path = "/v1/cameras/{id}/snapshot", params(("id" = String, Path, description = "camera id")),
    responses((status = 200, content_type = "image/jpeg", description = "JPEG"), (status = 404, description = "no camera or no frame yet")))]
async fn get_snapshot(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    if let Some(c) = &s.cluster {
        return match c.cameras.snapshot(&id).await {
            Some((jpeg, _)) => (
                [
                    (header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg")),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                ],
                jpeg,
            )
                .into_response(),
            None => ApiError::not_found(format!("camera \"{id}\" has no sampled frame on the bus"))
                .into_response(),
        };
    }
    let Some(cam) = s.registry.get(&id) else {
        return ApiError::not_found(format!("no camera \"{id}\"")).into_response();
    };
    match cam.snapshot() {
        Some(snap) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg")),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            [(
                header::LAST_MODIFIED,
                HeaderValue::from_str(&snap.at.to_rfc2822())
                    .unwrap_or(HeaderValue::from_static("")),
            )],
            snap.jpeg,
        )
            .into_response(),
        None => {
            ApiError::not_found(format!("camera \"{id}\" has no sampled frame yet")).into_response()
        }
    }
}

/// Query of `GET /v1/clips`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ClipQuery {
    /// One camera.
    camera: Option<String>,
    /// RFC 3339 (default: 24 hours before `to`).
    from: Option<String>,
    /// RFC 3339 (default: now); at most 31 days after `from`.
    to: Option<String>,
    /// 1-1000 (default 100).
    limit: Option<String>,
}

fn parse_time(name: &str, v: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    v.map(|t| {
        DateTime::parse_from_rfc3339(t)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "{name}: \"{t}\" is not an RFC 3339 time ({e}); e.g. 2026-01-31T12:00:00Z"
                ))
            })
    })
    .transpose()
}

const MAX_LIMIT: usize = 1000;

/// Clips overlapping a time range, oldest first.
#[utoipa::path(get, path = "/v1/clips", params(ClipQuery),
    responses((status = 200, description = "clips"), (status = 400, description = "bad parameter")))]
async fn list_clips(
    State(s): State<AppState>,
    query: Result<Query<ClipQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let to = parse_time("to", q.to.as_deref())?.unwrap_or_else(Utc::now);
    let from =
        parse_time("from", q.from.as_deref())?.unwrap_or_else(|| to - chrono::Duration::hours(24));
    if from > to {
        return Err(ApiError::bad_request("from must not be after to"));
    }
    if to - from > chrono::Duration::days(31) {
        return Err(ApiError::bad_request(
            "the range from..to may span at most 31 days",
        ));
    }
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit must be a whole number from 1 to {MAX_LIMIT}"
                )));
            }
        },
    };
    if let Some(c) = &q.camera
        && !c
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    {
        return Err(ApiError::bad_request("camera: not a valid camera id"));
    }
    let store = s.store.clone();
    let camera = q.camera.clone();
    let mut items = tokio::task::spawn_blocking(move || {
        store.list_clips(
            camera.as_deref(),
            from.timestamp_millis(),
            to.timestamp_millis(),
        )
    })
    .await
    .map_err(|e| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "internal",
        message: format!("listing failed: {e}"),
    })?;
    items.truncate(limit);
    Ok(Json(
        serde_json::json!({ "items": items, "next_cursor": null }),
    ))
}

/// One clip as MP4 (Range requests supported).
#[utoipa::path(get, path = "/v1/clips/{id}", params(("id" = String, Path, description = "clip id")),
    responses((status = 200, content_type = "video/mp4", description = "the clip"), (status = 206, description = "part of it"), (status = 404, description = "no such clip")))]
async fn get_clip(State(s): State<AppState>, Path(id): Path<String>, req: Request) -> Response {
    let Some((camera, start, end)) = parse_clip_id(&id) else {
        return ApiError::not_found(format!("no clip \"{id}\"")).into_response();
    };
    let key = clip_key(camera, start, end);
    let Some(path) = s.store.local_path(&key) else {
        // In S3: the client fetches it from there, Range and all.
        return match s.store.presigned_url(&key).await {
            Some(url) => redirect(&url),
            None => ApiError::not_found(format!("no clip \"{id}\"")).into_response(),
        };
    };
    // ServeFile answers Range requests, which players use to seek.
    match ServeFile::new(path).oneshot(req).await {
        Ok(r) => r.into_response(),
        Err(e) => ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: format!("cannot read the clip: {e}"),
        }
        .into_response(),
    }
}
