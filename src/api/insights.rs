//! Insight routes: listing with filters and words, semantic search, live events, and the
//! snapshot of each insight. Each insight is shown with links to its snapshot and to the
//! clip that contains it (found when asked, so a clip finished after the insight counts).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use uuid::Uuid;

use super::{ApiError, AppState, parse_time};
use crate::infer::QueryEmbedder;
use crate::store::insights::{
    ClipLink, Cursor, Filter, Insight, InsightStore, Kind, Query as StoreQuery,
};
use crate::store::objects::ObjectStore;

/// The insight side of the API: the store, the text embedder for semantic search and the
/// feed of new insights.
#[derive(Clone)]
pub struct InsightApi {
    /// Where insights are.
    pub store: Arc<InsightStore>,
    /// Embeds search queries; absent when models are not loaded (search answers 503).
    pub embedder: Option<Arc<QueryEmbedder>>,
    /// New insights as they are stored.
    pub events: broadcast::Sender<Insight>,
    /// Cancelled at shutdown: event streams end so the server can stop.
    pub closing: tokio_util::sync::CancellationToken,
}

/// A clip link as shown: the stored link plus the clip's id and URL.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClipView {
    /// `<camera>-<start_ms>-<end_ms>`.
    pub id: String,
    /// Object key.
    pub key: String,
    /// Seconds from the start of the clip to the insight.
    pub offset_s: f64,
    /// Where to fetch the MP4.
    pub url: String,
}

/// An insight as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InsightView {
    /// The stored record (its clip shown resolved below).
    #[serde(flatten)]
    pub insight: Insight,
    /// The JPEG it was found in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The clip it is in, once that clip is stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip: Option<ClipView>,
    /// Semantic search only: cosine similarity of its text to the query.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f32>,
}

fn view(objects: &ObjectStore, i: Insight, similarity: Option<f32>) -> InsightView {
    views(objects, vec![(i, similarity)])
        .pop()
        .expect("one view per insight")
}

/// Views of a page of insights: each camera's clips are listed once (names only), over the
/// page's span, and each insight finds its clip by bisection.
fn views(objects: &ObjectStore, items: Vec<(Insight, Option<f32>)>) -> Vec<InsightView> {
    let mut span: std::collections::HashMap<String, (i64, i64)> = Default::default();
    for (i, _) in items.iter().filter(|(i, _)| i.clip.is_none()) {
        let ts = i.ts.timestamp_millis();
        let last = i.ts_end.map_or(ts, |t| t.timestamp_millis());
        let s = span.entry(i.camera.clone()).or_insert((ts, last));
        *s = (s.0.min(ts), s.1.max(last));
    }
    let clips: std::collections::HashMap<String, Vec<(i64, i64)>> = span
        .into_iter()
        .map(|(c, (a, b))| {
            let v = objects.clip_spans(&c, a, b + 1);
            (c, v)
        })
        .collect();
    items
        .into_iter()
        .map(|(i, sim)| {
            let c = clips.get(&i.camera).map_or(&[][..], Vec::as_slice);
            view_with(c, i, sim)
        })
        .collect()
}

/// `clips`: the camera's clip spans sorted by start.
fn view_with(clips: &[(i64, i64)], mut i: Insight, similarity: Option<f32>) -> InsightView {
    let url = i
        .snapshot
        .as_ref()
        .map(|_| format!("/v1/insights/{}/snapshot", i.id));
    let ts = i.ts.timestamp_millis();
    let last = i.ts_end.map_or(ts, |t| t.timestamp_millis());
    let clip = i.clip.take().or_else(|| {
        // The clip playing at `ts`; for a finding that began just before recording did (a
        // sentence at the very start of a stream), the first clip that shows part of it.
        let k = clips.partition_point(|&(start, _)| start <= ts);
        k.checked_sub(1)
            .map(|k| clips[k])
            .filter(|&(_, end)| ts < end)
            .or_else(|| clips.get(k).copied().filter(|&(start, _)| start <= last))
            .map(|(start, end)| ClipLink {
                key: crate::store::objects::clip_key(&i.camera, start, end),
                offset_s: (ts - start).max(0) as f64 / 1000.0,
            })
    });
    let clip = clip.and_then(|c| {
        let (camera, start, end) = parse_clip_key(&c.key)?;
        let id = format!("{camera}-{start}-{end}");
        Some(ClipView {
            url: format!("/v1/clips/{id}"),
            id,
            key: c.key,
            offset_s: c.offset_s,
        })
    });
    InsightView {
        insight: i,
        url,
        clip,
        similarity,
    }
}

/// `clips/<camera>/<day>/<start>-<end>.mp4` -> (camera, start, end).
fn parse_clip_key(key: &str) -> Option<(&str, i64, i64)> {
    let rest = key.strip_prefix("clips/")?;
    let (camera, rest) = rest.split_once('/')?;
    let (_, file) = rest.split_once('/')?;
    let (a, b) = file.strip_suffix(".mp4")?.split_once('-')?;
    Some((camera, a.parse().ok()?, b.parse().ok()?))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "internal",
        message: e.to_string(),
    }
}

fn insight_api(s: &AppState) -> Result<&InsightApi, ApiError> {
    s.insights.as_ref().ok_or(ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "unavailable",
        message: "this process does not serve insights (the infer role is off)".into(),
    })
}

/// Query of `GET /v1/insights`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InsightQuery {
    /// One camera.
    camera: Option<String>,
    /// object, text or speech.
    kind: Option<String>,
    /// Object class, e.g. person.
    label: Option<String>,
    /// Words that must all appear in the insight's text or label.
    q: Option<String>,
    /// RFC 3339: seen at or after.
    from: Option<String>,
    /// RFC 3339: seen before.
    to: Option<String>,
    /// Page size, 1-1000 (default 50).
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Query of `GET /v1/search`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// What to look for, in plain words.
    q: Option<String>,
    /// One camera.
    camera: Option<String>,
    /// object, text or speech.
    kind: Option<String>,
    /// RFC 3339: seen at or after.
    from: Option<String>,
    /// RFC 3339: seen before.
    to: Option<String>,
    /// Results, 1-100 (default 10).
    limit: Option<String>,
}

/// Query of `GET /v1/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only this camera.
    camera: Option<String>,
    /// Only this kind.
    kind: Option<String>,
}

fn parse_limit(v: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    match v {
        None => Ok(default),
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "limit must be a whole number from 1 to {max}"
            ))),
        },
    }
}

fn parse_kind(v: Option<&str>) -> Result<Option<Kind>, ApiError> {
    v.map(|k| {
        Kind::parse(k).ok_or_else(|| {
            ApiError::bad_request(format!("kind: \"{k}\" is not one of object, text, speech"))
        })
    })
    .transpose()
}

fn parse_camera(v: Option<&str>) -> Result<Option<String>, ApiError> {
    match v {
        Some(c)
            if c.is_empty()
                || !c
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') =>
        {
            Err(ApiError::bad_request("camera: not a valid camera id"))
        }
        other => Ok(other.map(str::to_string)),
    }
}

fn filter(
    camera: Option<&str>,
    kind: Option<&str>,
    label: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Filter, ApiError> {
    let from = parse_time("from", from)?;
    let to = parse_time("to", to)?;
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(ApiError::bad_request("from must not be after to"));
    }
    if label.is_some_and(|l| l.is_empty() || l.len() > 100) {
        return Err(ApiError::bad_request("label: 1 to 100 characters"));
    }
    Ok(Filter {
        camera: parse_camera(camera)?,
        kind: parse_kind(kind)?,
        label: label.map(str::to_string),
        from_ms: from.map(|t| t.timestamp_millis()),
        to_ms: to.map(|t| t.timestamp_millis()),
    })
}

/// Page of insights.
#[derive(Serialize, utoipa::ToSchema)]
pub struct InsightPage {
    /// Newest first.
    items: Vec<InsightView>,
    /// Pass as `cursor` for the next page; null at the end.
    next_cursor: Option<String>,
}

/// Filtered insights, newest first.
#[utoipa::path(get, path = "/v1/insights", params(InsightQuery),
    responses((status = 200, body = InsightPage), (status = 400, description = "bad parameter")))]
pub async fn list_insights(
    State(s): State<AppState>,
    query: Result<Query<InsightQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<InsightPage>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let api = insight_api(&s)?;
    let f = filter(
        q.camera.as_deref(),
        q.kind.as_deref(),
        q.label.as_deref(),
        q.from.as_deref(),
        q.to.as_deref(),
    )?;
    let cursor = q
        .cursor
        .as_deref()
        .map(|c| {
            Cursor::decode(c)
                .ok_or_else(|| ApiError::bad_request("cursor: not a cursor from this API"))
        })
        .transpose()?;
    if q.q.as_deref().is_some_and(|t| t.len() > 500) {
        return Err(ApiError::bad_request("q: at most 500 characters"));
    }
    let query = StoreQuery {
        filter: f,
        q: q.q.clone().filter(|t| !t.trim().is_empty()),
        limit: parse_limit(q.limit.as_deref(), 50, 1000)?,
        cursor,
    };
    let store = Arc::clone(&api.store);
    let objects = s.store.clone();
    let page = tokio::task::spawn_blocking(move || {
        store.query(&query).map(|(items, next)| InsightPage {
            items: views(&objects, items.into_iter().map(|i| (i, None)).collect()),
            next_cursor: next.map(|c| c.encode()),
        })
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(Json(page))
}

/// Semantic search results.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SearchResults {
    /// Best first.
    items: Vec<InsightView>,
    /// Always null: search returns one page.
    next_cursor: Option<String>,
}

/// Insights whose text means what the query says, best first, with similarity.
#[utoipa::path(get, path = "/v1/search", params(SearchQuery),
    responses((status = 200, body = SearchResults), (status = 400, description = "bad parameter")))]
pub async fn search(
    State(s): State<AppState>,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SearchResults>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let api = insight_api(&s)?;
    let text = q.q.clone().unwrap_or_default();
    if text.trim().is_empty() || text.len() > 500 {
        return Err(ApiError::bad_request(
            "q: 1 to 500 characters of text to look for",
        ));
    }
    let f = filter(
        q.camera.as_deref(),
        q.kind.as_deref(),
        None,
        q.from.as_deref(),
        q.to.as_deref(),
    )?;
    let limit = parse_limit(q.limit.as_deref(), 10, 100)?;
    let embedder = api.embedder.clone().ok_or(ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "unavailable",
        message: "semantic search needs the text embedding model; run models/install.sh".into(),
    })?;
    let v = embedder.embed(&text).await.map_err(internal)?;
    let store = Arc::clone(&api.store);
    let objects = s.store.clone();
    let items = tokio::task::spawn_blocking(move || -> Result<Vec<InsightView>, String> {
        let hits = store.search(&v, &f, limit).map_err(|e| e.to_string())?;
        Ok(views(
            &objects,
            hits.into_iter().map(|(i, sim)| (i, Some(sim))).collect(),
        ))
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(Json(SearchResults {
        items,
        next_cursor: None,
    }))
}

/// One insight.
#[utoipa::path(get, path = "/v1/insights/{id}", params(("id" = String, Path, description = "insight id")),
    responses((status = 200, body = InsightView), (status = 404, description = "no such insight")))]
pub async fn get_insight(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<InsightView>, ApiError> {
    let api = insight_api(&s)?;
    let insight = find(api, &id).await?;
    let objects = s.store.clone();
    let v = tokio::task::spawn_blocking(move || view(&objects, insight, None))
        .await
        .map_err(internal)?;
    Ok(Json(v))
}

async fn find(api: &InsightApi, id: &str) -> Result<Insight, ApiError> {
    let not_found = || ApiError::not_found(format!("no insight \"{id}\""));
    let uuid = Uuid::parse_str(id).map_err(|_| not_found())?;
    let store = Arc::clone(&api.store);
    tokio::task::spawn_blocking(move || store.get(&uuid))
        .await
        .map_err(internal)?
        .map_err(internal)?
        .ok_or_else(not_found)
}

/// The JPEG an insight was found in.
#[utoipa::path(get, path = "/v1/insights/{id}/snapshot", params(("id" = String, Path, description = "insight id")),
    responses((status = 200, content_type = "image/jpeg", description = "the frame"), (status = 404, description = "no such insight or no snapshot")))]
pub async fn get_insight_snapshot(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let api = insight_api(&s)?;
    let insight = find(api, &id).await?;
    let key = insight
        .snapshot
        .as_deref()
        .ok_or_else(|| ApiError::not_found(format!("insight \"{id}\" has no snapshot")))?;
    let Some(path) = s.store.local_path(key) else {
        return match s.store.presigned_url(key).await {
            Some(url) => Ok(super::redirect(&url)),
            None => Err(ApiError::not_found(format!(
                "insight \"{id}\" has no snapshot"
            ))),
        };
    };
    let bytes = tokio::fs::read(&path).await.map_err(internal)?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg")),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=86400"),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// New insights as server-sent events (`event: insight`, data: the insight as JSON).
#[utoipa::path(get, path = "/v1/events", params(EventsQuery),
    responses((status = 200, content_type = "text/event-stream", description = "one event per stored insight")))]
pub async fn events(
    State(s): State<AppState>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let api = insight_api(&s)?;
    let camera = parse_camera(q.camera.as_deref())?;
    let kind = parse_kind(q.kind.as_deref())?;
    let objects = s.store.clone();
    let stream =
        futures::StreamExt::filter_map(BroadcastStream::new(api.events.subscribe()), move |item| {
            let (objects, camera) = (objects.clone(), camera.clone());
            async move {
                // A listener too slow for the feed skips what it missed rather than stalling
                // others.
                let i = item.ok()?;
                if camera.as_ref().is_some_and(|c| *c != i.camera)
                    || kind.is_some_and(|k| k != i.kind)
                {
                    return None;
                }
                // Linking the clip may ask the object store: off the async threads.
                let v = tokio::task::spawn_blocking(move || view(&objects, i, None))
                    .await
                    .ok()?;
                Some(Ok(Event::default()
                    .event("insight")
                    .json_data(&v)
                    .unwrap_or_else(|_| {
                        Event::default().comment("unserialisable insight")
                    })))
            }
        });
    // Open event streams would hold a graceful shutdown until its time limit.
    let stream = futures::StreamExt::take_until(stream, api.closing.clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::insights::insight_id;

    fn speech(ts_ms: i64, end_ms: i64) -> Insight {
        Insight {
            id: insight_id("lobby", Kind::Speech, ts_ms * 1_000_000, 0),
            camera: "lobby".into(),
            kind: Kind::Speech,
            ts: chrono::DateTime::from_timestamp_millis(ts_ms).unwrap(),
            ts_end: chrono::DateTime::from_timestamp_millis(end_ms),
            label: None,
            text: Some("hello".into()),
            confidence: 0.9,
            bbox: None,
            snapshot: None,
            clip: None,
            model: "test".into(),
        }
    }

    #[test]
    fn an_insight_links_to_the_clip_that_holds_it() {
        let clips = [(1_000, 11_000), (11_000, 21_000)];
        let v = view_with(&clips, speech(12_500, 14_000), None);
        let c = v.clip.unwrap();
        assert_eq!(c.id, "lobby-11000-21000");
        assert_eq!(c.url, "/v1/clips/lobby-11000-21000");
        assert!((c.offset_s - 1.5).abs() < 1e-9);
        // Began 50 ms before recording did: the first clip, from its start.
        let v = view_with(&clips, speech(950, 4_000), None);
        let c = v.clip.unwrap();
        assert_eq!((c.id.as_str(), c.offset_s), ("lobby-1000-11000", 0.0));
        // After the last clip: none yet.
        assert!(
            view_with(&clips, speech(30_000, 31_000), None)
                .clip
                .is_none()
        );
    }
}
