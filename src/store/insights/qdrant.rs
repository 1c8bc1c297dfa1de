//! Insights in a Qdrant server (cluster mode).
//!
//! One point per insight: its id is the insight's UUID, its vector the embedding of the
//! insight's body ([`Insight::body`]), its payload the whole record plus a few derived fields
//! that filters, word search and ordering use:
//!
//! | field | what | index |
//! | --- | --- | --- |
//! | `camera`, `kind`, `label` | as in the record | keyword |
//! | `ts`, `ts_end_ms` | first and last seen, ms since the epoch | `ts`: integer |
//! | `last_ms` | `ts_end_ms` or `ts`: what retention and `from_ms` look at | integer |
//! | `order` | [`order_key`]: newest-first order, stable across pages | integer (range) |
//! | `body` | the words of [`Insight::body`] | full text (word tokenizer, lowercased) |
//! | `body_hash` | FNV-1a of the body: groups points by text | integer |
//! | `has_text` | whether the vector is the body's embedding | bool |
//!
//! A dense collection needs a vector on every point. An insight without a body, or whose
//! body's embedding is unknown, gets a placeholder vector and `has_text = false`, and
//! semantic search never looks at it (as the SQLite store leaves it out of its index).
//!
//! Semantic search ranks distinct texts first and then returns the newest insights carrying
//! each, like the SQLite store: a group query on `body_hash` finds the best texts that pass
//! the filters, and a scroll per text reads its newest insights.
//!
//! Embeddings of bodies already stored are kept in a bounded in-memory cache so that
//! [`QdrantInsights::missing_texts`] does not send known texts back to the embedder; on a
//! miss the cache is filled from a stored point carrying the same body, so a restarted
//! process (or a second one) does not embed them again either.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use qdrant_client::qdrant::vector_output::Vector as VectorOut;
use qdrant_client::qdrant::{
    self, Condition, CountPointsBuilder, CreateCollectionBuilder,
    CreateFieldIndexCollectionBuilder, DeletePointsBuilder, Direction, Distance, FieldType,
    GetPointsBuilder, IntegerIndexParamsBuilder, OrderByBuilder, PayloadIncludeSelector, PointId,
    PointStruct, Query as VectorQuery, QueryPointGroupsBuilder, Range, ScrollPointsBuilder,
    TextIndexParamsBuilder, TokenizerType, UpsertPointsBuilder, Value, group_id, value,
    vectors_config,
};
use qdrant_client::{Payload, Qdrant, QdrantError};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use uuid::Uuid;

use super::record::{
    ClipLink, Cursor, Filter, Insight, InsightError, Kind, Query, from_ms, ms, query_words,
};
use crate::config::InsightsConfig;
use crate::geometry::BBox;

/// Payload fields (see the module docs).
const CAMERA: &str = "camera";
const KIND: &str = "kind";
const LABEL: &str = "label";
const TS: &str = "ts";
const LAST_MS: &str = "last_ms";
const ORDER: &str = "order";
const BODY: &str = "body";
const BODY_HASH: &str = "body_hash";
const HAS_TEXT: &str = "has_text";
const SNAPSHOT: &str = "snapshot";
const CLIP: &str = "clip";

/// Low bits of [`order_key`] taken from the id. Ten keep the key below 2^53 until the year
/// 2248: Qdrant's range conditions compare doubles, so a larger key would lose the last
/// bits and a page could repeat or skip an item.
const ORDER_BITS: u32 = 10;

/// Bodies whose embeddings are kept in memory (a few MB at 384 dimensions).
const TEXT_CACHE: usize = 8192;

/// Bodies looked up in Qdrant at once when they are not in the cache.
const LOOKUPS_IN_FLIGHT: usize = 16;

/// Deadline of one request; a retention delete over many points is the slowest.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The newest-first sort key of an insight: `ts_ms * 1024` plus the first ten bits of its
/// id. Insights of one capture share `ts`; the id bits order them the same way on every
/// page. Two insights of the same millisecond can still share a key (1 in 1024 per pair);
/// [`page_of`] never ends a page between them.
pub fn order_key(ts_ms: i64, id: &Uuid) -> i64 {
    let bits = (id.as_u128() >> (128 - ORDER_BITS)) as i64;
    ts_ms.saturating_mul(1 << ORDER_BITS).saturating_add(bits)
}

/// 64-bit FNV-1a of a body, as stored in `body_hash` (stable across processes and builds).
fn body_hash(body: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

/// The Qdrant filter of a listing or search: `filter`'s fields, every word of `q` in the
/// body (full-text match), and `order < before_order` for the pages after a cursor.
pub fn filter_of(f: &Filter, q: Option<&str>, before_order: Option<i64>) -> qdrant::Filter {
    let mut must = Vec::new();
    if let Some(c) = &f.camera {
        must.push(Condition::matches(CAMERA, c.clone()));
    }
    if let Some(k) = f.kind {
        must.push(Condition::matches(KIND, k.as_str().to_string()));
    }
    if let Some(l) = &f.label {
        must.push(Condition::matches(LABEL, l.clone()));
    }
    // As in SQLite: an insight is in [from, to) when it was still seen at `from` and first
    // seen before `to`. Milliseconds are exact in a double.
    if let Some(t) = f.from_ms {
        must.push(Condition::range(
            LAST_MS,
            Range {
                gte: Some(t as f64),
                ..Default::default()
            },
        ));
    }
    if let Some(t) = f.to_ms {
        must.push(Condition::range(
            TS,
            Range {
                lt: Some(t as f64),
                ..Default::default()
            },
        ));
    }
    for w in q.map(query_words).unwrap_or_default() {
        must.push(Condition::matches_text(BODY, w));
    }
    if let Some(o) = before_order {
        must.push(Condition::range(
            ORDER,
            Range {
                lt: Some(o as f64),
                ..Default::default()
            },
        ));
    }
    qdrant::Filter::must(must)
}

/// The record as stored: [`Insight`] with times in ms, so that they can be filtered.
#[derive(Serialize, Deserialize)]
struct Record {
    id: Uuid,
    camera: String,
    kind: Kind,
    ts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ts_end_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    confidence: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bbox: Option<BBox>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    clip: Option<ClipLink>,
    model: String,
}

/// The payload of an insight's point; `has_text` says whether its vector is the embedding
/// of its body (only such points are searched).
pub fn payload_of(i: &Insight, has_text: bool) -> Payload {
    let record = Record {
        id: i.id,
        camera: i.camera.clone(),
        kind: i.kind,
        ts: ms(&i.ts),
        ts_end_ms: i.ts_end.as_ref().map(ms),
        label: i.label.clone(),
        text: i.text.clone(),
        confidence: i.confidence,
        bbox: i.bbox,
        snapshot: i.snapshot.clone(),
        clip: i.clip.clone(),
        model: i.model.clone(),
    };
    let serde_json::Value::Object(mut map) =
        serde_json::to_value(&record).unwrap_or(serde_json::Value::Null)
    else {
        unreachable!("a struct serializes to an object")
    };
    map.insert(LAST_MS.into(), ms(&i.ts_end.unwrap_or(i.ts)).into());
    map.insert(ORDER.into(), order_key(ms(&i.ts), &i.id).into());
    map.insert(HAS_TEXT.into(), (has_text && i.body().is_some()).into());
    if let Some(b) = i.body() {
        map.insert(BODY.into(), b.into());
        map.insert(BODY_HASH.into(), body_hash(b).into());
    }
    Payload::from(map)
}

/// The insight a point's payload holds.
pub fn insight_of(payload: HashMap<String, Value>) -> Result<Insight, InsightError> {
    let json = serde_json::Value::from(Payload::from(payload));
    let r: Record = serde_json::from_value(json)
        .map_err(|e| InsightError::BadRow(format!("qdrant point payload: {e}")))?;
    Ok(Insight {
        id: r.id,
        camera: r.camera,
        kind: r.kind,
        ts: from_ms(r.ts),
        ts_end: r.ts_end_ms.map(from_ms),
        label: r.label,
        text: r.text,
        confidence: r.confidence,
        bbox: r.bbox,
        snapshot: r.snapshot,
        clip: r.clip,
        model: r.model,
    })
}

/// One page out of `items` (sorted by order key, newest first, at most `limit + 1` of them:
/// the extra one says there is more) and the cursor of the next page.
///
/// The next page starts below the last key returned, so a page never ends between insights
/// sharing a key: the shared ones move to the next page. Only a page made entirely of one
/// key (more than `limit` insights of one millisecond with the same id bits) is cut there.
pub fn page_of(mut items: Vec<(i64, Insight)>, limit: usize) -> (Vec<Insight>, Option<Cursor>) {
    if items.len() <= limit {
        return (items.into_iter().map(|(_, i)| i).collect(), None);
    }
    let boundary = items[limit].0;
    items.truncate(limit);
    if let Some(p) = items.iter().rposition(|(o, _)| *o != boundary) {
        items.truncate(p + 1);
    }
    let next = items.last().map(|(o, i)| Cursor {
        ts_ms: ms(&i.ts),
        seq: *o,
    });
    (items.into_iter().map(|(_, i)| i).collect(), next)
}

/// `url` without user information, for messages.
fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// The `user:password@` part of `url`, if any, as written there.
fn userinfo_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.rfind('@').map(|at| authority[..=at].to_string())
}

/// Embeddings of recent bodies, oldest dropped first.
#[derive(Default)]
struct TextCache {
    vectors: HashMap<String, Vec<f32>>,
    order: VecDeque<String>,
}

impl TextCache {
    fn insert(&mut self, body: &str, v: Vec<f32>) {
        if self.vectors.contains_key(body) {
            return;
        }
        if self.order.len() >= TEXT_CACHE
            && let Some(old) = self.order.pop_front()
        {
            self.vectors.remove(&old);
        }
        self.order.push_back(body.to_string());
        self.vectors.insert(body.to_string(), v);
    }
}

/// The cluster insight store: a Qdrant collection.
pub struct QdrantInsights {
    client: Qdrant,
    /// The server URL as shown in messages (no user information; the API key never is).
    url: String,
    /// User information in the configured URL, removed from the client's messages.
    userinfo: Option<String>,
    collection: String,
    dim: usize,
    texts: Mutex<TextCache>,
}

impl QdrantInsights {
    /// Connects to the server in `config`, creates the collection (`dim`-dimensional
    /// vectors, cosine distance) and its payload indexes where missing, and checks that an
    /// existing collection has vectors of `dim` dimensions.
    pub async fn connect(config: &InsightsConfig, dim: usize) -> Result<Self, InsightError> {
        let url = shown_url(&config.url);
        let collection = config.collection.clone();
        let fail = |what: String| {
            InsightError::Qdrant(format!("qdrant {url}, collection {collection}: {what}"))
        };
        if dim == 0 {
            return Err(fail("the embedding model reports 0 dimensions".into()));
        }
        // No compatibility check: it prints to stdout and blocks on a runtime of its own.
        let mut builder = Qdrant::from_url(&config.url)
            .skip_compatibility_check()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(key) = &config.api_key {
            builder = builder.api_key(key.expose());
        }
        let client = builder.build().map_err(|e| {
            fail(format!(
                "bad URL ({e}); set [insights] url to the gRPC address, e.g. http://127.0.0.1:6334"
            ))
        })?;
        let store = Self {
            client,
            url: url.clone(),
            userinfo: userinfo_of(&config.url),
            collection: collection.clone(),
            dim,
            texts: Mutex::new(TextCache::default()),
        };
        store
            .client
            .health_check()
            .await
            .map_err(|e| store.error("health check", e))?;
        let exists = store
            .client
            .collection_exists(&collection)
            .await
            .map_err(|e| store.error("collection exists", e))?;
        if !exists {
            let created = store
                .client
                .create_collection(CreateCollectionBuilder::new(&collection).vectors_config(
                    qdrant::VectorParamsBuilder::new(dim as u64, Distance::Cosine),
                ))
                .await;
            // Another process may have created it meanwhile: the check below decides.
            if let Err(e) = created {
                tracing::debug!(collection = %collection, error = %e, "create collection");
            }
        }
        let info = store
            .client
            .collection_info(&collection)
            .await
            .map_err(|e| store.error("collection info", e))?
            .result
            .ok_or_else(|| fail("the server returned no collection info".into()))?;
        let params = info
            .config
            .as_ref()
            .and_then(|c| c.params.as_ref())
            .and_then(|p| p.vectors_config.as_ref())
            .and_then(|v| v.config.as_ref());
        match params {
            Some(vectors_config::Config::Params(p)) => {
                if p.size != dim as u64 {
                    return Err(fail(format!(
                        "holds {}-dimensional vectors but the embedding model makes {dim}; \
                         point [insights] collection at a new collection, or delete this one \
                         to re-create it (its insights are lost)",
                        p.size
                    )));
                }
                if p.distance != Distance::Cosine as i32 {
                    return Err(fail(format!(
                        "uses {} distance, panoptes needs Cosine; point [insights] collection \
                         at a new collection",
                        Distance::try_from(p.distance)
                            .map(|d| d.as_str_name())
                            .unwrap_or("an unknown")
                    )));
                }
            }
            _ => {
                return Err(fail(
                    "has named or no vectors, panoptes needs one unnamed vector; point \
                     [insights] collection at a new collection"
                        .into(),
                ));
            }
        }
        for (field, kind) in INDEXES {
            if info.payload_schema.contains_key(*field) {
                continue;
            }
            let mut req =
                CreateFieldIndexCollectionBuilder::new(&collection, *field, kind.field_type())
                    .wait(true);
            req = match kind {
                Index::Keyword | Index::Bool => req,
                Index::Integer { lookup, range } => {
                    req.field_index_params(IntegerIndexParamsBuilder::new(*lookup, *range))
                }
                Index::Text => req.field_index_params(
                    TextIndexParamsBuilder::new(TokenizerType::Word)
                        .lowercase(true)
                        .ascii_folding(true),
                ),
            };
            store
                .client
                .create_field_index(req)
                .await
                .map_err(|e| store.error(&format!("create index on {field}"), e))?;
        }
        Ok(store)
    }

    /// An error of request `what`, with a hint of what to do.
    fn error(&self, what: &str, e: QdrantError) -> InsightError {
        let (detail, hint) = match &e {
            QdrantError::ResponseError { status }
            | QdrantError::ResourceExhaustedError { status, .. } => {
                // gRPC status codes (tonic is not a direct dependency, so by number). The
                // client reports a refused connection as Internal "Failed to connect".
                let unreachable = status.message().starts_with("Failed to connect");
                let hint = match status.code() as i32 {
                    _ if unreachable => {
                        "is the Qdrant server running, and is [insights] url its gRPC port (6334 by default)?"
                    }
                    4 | 14 => {
                        "is the Qdrant server running, and is [insights] url its gRPC port (6334 by default)?"
                    }
                    7 | 16 => "check [insights] api_key",
                    5 => {
                        "the collection may have been deleted; restarting panoptes creates it again"
                    }
                    8 => "the server is overloaded; retry later",
                    _ => "see the Qdrant server log",
                };
                (format!("{:?}: {}", status.code(), status.message()), hint)
            }
            other => (other.to_string(), "see the Qdrant server log"),
        };
        // The client quotes the URL it was given, user information included.
        let detail = match &self.userinfo {
            Some(u) => detail.replace(u.as_str(), ""),
            None => detail,
        };
        InsightError::Qdrant(format!(
            "qdrant {}, collection {}: {what}: {detail}; {hint}",
            self.url, self.collection
        ))
    }

    /// The vector of `body` if known here.
    fn cached(&self, body: &str) -> Option<Vec<f32>> {
        self.texts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .vectors
            .get(body)
            .cloned()
    }

    fn remember(&self, body: &str, v: Vec<f32>) {
        if v.len() == self.dim {
            self.texts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(body, v);
        }
    }

    /// Fills the cache with the stored embeddings of `bodies`, where some point has one.
    async fn look_up(&self, bodies: &[String]) -> Result<(), InsightError> {
        for chunk in bodies.chunks(LOOKUPS_IN_FLIGHT) {
            let found = futures::future::try_join_all(chunk.iter().map(|b| async move {
                let filter = qdrant::Filter::must([
                    Condition::matches(BODY_HASH, body_hash(b)),
                    Condition::matches(HAS_TEXT, true),
                ]);
                let res = self
                    .client
                    .scroll(
                        ScrollPointsBuilder::new(&self.collection)
                            .filter(filter)
                            .limit(1)
                            .with_payload(PayloadIncludeSelector::new(vec![BODY.to_string()]))
                            .with_vectors(true),
                    )
                    .await
                    .map_err(|e| self.error("look up a text", e))?;
                let v = res.result.into_iter().find_map(|p| {
                    let same = matches!(
                        p.payload.get(BODY).and_then(|v| v.kind.as_ref()),
                        Some(value::Kind::StringValue(s)) if s == b
                    );
                    match p.vectors?.get_vector()? {
                        VectorOut::Dense(d) if same => Some(d.data),
                        _ => None,
                    }
                });
                Ok::<_, InsightError>(v.map(|v| (b, v)))
            }))
            .await?;
            for (b, v) in found.into_iter().flatten() {
                self.remember(b, v);
            }
        }
        Ok(())
    }

    /// Texts among `bodies` that have no embedding yet (sorted, each once).
    pub async fn missing_texts(&self, bodies: &[&str]) -> Result<Vec<String>, InsightError> {
        let unknown = |bodies: &mut Vec<String>| {
            let t = self.texts.lock().unwrap_or_else(|p| p.into_inner());
            bodies.retain(|b| !t.vectors.contains_key(b));
        };
        let mut out: Vec<String> = bodies.iter().map(|b| b.to_string()).collect();
        out.sort();
        out.dedup();
        unknown(&mut out);
        if !out.is_empty() {
            self.look_up(&out).await?;
            unknown(&mut out);
        }
        Ok(out)
    }

    /// Stores insights (insert or overwrite by id) with the embeddings of new texts. As in
    /// SQLite, an overwrite keeps the stored snapshot and clip when the new record has none.
    pub async fn upsert(
        &self,
        insights: &[Insight],
        embeddings: &HashMap<String, Vec<f32>>,
    ) -> Result<(), InsightError> {
        if insights.is_empty() {
            return Ok(());
        }
        for (body, v) in embeddings {
            if v.len() == self.dim {
                self.remember(body, v.clone());
            } else {
                tracing::warn!(
                    collection = %self.collection,
                    dimensions = v.len(),
                    expected = self.dim,
                    "embedding of the wrong size ignored; its insights are not searchable"
                );
            }
        }
        let unknown: Vec<String> = insights
            .iter()
            .filter_map(Insight::body)
            .filter(|b| self.cached(b).is_none())
            .map(str::to_string)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !unknown.is_empty() {
            self.look_up(&unknown).await?;
        }
        let kept = self.stored_links(insights).await?;
        let mut placeholder = vec![0.0; self.dim];
        placeholder[0] = 1.0;
        let points: Vec<PointStruct> = insights
            .iter()
            .map(|i| {
                let mut i = i.clone();
                if let Some((snapshot, clip)) = kept.get(&i.id) {
                    i.snapshot = i.snapshot.or_else(|| snapshot.clone());
                    i.clip = i.clip.or_else(|| clip.clone());
                }
                let vector = i.body().and_then(|b| self.cached(b));
                let has_text = vector.is_some();
                let payload = payload_of(&i, has_text);
                PointStruct::new(i.id, vector.unwrap_or_else(|| placeholder.clone()), payload)
            })
            .collect();
        self.client
            .upsert_points(UpsertPointsBuilder::new(&self.collection, points).wait(true))
            .await
            .map_err(|e| self.error("upsert", e))?;
        Ok(())
    }

    /// The stored snapshot and clip of those of `insights` that lack one.
    async fn stored_links(
        &self,
        insights: &[Insight],
    ) -> Result<HashMap<Uuid, (Option<String>, Option<ClipLink>)>, InsightError> {
        let ids: Vec<PointId> = insights
            .iter()
            .filter(|i| i.snapshot.is_none() || i.clip.is_none())
            .map(|i| i.id.into())
            .collect();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let res = self
            .client
            .get_points(GetPointsBuilder::new(&self.collection, ids).with_payload(
                PayloadIncludeSelector::new(vec![
                    "id".to_string(),
                    SNAPSHOT.to_string(),
                    CLIP.to_string(),
                ]),
            ))
            .await
            .map_err(|e| self.error("read stored insights", e))?;
        let mut out = HashMap::new();
        for p in res.result {
            let json = serde_json::Value::from(Payload::from(p.payload));
            let Some(id) = json
                .get("id")
                .and_then(|v| v.as_str())
                .and_then(|s| Uuid::parse_str(s).ok())
            else {
                continue;
            };
            let snapshot = json
                .get(SNAPSHOT)
                .and_then(|v| v.as_str())
                .map(str::to_string);
            let clip = json
                .get(CLIP)
                .and_then(|v| serde_json::from_value::<ClipLink>(v.clone()).ok());
            out.insert(id, (snapshot, clip));
        }
        Ok(out)
    }

    /// Reads up to `limit` insights matching `filter`, newest first, with their order keys.
    async fn scroll(
        &self,
        filter: qdrant::Filter,
        limit: usize,
    ) -> Result<Vec<(i64, Insight)>, InsightError> {
        let res = self
            .client
            .scroll(
                ScrollPointsBuilder::new(&self.collection)
                    .filter(filter)
                    .order_by(OrderByBuilder::new(ORDER).direction(Direction::Desc as i32))
                    .limit(limit.min(u32::MAX as usize) as u32)
                    .with_payload(true),
            )
            .await
            .map_err(|e| self.error("scroll", e))?;
        res.result
            .into_iter()
            .map(|p| {
                let i = insight_of(p.payload)?;
                Ok((order_key(ms(&i.ts), &i.id), i))
            })
            .collect()
    }

    /// Newest first, filtered, one page; the cursor of the next page if there is one.
    pub async fn query(&self, q: &Query) -> Result<(Vec<Insight>, Option<Cursor>), InsightError> {
        if q.q.as_deref().is_some_and(|t| query_words(t).is_empty()) {
            return Ok((Vec::new(), None));
        }
        let filter = filter_of(&q.filter, q.q.as_deref(), q.cursor.map(|c| c.seq));
        let items = self.scroll(filter, q.limit.saturating_add(1)).await?;
        Ok(page_of(items, q.limit))
    }

    /// Insights whose text is nearest in meaning to `vector`, best text first and the newest
    /// insights of each text first, with the cosine similarity.
    pub async fn search(
        &self,
        vector: &[f32],
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<(Insight, f32)>, InsightError> {
        if limit == 0 || vector.len() != self.dim {
            return Ok(Vec::new());
        }
        let mut base = filter_of(filter, None, None);
        base.must.push(Condition::matches(HAS_TEXT, true));
        // Every group has at least one insight passing the filter, so `limit` texts fill a page.
        let groups = self
            .client
            .query_groups(
                QueryPointGroupsBuilder::new(&self.collection, BODY_HASH)
                    .query(VectorQuery::new_nearest(vector.to_vec()))
                    .filter(base.clone())
                    .limit(limit as u64)
                    .group_size(1u64)
                    .with_payload(false),
            )
            .await
            .map_err(|e| self.error("search", e))?
            .result
            .map(|r| r.groups)
            .unwrap_or_default();
        let mut out = Vec::new();
        for g in groups {
            if out.len() >= limit {
                break;
            }
            let hash = match g.id.and_then(|id| id.kind) {
                Some(group_id::Kind::IntegerValue(h)) => h,
                Some(group_id::Kind::UnsignedValue(h)) => h as i64,
                _ => continue,
            };
            let similarity = g.hits.first().map_or(0.0, |h| h.score);
            let mut f = base.clone();
            f.must.push(Condition::matches(BODY_HASH, hash));
            for (_, i) in self.scroll(f, limit - out.len()).await? {
                out.push((i, similarity));
            }
        }
        Ok(out)
    }

    /// One insight by id.
    pub async fn get(&self, id: &Uuid) -> Result<Option<Insight>, InsightError> {
        let res = self
            .client
            .get_points(
                GetPointsBuilder::new(&self.collection, vec![PointId::from(*id)])
                    .with_payload(true),
            )
            .await
            .map_err(|e| self.error("get", e))?;
        res.result
            .into_iter()
            .next()
            .map(|p| insight_of(p.payload))
            .transpose()
    }

    async fn count_where(&self, filter: Option<qdrant::Filter>) -> Result<u64, InsightError> {
        let mut req = CountPointsBuilder::new(&self.collection).exact(true);
        if let Some(f) = filter {
            req = req.filter(f);
        }
        let res = self
            .client
            .count(req)
            .await
            .map_err(|e| self.error("count", e))?;
        Ok(res.result.map_or(0, |r| r.count))
    }

    /// How many insights are stored (exact count).
    pub async fn count(&self) -> Result<u64, InsightError> {
        self.count_where(None).await
    }

    /// Deletes insights last seen before `cutoff_ms`; how many went (counted just before).
    pub async fn delete_before(&self, cutoff_ms: i64) -> Result<usize, InsightError> {
        let old = qdrant::Filter::must([Condition::range(
            LAST_MS,
            Range {
                lt: Some(cutoff_ms as f64),
                ..Default::default()
            },
        )]);
        let n = self.count_where(Some(old.clone())).await?;
        if n == 0 {
            return Ok(0);
        }
        self.client
            .delete_points(
                DeletePointsBuilder::new(&self.collection)
                    .points(old)
                    .wait(true),
            )
            .await
            .map_err(|e| self.error("delete old insights", e))?;
        Ok(n as usize)
    }

    /// Deletes the whole collection and every insight in it (tests clean up with it).
    pub async fn drop_collection(&self) -> Result<(), InsightError> {
        self.client
            .delete_collection(&self.collection)
            .await
            .map_err(|e| self.error("delete collection", e))?;
        Ok(())
    }
}

/// Payload indexes the collection needs.
#[derive(Clone, Copy)]
enum Index {
    Keyword,
    Bool,
    Integer { lookup: bool, range: bool },
    Text,
}

impl Index {
    fn field_type(self) -> FieldType {
        match self {
            Index::Keyword => FieldType::Keyword,
            Index::Bool => FieldType::Bool,
            Index::Integer { .. } => FieldType::Integer,
            Index::Text => FieldType::Text,
        }
    }
}

const INDEXES: &[(&str, Index)] = &[
    (CAMERA, Index::Keyword),
    (KIND, Index::Keyword),
    (LABEL, Index::Keyword),
    (
        TS,
        Index::Integer {
            lookup: true,
            range: true,
        },
    ),
    (
        LAST_MS,
        Index::Integer {
            lookup: false,
            range: true,
        },
    ),
    (
        ORDER,
        Index::Integer {
            lookup: false,
            range: true,
        },
    ),
    (
        BODY_HASH,
        Index::Integer {
            lookup: true,
            range: false,
        },
    ),
    (HAS_TEXT, Index::Bool),
    (BODY, Index::Text),
];

/// [`QdrantInsights`] behind the store's blocking API: each call runs on the runtime whose
/// handle was captured at construction, with [`Handle::block_on`].
///
/// Call these methods only from threads outside the runtime (`spawn_blocking`, a plain
/// thread), as every caller of [`crate::store::insights::InsightStore`] does: `block_on`
/// panics on a runtime worker thread. The runtime must be multi-threaded (or be driven by a
/// `Runtime::block_on` elsewhere) so that its I/O driver runs while a call waits.
pub struct QdrantSync {
    store: QdrantInsights,
    runtime: Handle,
}

impl QdrantSync {
    /// Wraps a connected store; `runtime` runs its requests.
    pub fn new(store: QdrantInsights, runtime: Handle) -> Self {
        Self { store, runtime }
    }

    /// The async store, for callers already on the runtime.
    pub fn store(&self) -> &QdrantInsights {
        &self.store
    }

    fn block<F: Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// See [`QdrantInsights::missing_texts`].
    pub fn missing_texts(&self, bodies: &[&str]) -> Result<Vec<String>, InsightError> {
        self.block(self.store.missing_texts(bodies))
    }

    /// See [`QdrantInsights::upsert`].
    pub fn upsert(
        &self,
        insights: &[Insight],
        embeddings: &HashMap<String, Vec<f32>>,
    ) -> Result<(), InsightError> {
        self.block(self.store.upsert(insights, embeddings))
    }

    /// See [`QdrantInsights::query`].
    pub fn query(&self, q: &Query) -> Result<(Vec<Insight>, Option<Cursor>), InsightError> {
        self.block(self.store.query(q))
    }

    /// See [`QdrantInsights::search`].
    pub fn search(
        &self,
        vector: &[f32],
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<(Insight, f32)>, InsightError> {
        self.block(self.store.search(vector, filter, limit))
    }

    /// See [`QdrantInsights::get`].
    pub fn get(&self, id: &Uuid) -> Result<Option<Insight>, InsightError> {
        self.block(self.store.get(id))
    }

    /// See [`QdrantInsights::count`].
    pub fn count(&self) -> Result<u64, InsightError> {
        self.block(self.store.count())
    }

    /// See [`QdrantInsights::delete_before`].
    pub fn delete_before(&self, cutoff_ms: i64) -> Result<usize, InsightError> {
        self.block(self.store.delete_before(cutoff_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qdrant::condition::ConditionOneOf;
    use qdrant::r#match::MatchValue;

    fn full() -> Insight {
        Insight {
            id: Uuid::from_u128(0xdead_beef_0000_4000_8000_0000_0000_0001),
            camera: "dock".into(),
            kind: Kind::Text,
            ts: from_ms(1_700_000_000_123),
            ts_end: Some(from_ms(1_700_000_009_456)),
            label: Some("sign".into()),
            text: Some("LOADING DOCK 7".into()),
            confidence: 0.87,
            bbox: Some(BBox {
                x: 0.125,
                y: 0.0,
                w: 0.5,
                h: 0.3,
            }),
            snapshot: Some("snapshots/dock/2023-11-14/1700000000123.jpg".into()),
            clip: Some(ClipLink {
                key: "clips/dock/2023-11-14/1700000000000-1700000010000.mp4".into(),
                offset_s: 0.123,
            }),
            model: "paddleocr".into(),
        }
    }

    /// The payload as the server would hand it back.
    fn stored(p: Payload) -> HashMap<String, Value> {
        p.into()
    }

    fn field(c: &Condition) -> &qdrant::FieldCondition {
        match &c.condition_one_of {
            Some(ConditionOneOf::Field(f)) => f,
            other => panic!("not a field condition: {other:?}"),
        }
    }

    fn keyword(c: &Condition) -> (&str, &str) {
        let f = field(c);
        match f.r#match.as_ref().and_then(|m| m.match_value.as_ref()) {
            Some(MatchValue::Keyword(k)) => (f.key.as_str(), k.as_str()),
            other => panic!("{}: not a keyword match: {other:?}", f.key),
        }
    }

    #[test]
    fn payload_round_trips_with_every_field() {
        let i = full();
        let p = payload_of(&i, true);
        let json = serde_json::Value::from(p.clone());
        assert_eq!(json["ts"], 1_700_000_000_123_i64);
        assert_eq!(json["ts_end_ms"], 1_700_000_009_456_i64);
        assert_eq!(json["last_ms"], 1_700_000_009_456_i64);
        assert_eq!(json["body"], "LOADING DOCK 7");
        assert_eq!(json["body_hash"], body_hash("LOADING DOCK 7"));
        assert_eq!(json["has_text"], true);
        assert_eq!(json["order"], order_key(1_700_000_000_123, &i.id));
        assert_eq!(json["kind"], "text");
        assert_eq!(insight_of(stored(p)).unwrap(), i);
    }

    #[test]
    fn payload_round_trips_without_optional_fields() {
        let i = Insight {
            ts_end: None,
            label: None,
            text: None,
            bbox: None,
            snapshot: None,
            clip: None,
            kind: Kind::Object,
            ..full()
        };
        let p = payload_of(&i, true);
        let json = serde_json::Value::from(p.clone());
        assert_eq!(json["last_ms"], 1_700_000_000_123_i64);
        // No body: nothing to search, whatever the caller says.
        assert_eq!(json["has_text"], false);
        for absent in [
            "ts_end_ms",
            "label",
            "text",
            "bbox",
            "snapshot",
            "clip",
            "body",
        ] {
            assert!(json.get(absent).is_none(), "{absent} is stored");
        }
        assert_eq!(insight_of(stored(p)).unwrap(), i);
    }

    #[test]
    fn a_payload_that_is_not_an_insight_is_an_error() {
        let mut p = stored(payload_of(&full(), true));
        p.remove("camera");
        let e = insight_of(p).unwrap_err().to_string();
        assert!(e.contains("camera"), "{e}");
    }

    #[test]
    fn order_keys_follow_time_then_id_and_stay_exact_in_a_double() {
        let a = Uuid::from_u128(u128::MAX);
        let b = Uuid::from_u128(0);
        assert!(order_key(1000, &a) < order_key(1001, &b));
        assert!(order_key(1000, &b) < order_key(1000, &a));
        assert_eq!(order_key(1000, &b), 1000 * 1024);
        assert_eq!(order_key(1000, &a), 1000 * 1024 + 1023);
        // 2200-01-01: still below 2^53, so range conditions on it are exact.
        let far = order_key(7_258_118_400_000, &a);
        assert!(far < 1 << 53);
        assert_eq!(far as f64 as i64, far);
    }

    #[test]
    fn filters_become_conditions() {
        let f = Filter {
            camera: Some("dock".into()),
            kind: Some(Kind::Speech),
            label: Some("truck".into()),
            from_ms: Some(1000),
            to_ms: Some(2000),
        };
        let built = filter_of(&f, Some("Truck, arrived!"), Some(4096));
        assert!(built.should.is_empty() && built.must_not.is_empty());
        let m = &built.must;
        assert_eq!(m.len(), 8);
        assert_eq!(keyword(&m[0]), ("camera", "dock"));
        assert_eq!(keyword(&m[1]), ("kind", "speech"));
        assert_eq!(keyword(&m[2]), ("label", "truck"));
        let from = field(&m[3]);
        assert_eq!(from.key, "last_ms");
        assert_eq!(
            from.range,
            Some(Range {
                gte: Some(1000.0),
                ..Default::default()
            })
        );
        let to = field(&m[4]);
        assert_eq!(to.key, "ts");
        assert_eq!(
            to.range,
            Some(Range {
                lt: Some(2000.0),
                ..Default::default()
            })
        );
        let words: Vec<(&str, &str)> = m[5..7]
            .iter()
            .map(|c| {
                let f = field(c);
                match f.r#match.as_ref().and_then(|m| m.match_value.as_ref()) {
                    Some(MatchValue::Text(t)) => (f.key.as_str(), t.as_str()),
                    other => panic!("not a text match: {other:?}"),
                }
            })
            .collect();
        assert_eq!(words, vec![("body", "Truck"), ("body", "arrived")]);
        let before = field(&m[7]);
        assert_eq!(before.key, "order");
        assert_eq!(
            before.range,
            Some(Range {
                lt: Some(4096.0),
                ..Default::default()
            })
        );
        assert!(filter_of(&Filter::default(), None, None).must.is_empty());
    }

    fn at(ts_ms: i64, id: u128) -> (i64, Insight) {
        let i = Insight {
            id: Uuid::from_u128(id),
            ts: from_ms(ts_ms),
            ..full()
        };
        (order_key(ts_ms, &i.id), i)
    }

    #[test]
    fn pages_end_with_a_cursor_and_never_between_equal_keys() {
        let (page, next) = page_of(vec![at(3, 0), at(2, 0), at(1, 0)], 2);
        assert_eq!(page.len(), 2);
        assert_eq!(
            next,
            Some(Cursor {
                ts_ms: 2,
                seq: order_key(2, &Uuid::from_u128(0))
            })
        );
        let (page, next) = page_of(vec![at(3, 0), at(2, 0)], 2);
        assert_eq!(page.len(), 2);
        assert_eq!(next, None);
        // Two insights share a key across the page end: both go to the next page.
        let (page, next) = page_of(vec![at(3, 0), at(2, 1), at(2, 2), at(1, 0)], 2);
        assert_eq!(page.len(), 1);
        assert_eq!(next.unwrap().seq, order_key(3, &Uuid::from_u128(0)));
    }

    #[test]
    fn hashes_are_stable() {
        // FNV-1a test vectors.
        assert_eq!(body_hash(""), 0xcbf2_9ce4_8422_2325_u64 as i64);
        assert_eq!(body_hash("a"), 0xaf63_dc4c_8601_ec8c_u64 as i64);
        assert_ne!(body_hash("truck"), body_hash("trucks"));
    }

    #[test]
    fn urls_in_messages_carry_no_credentials() {
        assert_eq!(
            shown_url("http://user:pw@qdrant:6334"),
            "http://qdrant:6334/"
        );
        assert_eq!(shown_url("http://qdrant:6334"), "http://qdrant:6334");
        assert_eq!(
            userinfo_of("http://user:pw@qdrant:6334/x@y").as_deref(),
            Some("user:pw@")
        );
        assert_eq!(userinfo_of("http://qdrant:6334/x@y"), None);
    }

    #[test]
    fn the_text_cache_drops_the_oldest() {
        let mut c = TextCache::default();
        for n in 0..TEXT_CACHE + 1 {
            c.insert(&n.to_string(), vec![1.0]);
        }
        assert_eq!(c.vectors.len(), TEXT_CACHE);
        assert!(!c.vectors.contains_key("0"));
        assert!(c.vectors.contains_key(&TEXT_CACHE.to_string()));
    }
}
