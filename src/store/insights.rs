//! The insight store: what the models found, searchable by filters, by words and by meaning.
//!
//! [`InsightStore::Sqlite`] is the embedded default: SQLite (WAL, one writer, a few readers)
//! is the store of record, FTS5 answers `q=` word search, and semantic search ranks the
//! distinct texts of insights (labels, OCR text, transcripts) by their embeddings, held in
//! memory and scanned exactly, then returns the newest insights carrying the best texts.
//! Insights repeat the same few texts ("person", a sign read every sample), so the index
//! holds far fewer vectors than there are insights. Writes are upserts by id: redelivered
//! work overwrites instead of duplicating. Another process may write the same database file
//! (cluster mode: `infer` writes, `api` reads): the texts it adds are picked up before each
//! search.
//!
//! [`InsightStore::Qdrant`] keeps the same records in a Qdrant server ([`super::qdrant`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::InsightsConfig;
use crate::infer::BBox;
use crate::store::qdrant::{QdrantInsights, QdrantSync};

/// Insight store failures.
#[derive(Debug, thiserror::Error)]
pub enum InsightError {
    /// SQLite failed.
    #[error("insight store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row could not be read back.
    #[error("insight store: bad row: {0}")]
    BadRow(String),
    /// The Qdrant server failed or refused; the message names the server and what to do.
    #[error("insight store: {0}")]
    Qdrant(String),
}

/// What kind of finding an insight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An object the detector found.
    Object,
    /// Text read in the picture.
    Text,
    /// Words heard.
    Speech,
}

impl Kind {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Object => "object",
            Kind::Text => "text",
            Kind::Speech => "speech",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Option<Kind> {
        [Kind::Object, Kind::Text, Kind::Speech]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// The clip an insight is in, and where in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClipLink {
    /// Object key of the clip.
    pub key: String,
    /// Seconds from the start of the clip.
    pub offset_s: f64,
}

/// One insight (DESIGN.md's insight record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Insight {
    /// UUIDv5 of camera, kind, capture time and index.
    pub id: Uuid,
    /// Camera id.
    pub camera: String,
    /// object, text or speech.
    pub kind: Kind,
    /// When it was first seen (capture time).
    pub ts: DateTime<Utc>,
    /// When it was last seen, for findings that lasted (a parked car, a sign, a sentence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_end: Option<DateTime<Utc>>,
    /// Object class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Text read or heard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// 0..1.
    pub confidence: f32,
    /// Where in the picture, normalised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub bbox: Option<BBox>,
    /// Object key of the JPEG it was found in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// The clip it is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<ClipLink>,
    /// The model that found it.
    pub model: String,
}

impl Insight {
    /// The words search sees: the label of an object, the text of text and speech.
    pub fn body(&self) -> Option<&str> {
        match self.kind {
            Kind::Object => self.label.as_deref(),
            Kind::Text | Kind::Speech => self.text.as_deref(),
        }
        .filter(|s| !s.trim().is_empty())
    }
}

/// Namespace of insight ids.
const NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a4e_9b3d_4c55_8e7f_0a1b_2c3d_4e5f);

/// The id of the `index`-th insight of `kind` found in the capture at `capture_ns` of
/// `camera`: the same work done twice gives the same id.
pub fn insight_id(camera: &str, kind: Kind, capture_ns: i64, index: usize) -> Uuid {
    Uuid::new_v5(
        &NAMESPACE,
        format!("{camera}/{}/{capture_ns}/{index}", kind.as_str()).as_bytes(),
    )
}

/// Filters shared by listing and semantic search.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// One camera.
    pub camera: Option<String>,
    /// One kind.
    pub kind: Option<Kind>,
    /// One object class.
    pub label: Option<String>,
    /// Seen at or after (ms since the epoch).
    pub from_ms: Option<i64>,
    /// Seen before (ms since the epoch).
    pub to_ms: Option<i64>,
}

/// Where a page of results ends: the last item's time and sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// ts of the last item, ms.
    pub ts_ms: i64,
    /// Its row sequence number.
    pub seq: i64,
}

impl Cursor {
    /// Opaque text form for the API.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.ts_ms, self.seq)
    }

    /// Parses [`Cursor::encode`]'s output.
    pub fn decode(s: &str) -> Option<Cursor> {
        let (a, b) = s.split_once('.')?;
        Some(Cursor {
            ts_ms: a.parse().ok()?,
            seq: b.parse().ok()?,
        })
    }
}

/// A listing request.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Filters.
    pub filter: Filter,
    /// Words that must all appear (full-text).
    pub q: Option<String>,
    /// Largest page.
    pub limit: usize,
    /// Continue after this item.
    pub cursor: Option<Cursor>,
}

/// The configured insight store, one variant per backend.
///
/// The methods block: call them from `spawn_blocking` (or another thread outside the tokio
/// runtime), never from a runtime worker thread. The Qdrant variant runs its requests on the
/// runtime it was created on and panics if called on one of its worker threads.
pub enum InsightStore {
    /// SQLite + FTS5 + an exact in-memory vector scan, under `data_dir`.
    Sqlite(SqliteInsights),
    /// A Qdrant collection (cluster mode).
    Qdrant(QdrantSync),
}

impl InsightStore {
    /// Opens (or creates) the embedded store at `path`.
    pub fn sqlite(path: &Path) -> Result<Self, InsightError> {
        Ok(InsightStore::Sqlite(SqliteInsights::open(path)?))
    }

    /// Connects to the Qdrant server of `config` and prepares its collection for
    /// `dim`-dimensional embeddings; later calls run on the current tokio runtime.
    pub async fn qdrant(config: &InsightsConfig, dim: usize) -> Result<Self, InsightError> {
        let store = QdrantInsights::connect(config, dim).await?;
        Ok(InsightStore::Qdrant(QdrantSync::new(
            store,
            tokio::runtime::Handle::current(),
        )))
    }

    /// Texts among `bodies` that have no embedding yet.
    pub fn missing_texts(&self, bodies: &[&str]) -> Result<Vec<String>, InsightError> {
        match self {
            InsightStore::Sqlite(s) => s.missing_texts(bodies),
            InsightStore::Qdrant(s) => s.missing_texts(bodies),
        }
    }

    /// Stores insights (insert or overwrite by id) with the embeddings of new texts.
    pub fn upsert(
        &self,
        insights: &[Insight],
        embeddings: &HashMap<String, Vec<f32>>,
    ) -> Result<(), InsightError> {
        match self {
            InsightStore::Sqlite(s) => s.upsert(insights, embeddings),
            InsightStore::Qdrant(s) => s.upsert(insights, embeddings),
        }
    }

    /// Newest first, filtered, one page; the cursor of the next page if there is one.
    pub fn query(&self, q: &Query) -> Result<(Vec<Insight>, Option<Cursor>), InsightError> {
        match self {
            InsightStore::Sqlite(s) => s.query(q),
            InsightStore::Qdrant(s) => s.query(q),
        }
    }

    /// Insights whose text is nearest in meaning to `vector`, best first, with similarity.
    pub fn search(
        &self,
        vector: &[f32],
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<(Insight, f32)>, InsightError> {
        match self {
            InsightStore::Sqlite(s) => s.search(vector, filter, limit),
            InsightStore::Qdrant(s) => s.search(vector, filter, limit),
        }
    }

    /// One insight by id.
    pub fn get(&self, id: &Uuid) -> Result<Option<Insight>, InsightError> {
        match self {
            InsightStore::Sqlite(s) => s.get(id),
            InsightStore::Qdrant(s) => s.get(id),
        }
    }

    /// How many insights are stored.
    pub fn count(&self) -> Result<u64, InsightError> {
        match self {
            InsightStore::Sqlite(s) => s.count(),
            InsightStore::Qdrant(s) => s.count(),
        }
    }

    /// Deletes insights last seen before `cutoff_ms`; how many went.
    pub fn delete_before(&self, cutoff_ms: i64) -> Result<usize, InsightError> {
        match self {
            InsightStore::Sqlite(s) => s.delete_before(cutoff_ms),
            InsightStore::Qdrant(s) => s.delete_before(cutoff_ms),
        }
    }
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS insights (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    camera TEXT NOT NULL,
    kind TEXT NOT NULL,
    ts INTEGER NOT NULL,
    ts_end INTEGER,
    label TEXT,
    text TEXT,
    confidence REAL NOT NULL,
    bbox TEXT,
    snapshot TEXT,
    clip TEXT,
    model TEXT NOT NULL,
    text_id INTEGER
);
CREATE INDEX IF NOT EXISTS insights_ts ON insights (ts DESC, seq DESC);
CREATE INDEX IF NOT EXISTS insights_camera ON insights (camera, ts DESC, seq DESC);
CREATE INDEX IF NOT EXISTS insights_kind ON insights (kind, ts DESC, seq DESC);
CREATE INDEX IF NOT EXISTS insights_label ON insights (label, ts DESC, seq DESC, ts_end);
CREATE INDEX IF NOT EXISTS insights_text ON insights (text_id, ts DESC, seq DESC);
CREATE INDEX IF NOT EXISTS insights_camera_kind ON insights (camera, kind, ts DESC, seq DESC);
CREATE INDEX IF NOT EXISTS insights_camera_text ON insights (camera, text_id, ts DESC, seq DESC);
CREATE INDEX IF NOT EXISTS insights_kind_text ON insights (kind, text_id, ts DESC, seq DESC);
CREATE VIRTUAL TABLE IF NOT EXISTS insights_fts USING fts5 (body, tokenize = 'unicode61');
CREATE TABLE IF NOT EXISTS texts (
    id INTEGER PRIMARY KEY,
    body TEXT NOT NULL UNIQUE,
    embedding BLOB NOT NULL
);
";

const COLUMNS: &str =
    "seq, id, camera, kind, ts, ts_end, label, text, confidence, bbox, snapshot, clip, model";

/// Readers kept open; WAL lets them read while the writer writes.
const READERS: usize = 4;

/// Distinct texts, best first, whose insights a semantic search looks through for ones that
/// pass its filters (each look is an index probe).
const SEARCH_TEXTS: usize = 1024;

/// The embedded store.
pub struct SqliteInsights {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    vectors: RwLock<Vectors>,
}

/// Every distinct text's embedding, row by row.
#[derive(Default)]
struct Vectors {
    ids: Vec<i64>,
    by_body: HashMap<String, i64>,
    data: Vec<f32>,
    dim: usize,
    /// Rows of `texts` up to this id have been read from the database. Only
    /// [`SqliteInsights::refresh_vectors`] moves it: texts this process adds are pushed as
    /// they are written, but a lower id committed by another process may not be loaded yet.
    loaded_upto: i64,
}

impl Vectors {
    fn push(&mut self, id: i64, body: String, v: &[f32]) {
        if self.dim == 0 {
            self.dim = v.len();
        }
        if v.len() != self.dim || self.by_body.contains_key(&body) {
            return;
        }
        self.ids.push(id);
        self.by_body.insert(body, id);
        self.data.extend_from_slice(v);
    }

    /// The `k` text ids most similar to `q` (dot product of unit vectors), best first.
    fn top(&self, q: &[f32], k: usize) -> Vec<(i64, f32)> {
        if self.dim == 0 || q.len() != self.dim {
            return Vec::new();
        }
        let mut scored: Vec<(i64, f32)> = self
            .data
            .chunks_exact(self.dim)
            .zip(&self.ids)
            .map(|(v, &id)| (id, v.iter().zip(q).map(|(a, b)| a * b).sum()))
            .collect();
        let k = k.min(scored.len());
        if k == 0 {
            return Vec::new();
        }
        scored.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
        scored.truncate(k);
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored
    }
}

fn ms(t: &DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(v).unwrap_or_default()
}

/// The words of a `q=` search: runs of letters and digits; anything else separates them.
pub(crate) fn query_words(q: &str) -> Vec<&str> {
    q.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect()
}

/// FTS5 query from user words: each word quoted (no operators), all required.
fn fts_query(q: &str) -> Option<String> {
    let words: Vec<String> = query_words(q)
        .into_iter()
        .map(|w| format!("\"{w}\""))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

impl SqliteInsights {
    /// Opens or creates the database file and loads the text embeddings.
    pub fn open(path: &Path) -> Result<Self, InsightError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let writer = Connection::open(path)?;
        writer.busy_timeout(std::time::Duration::from_secs(5))?;
        writer.execute_batch(SCHEMA)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = Connection::open(path)?;
            r.busy_timeout(std::time::Duration::from_secs(5))?;
            readers.push(Mutex::new(r));
        }
        let store = Self {
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
            vectors: RwLock::new(Vectors::default()),
        };
        store.refresh_vectors()?;
        Ok(store)
    }

    /// Loads the texts added since the last load, by this process or another one writing
    /// the same file. Texts are never deleted and ids grow with each commit, so one
    /// primary-key range read finds them all. It is one index seek that usually returns
    /// nothing, so it runs before every search rather than on a timer.
    fn refresh_vectors(&self) -> Result<(), InsightError> {
        let upto = self
            .vectors
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .loaded_upto;
        let rows: Vec<(i64, String, Vec<u8>)> = {
            let conn = self.reader();
            let mut stmt = conn.prepare_cached(
                "SELECT id, body, embedding FROM texts WHERE id > ?1 ORDER BY id",
            )?;
            stmt.query_map([upto], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?
        };
        if rows.is_empty() {
            return Ok(());
        }
        let mut v = self.vectors.write().unwrap_or_else(|p| p.into_inner());
        for (id, body, blob) in rows {
            // A concurrent refresh may have loaded these already.
            if id > v.loaded_upto {
                v.push(id, body, &from_blob(&blob));
                v.loaded_upto = id;
            }
        }
        Ok(())
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.readers.len() {
            if let Ok(c) = self.readers[(start + i) % self.readers.len()].try_lock() {
                return c;
            }
        }
        self.readers[start % self.readers.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn missing_texts(&self, bodies: &[&str]) -> Result<Vec<String>, InsightError> {
        self.refresh_vectors()?;
        let v = self.vectors.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<String> = bodies
            .iter()
            .filter(|b| !v.by_body.contains_key(**b))
            .map(|b| b.to_string())
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn upsert(
        &self,
        insights: &[Insight],
        embeddings: &HashMap<String, Vec<f32>>,
    ) -> Result<(), InsightError> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        let mut new_vectors = Vec::new();
        {
            let mut text_id = tx.prepare_cached("SELECT id FROM texts WHERE body = ?1")?;
            let mut add_text =
                tx.prepare_cached("INSERT INTO texts (body, embedding) VALUES (?1, ?2)")?;
            let mut upsert = tx.prepare_cached(
                "INSERT INTO insights (seq, id, camera, kind, ts, ts_end, label, text, confidence, bbox, snapshot, clip, model, text_id)
                 VALUES ((SELECT coalesce(max(seq) + 1, ?4 * 1024) FROM insights WHERE seq BETWEEN ?4 * 1024 AND ?4 * 1024 + 1023),
                         ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                 ON CONFLICT (id) DO UPDATE SET
                   ts_end = excluded.ts_end, label = excluded.label, text = excluded.text,
                   confidence = excluded.confidence, bbox = excluded.bbox,
                   snapshot = coalesce(excluded.snapshot, insights.snapshot),
                   clip = coalesce(excluded.clip, insights.clip), model = excluded.model,
                   text_id = excluded.text_id
                 RETURNING seq",
            )?;
            let mut fts_del = tx.prepare_cached("DELETE FROM insights_fts WHERE rowid = ?1")?;
            let mut fts_add =
                tx.prepare_cached("INSERT INTO insights_fts (rowid, body) VALUES (?1, ?2)")?;
            for i in insights {
                let body = i.body();
                let tid: Option<i64> = match body {
                    None => None,
                    Some(b) => match text_id.query_row([b], |r| r.get(0)).optional()? {
                        Some(id) => Some(id),
                        None => match embeddings.get(b) {
                            Some(v) => {
                                add_text.execute(params![b, to_blob(v)])?;
                                let id = tx.last_insert_rowid();
                                new_vectors.push((id, b.to_string(), v.clone()));
                                Some(id)
                            }
                            None => None,
                        },
                    },
                };
                let bbox = i
                    .bbox
                    .map(|b| serde_json::to_string(&b).unwrap_or_default());
                let clip = i
                    .clip
                    .as_ref()
                    .map(|c| serde_json::to_string(c).unwrap_or_default());
                let seq: i64 = upsert.query_row(
                    params![
                        i.id.to_string(),
                        i.camera,
                        i.kind.as_str(),
                        ms(&i.ts),
                        i.ts_end.as_ref().map(ms),
                        i.label,
                        i.text,
                        i.confidence,
                        bbox,
                        i.snapshot,
                        clip,
                        i.model,
                        tid
                    ],
                    |r| r.get(0),
                )?;
                fts_del.execute([seq])?;
                if let Some(b) = body {
                    fts_add.execute(params![seq, b])?;
                }
            }
        }
        tx.commit()?;
        if !new_vectors.is_empty() {
            let mut v = self.vectors.write().unwrap_or_else(|p| p.into_inner());
            for (id, body, vec) in new_vectors {
                v.push(id, body, &vec);
            }
        }
        Ok(())
    }

    fn query(&self, q: &Query) -> Result<(Vec<Insight>, Option<Cursor>), InsightError> {
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut sql = if let Some(text) = &q.q {
            let Some(m) = fts_query(text) else {
                return Ok((Vec::new(), None));
            };
            // seq is time-ordered (ts * 1024 + n), so the index's rowid order is newest
            // first: read matches in that order and stop at the page.
            args.push(m.into());
            format!(
                "SELECT {COLUMNS} FROM insights_fts JOIN insights ON insights.seq = insights_fts.rowid WHERE insights_fts MATCH ?"
            )
        } else {
            format!("SELECT {COLUMNS} FROM insights WHERE 1 = 1")
        };
        push_filter(&q.filter, &mut sql, &mut args);
        if let Some(c) = q.cursor {
            if q.q.is_some() {
                sql.push_str(" AND insights_fts.rowid < ?");
                args.push(c.seq.into());
            } else {
                sql.push_str(" AND (ts < ? OR (ts = ? AND seq < ?))");
                args.extend([c.ts_ms.into(), c.ts_ms.into(), c.seq.into()]);
            }
        }
        if q.q.is_some() {
            sql.push_str(" ORDER BY insights_fts.rowid DESC LIMIT ?");
        } else {
            sql.push_str(" ORDER BY ts DESC, seq DESC LIMIT ?");
        }
        args.push((q.limit as i64 + 1).into());
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut items: Vec<(i64, Insight)> = stmt
            .query_map(params_from_iter(args), row)?
            .collect::<Result<Result<Vec<_>, _>, _>>()??;
        let next = if items.len() > q.limit {
            items.truncate(q.limit);
            items.last().map(|(seq, i)| Cursor {
                ts_ms: ms(&i.ts),
                seq: *seq,
            })
        } else {
            None
        };
        Ok((items.into_iter().map(|(_, i)| i).collect(), next))
    }

    fn search(
        &self,
        vector: &[f32],
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<(Insight, f32)>, InsightError> {
        self.refresh_vectors()?;
        let top = self
            .vectors
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .top(vector, SEARCH_TEXTS);
        let mut sql = format!("SELECT {COLUMNS} FROM insights WHERE text_id = ?");
        let mut base: Vec<rusqlite::types::Value> = Vec::new();
        push_filter(filter, &mut sql, &mut base);
        sql.push_str(" ORDER BY ts DESC, seq DESC LIMIT ?");
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut out = Vec::new();
        for (text_id, similarity) in top {
            if out.len() >= limit {
                break;
            }
            let mut args: Vec<rusqlite::types::Value> = vec![text_id.into()];
            args.extend(base.iter().cloned());
            args.push(((limit - out.len()) as i64).into());
            for r in stmt.query_map(params_from_iter(args), row)? {
                out.push((r??.1, similarity));
            }
        }
        Ok(out)
    }

    fn get(&self, id: &Uuid) -> Result<Option<Insight>, InsightError> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM insights WHERE id = ?1"))?;
        match stmt.query_row([id.to_string()], row).optional()? {
            Some(r) => Ok(Some(r?.1)),
            None => Ok(None),
        }
    }

    fn count(&self) -> Result<u64, InsightError> {
        let conn = self.reader();
        let n: i64 = conn.query_row("SELECT count(*) FROM insights", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    fn delete_before(&self, cutoff_ms: i64) -> Result<usize, InsightError> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM insights_fts WHERE rowid IN (SELECT seq FROM insights WHERE coalesce(ts_end, ts) < ?1)",
            [cutoff_ms],
        )?;
        let n = tx.execute(
            "DELETE FROM insights WHERE coalesce(ts_end, ts) < ?1",
            [cutoff_ms],
        )?;
        tx.commit()?;
        Ok(n)
    }
}

fn push_filter(f: &Filter, sql: &mut String, args: &mut Vec<rusqlite::types::Value>) {
    if let Some(c) = &f.camera {
        sql.push_str(" AND camera = ?");
        args.push(c.clone().into());
    }
    if let Some(k) = f.kind {
        sql.push_str(" AND kind = ?");
        args.push(k.as_str().to_string().into());
    }
    if let Some(l) = &f.label {
        sql.push_str(" AND label = ?");
        args.push(l.clone().into());
    }
    if let Some(t) = f.from_ms {
        sql.push_str(" AND coalesce(ts_end, ts) >= ?");
        args.push(t.into());
    }
    if let Some(t) = f.to_ms {
        sql.push_str(" AND ts < ?");
        args.push(t.into());
    }
}

/// One row as (seq, insight); a malformed row is an error of its own so a query can say so.
fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<(i64, Insight), InsightError>> {
    let seq: i64 = r.get(0)?;
    let id: String = r.get(1)?;
    let kind: String = r.get(3)?;
    let bbox: Option<String> = r.get(9)?;
    let clip: Option<String> = r.get(11)?;
    let parsed = (|| {
        Ok(Insight {
            id: Uuid::parse_str(&id).map_err(|e| InsightError::BadRow(e.to_string()))?,
            camera: r.get(2)?,
            kind: Kind::parse(&kind).ok_or_else(|| InsightError::BadRow(format!("kind {kind}")))?,
            ts: from_ms(r.get(4)?),
            ts_end: r.get::<_, Option<i64>>(5)?.map(from_ms),
            label: r.get(6)?,
            text: r.get(7)?,
            confidence: r.get::<_, f64>(8)? as f32,
            bbox: bbox.and_then(|b| serde_json::from_str(&b).ok()),
            snapshot: r.get(10)?,
            clip: clip.and_then(|c| serde_json::from_str(&c).ok()),
            model: r.get(12)?,
        })
    })();
    Ok(parsed.map(|i| (seq, i)))
}

fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_blob(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::*;
    use crate::config::InsightsKind;

    fn insight(camera: &str, kind: Kind, at_ms: i64, body: &str) -> Insight {
        let (label, text) = match kind {
            Kind::Object => (Some(body.to_string()), None),
            _ => (None, Some(body.to_string())),
        };
        Insight {
            id: insight_id(camera, kind, at_ms * 1_000_000, 0),
            camera: camera.into(),
            kind,
            ts: from_ms(at_ms),
            ts_end: None,
            label,
            text,
            confidence: 0.9,
            bbox: None,
            snapshot: None,
            clip: None,
            model: "test".into(),
        }
    }

    fn unit(v: [f32; 3]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    fn store() -> (tempfile::TempDir, InsightStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = InsightStore::sqlite(&dir.path().join("insights.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn upsert_by_id_overwrites_and_survives_reopening() {
        let (dir, s) = store();
        let mut a = insight("lobby", Kind::Text, 1000, "PANOPTES DOCK 42");
        let emb = HashMap::from([("PANOPTES DOCK 42".to_string(), unit([1.0, 0.0, 0.0]))]);
        s.upsert(&[a.clone()], &emb).unwrap();
        a.ts_end = Some(from_ms(5000));
        s.upsert(&[a.clone()], &emb).unwrap();
        assert_eq!(s.count().unwrap(), 1);
        drop(s);
        let s = InsightStore::sqlite(&dir.path().join("insights.db")).unwrap();
        assert_eq!(s.get(&a.id).unwrap(), Some(a));
        assert!(s.missing_texts(&["PANOPTES DOCK 42", "new"]).unwrap() == vec!["new"]);
    }

    #[test]
    fn filters_words_and_pages_newest_first() {
        let (_d, s) = store();
        let items: Vec<Insight> = (0..5)
            .map(|i| insight("lobby", Kind::Object, 1000 * i, "person"))
            .chain([
                insight("dock", Kind::Text, 2500, "LOADING DOCK 7"),
                insight("dock", Kind::Speech, 3500, "The truck arrived at the dock."),
            ])
            .collect();
        s.upsert(&items, &HashMap::new()).unwrap();
        let page = |q: Query| s.query(&q).unwrap();
        let (all, next) = page(Query {
            limit: 3,
            ..Default::default()
        });
        assert_eq!(
            all.iter().map(|i| ms(&i.ts)).collect::<Vec<_>>(),
            vec![4000, 3500, 3000]
        );
        let (rest, end) = page(Query {
            limit: 10,
            cursor: next,
            ..Default::default()
        });
        assert_eq!(rest.len(), 4);
        assert!(end.is_none());
        let (dock, _) = page(Query {
            filter: Filter {
                camera: Some("dock".into()),
                ..Default::default()
            },
            q: Some("dock".into()),
            limit: 10,
            ..Default::default()
        });
        assert_eq!(dock.len(), 2);
        let (truck, _) = page(Query {
            q: Some("truck ARRIVED".into()),
            limit: 10,
            ..Default::default()
        });
        assert_eq!(truck.len(), 1);
        assert_eq!(truck[0].kind, Kind::Speech);
        let (people, _) = page(Query {
            filter: Filter {
                label: Some("person".into()),
                from_ms: Some(1000),
                to_ms: Some(3000),
                ..Default::default()
            },
            limit: 10,
            ..Default::default()
        });
        assert_eq!(people.len(), 2);
        // Operators in user input are words, not syntax.
        assert!(
            s.query(&Query {
                q: Some("\"(".into()),
                limit: 5,
                ..Default::default()
            })
            .unwrap()
            .0
            .is_empty()
        );
    }

    #[test]
    fn semantic_search_ranks_by_text_then_recency() {
        let (_d, s) = store();
        let emb = HashMap::from([
            ("truck".to_string(), unit([1.0, 0.1, 0.0])),
            ("cat".to_string(), unit([0.0, 1.0, 0.0])),
        ]);
        s.upsert(
            &[
                insight("a", Kind::Object, 1000, "truck"),
                insight("a", Kind::Object, 2000, "truck"),
                insight("b", Kind::Object, 3000, "cat"),
            ],
            &emb,
        )
        .unwrap();
        let hits = s
            .search(&unit([1.0, 0.0, 0.0]), &Filter::default(), 10)
            .unwrap();
        let got: Vec<(&str, i64)> = hits
            .iter()
            .map(|(i, _)| (i.label.as_deref().unwrap(), ms(&i.ts)))
            .collect();
        assert_eq!(got, vec![("truck", 2000), ("truck", 1000), ("cat", 3000)]);
        assert!(hits[0].1 > hits[2].1);
        let only_b = Filter {
            camera: Some("b".into()),
            ..Default::default()
        };
        assert_eq!(
            s.search(&unit([1.0, 0.0, 0.0]), &only_b, 10).unwrap().len(),
            1
        );
    }

    #[test]
    fn filters_apply_before_the_best_texts_are_cut() {
        let (_d, s) = store();
        // 200 texts nearer the query on camera a; the only one on camera b is far.
        let mut emb = HashMap::new();
        let mut items = Vec::new();
        for n in 0..200 {
            let body = format!("truck {n}");
            emb.insert(body.clone(), unit([1.0, 0.01 * n as f32, 0.0]));
            items.push(insight("a", Kind::Object, 1000 + n, &body));
        }
        emb.insert("cat".to_string(), unit([0.0, 1.0, 0.0]));
        items.push(insight("b", Kind::Object, 5000, "cat"));
        s.upsert(&items, &emb).unwrap();
        let only_b = Filter {
            camera: Some("b".into()),
            ..Default::default()
        };
        let hits = s.search(&unit([1.0, 0.0, 0.0]), &only_b, 5).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].0.label.as_deref(), Some("cat"));
    }

    #[test]
    fn word_search_pages_newest_first() {
        let (_d, s) = store();
        let items: Vec<Insight> = [3000, 1000, 5000, 2000, 4000]
            .into_iter()
            .map(|t| insight("lobby", Kind::Object, t, "person"))
            .collect();
        s.upsert(&items, &HashMap::new()).unwrap();
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let (page, next) = s
                .query(&Query {
                    q: Some("person".into()),
                    limit: 2,
                    cursor,
                    ..Default::default()
                })
                .unwrap();
            seen.extend(page.iter().map(|i| ms(&i.ts)));
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, vec![5000, 4000, 3000, 2000, 1000]);
    }

    #[test]
    fn retention_deletes_what_ended_before_the_cutoff() {
        let (_d, s) = store();
        let mut long = insight("a", Kind::Text, 1000, "sign");
        long.ts_end = Some(from_ms(9000));
        s.upsert(
            &[insight("a", Kind::Object, 1000, "person"), long],
            &HashMap::new(),
        )
        .unwrap();
        assert_eq!(s.delete_before(5000).unwrap(), 1);
        assert_eq!(s.count().unwrap(), 1);
        let (left, _) = s
            .query(&Query {
                q: Some("person".into()),
                limit: 5,
                ..Default::default()
            })
            .unwrap();
        assert!(left.is_empty(), "its words are gone from the index too");
    }

    #[test]
    fn a_second_process_sees_the_texts_the_first_one_adds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("insights.db");
        let infer = SqliteInsights::open(&path).unwrap();
        let api = SqliteInsights::open(&path).unwrap();
        let q = unit([0.0, 1.0, 0.0]);
        assert!(api.search(&q, &Filter::default(), 5).unwrap().is_empty());
        infer
            .upsert(
                &[insight("b", Kind::Object, 1000, "cat")],
                &HashMap::from([("cat".to_string(), unit([0.0, 1.0, 0.0]))]),
            )
            .unwrap();
        // The api process writes a text of its own (a higher id) before it next searches:
        // the other process's lower id must still be loaded.
        api.upsert(
            &[insight("a", Kind::Object, 2000, "truck")],
            &HashMap::from([("truck".to_string(), unit([1.0, 0.0, 0.0]))]),
        )
        .unwrap();
        let hits = api.search(&q, &Filter::default(), 5).unwrap();
        let labels: Vec<&str> = hits
            .iter()
            .map(|(i, _)| i.label.as_deref().unwrap())
            .collect();
        assert_eq!(labels, vec!["cat", "truck"]);
        assert!(api.missing_texts(&["cat", "truck"]).unwrap().is_empty());
        assert!(infer.missing_texts(&["cat", "truck"]).unwrap().is_empty());
        assert_eq!(
            infer
                .search(&unit([1.0, 0.0, 0.0]), &Filter::default(), 1)
                .unwrap()[0]
                .0
                .label
                .as_deref(),
            Some("truck")
        );
    }

    fn unit4(v: [f32; 4]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    /// What every insight store does, whatever the backend: `s` starts empty and takes
    /// 4-dimensional embeddings.
    fn behaves_like_an_insight_store(s: &InsightStore) {
        assert_eq!(s.count().unwrap(), 0);
        let ts = |items: &[Insight]| items.iter().map(|i| ms(&i.ts)).collect::<Vec<_>>();
        let page = |q: Query| s.query(&q).unwrap();
        let list = |filter: Filter, q: Option<&str>| {
            page(Query {
                filter,
                q: q.map(str::to_string),
                limit: 100,
                cursor: None,
            })
            .0
        };
        let camera = |c: &str| Filter {
            camera: Some(c.into()),
            ..Default::default()
        };
        let all_pages = |limit: usize, q: Option<&str>| {
            let mut seen = Vec::new();
            let mut cursor = None;
            loop {
                let (p, next) = page(Query {
                    q: q.map(str::to_string),
                    limit,
                    cursor,
                    ..Default::default()
                });
                assert!(p.len() <= limit);
                seen.extend(p);
                match next {
                    Some(c) => cursor = Some(c),
                    None => break seen,
                }
            }
        };

        // Listing: newest first, filters, words, pages.
        let mut sign = insight("dock", Kind::Text, 500, "LOADING DOCK 7");
        sign.ts_end = Some(from_ms(3600));
        let items: Vec<Insight> = (0..5)
            .map(|n| insight("lobby", Kind::Object, 1000 * n, "person"))
            .chain([
                sign,
                insight("dock", Kind::Speech, 3500, "The truck arrived at the dock."),
            ])
            .collect();
        s.upsert(&items, &HashMap::new()).unwrap();
        assert_eq!(s.count().unwrap(), 7);
        let (first, next) = page(Query {
            limit: 3,
            ..Default::default()
        });
        assert_eq!(ts(&first), vec![4000, 3500, 3000]);
        let (rest, end) = page(Query {
            limit: 10,
            cursor: next,
            ..Default::default()
        });
        assert_eq!(ts(&rest), vec![2000, 1000, 500, 0]);
        assert!(end.is_none());
        let seen = all_pages(2, None);
        assert_eq!(ts(&seen), vec![4000, 3500, 3000, 2000, 1000, 500, 0]);
        assert_eq!(seen.iter().map(|i| i.id).collect::<HashSet<_>>().len(), 7);
        assert_eq!(ts(&list(camera("dock"), None)), vec![3500, 500]);
        let speech = Filter {
            kind: Some(Kind::Speech),
            ..Default::default()
        };
        assert_eq!(ts(&list(speech, None)), vec![3500]);
        let people = Filter {
            label: Some("person".into()),
            from_ms: Some(1000),
            to_ms: Some(3000),
            ..Default::default()
        };
        assert_eq!(ts(&list(people, None)), vec![2000, 1000]);
        // `from` looks at when an insight was last seen: the sign lasted until 3600.
        let late = Filter {
            from_ms: Some(3000),
            ..Default::default()
        };
        assert_eq!(ts(&list(late, None)), vec![4000, 3500, 3000, 500]);
        let early = Filter {
            to_ms: Some(1000),
            ..Default::default()
        };
        assert_eq!(ts(&list(early, None)), vec![500, 0]);
        // Words: every one must appear, in any case; punctuation is not syntax.
        assert_eq!(ts(&list(Filter::default(), Some("dock"))), vec![3500, 500]);
        assert!(list(camera("lobby"), Some("dock")).is_empty());
        let truck = list(Filter::default(), Some("truck ARRIVED"));
        assert_eq!(ts(&truck), vec![3500]);
        assert_eq!(truck[0].kind, Kind::Speech);
        assert!(list(Filter::default(), Some("loading truck")).is_empty());
        assert!(list(Filter::default(), Some("\"(")).is_empty());
        assert_eq!(
            ts(&all_pages(2, Some("person"))),
            vec![4000, 3000, 2000, 1000, 0]
        );

        // Upserts by id: the same insight twice is one insight, the later record wins, and
        // a record without a snapshot keeps the stored one.
        let mut gate = insight("gate", Kind::Text, 10_000, "PANOPTES GATE 42");
        gate.snapshot = Some("snapshots/gate/1970-01-01/10000.jpg".into());
        gate.bbox = Some(BBox {
            x: 0.25,
            y: 0.5,
            w: 0.125,
            h: 0.0625,
        });
        assert_eq!(
            s.missing_texts(&["PANOPTES GATE 42", "PANOPTES GATE 42"])
                .unwrap(),
            vec!["PANOPTES GATE 42"]
        );
        let emb = HashMap::from([("PANOPTES GATE 42".to_string(), unit4([0.0, 0.0, 0.0, 1.0]))]);
        s.upsert(&[gate.clone()], &emb).unwrap();
        assert_eq!(s.get(&gate.id).unwrap().as_ref(), Some(&gate));
        let mut again = gate.clone();
        again.ts_end = Some(from_ms(15_000));
        again.snapshot = None;
        s.upsert(&[again.clone()], &HashMap::new()).unwrap();
        assert_eq!(s.count().unwrap(), 8);
        let stored = s.get(&gate.id).unwrap().unwrap();
        assert_eq!(stored.ts_end, Some(from_ms(15_000)));
        assert_eq!(stored.snapshot, gate.snapshot);
        assert_eq!(
            s.missing_texts(&["PANOPTES GATE 42", "new", "new"])
                .unwrap(),
            vec!["new"]
        );
        assert_eq!(s.get(&Uuid::nil()).unwrap(), None);

        // Semantic search: best text first, the newest insights of a text first; insights
        // without an embedded body are never found.
        let emb = HashMap::from([
            ("truck".to_string(), unit4([1.0, 0.1, 0.0, 0.0])),
            ("cat".to_string(), unit4([0.0, 1.0, 0.0, 0.0])),
            ("boat".to_string(), unit4([0.3, 0.0, 1.0, 0.0])),
        ]);
        let mut unlabelled = insight("road", Kind::Object, 25_000, "-");
        unlabelled.label = None;
        s.upsert(
            &[
                insight("road", Kind::Object, 20_000, "truck"),
                insight("road", Kind::Object, 21_000, "truck"),
                insight("river", Kind::Object, 22_000, "cat"),
                insight("river", Kind::Object, 23_000, "boat"),
                insight("road", Kind::Object, 24_000, "van"),
                unlabelled,
            ],
            &emb,
        )
        .unwrap();
        let q = unit4([1.0, 0.0, 0.0, 0.0]);
        let found = |f: Filter, limit: usize| {
            let hits = s.search(&q, &f, limit).unwrap();
            assert!(hits.windows(2).all(|w| w[0].1 >= w[1].1), "{hits:?}");
            hits.into_iter()
                .map(|(i, sim)| (i.body().unwrap_or("-").to_string(), ms(&i.ts), sim))
                .collect::<Vec<_>>()
        };
        let hits = found(Filter::default(), 10);
        let got: Vec<(&str, i64)> = hits.iter().map(|(b, t, _)| (b.as_str(), *t)).collect();
        assert_eq!(
            got[..3],
            [("truck", 21_000), ("truck", 20_000), ("boat", 23_000)]
        );
        // Then the cat and the gate's sign (both orthogonal); not the van, the people or the
        // unlabelled object.
        assert_eq!(got.len(), 5, "{got:?}");
        assert!((hits[0].2 - 1.0 / 1.01_f32.sqrt()).abs() < 1e-3, "{hits:?}");
        let river: Vec<String> = found(camera("river"), 10)
            .into_iter()
            .map(|h| h.0)
            .collect();
        assert_eq!(river, vec!["boat", "cat"]);
        let text = Filter {
            kind: Some(Kind::Text),
            ..Default::default()
        };
        assert_eq!(found(text, 10).len(), 1);
        let one = found(Filter::default(), 1);
        assert_eq!((one[0].0.as_str(), one[0].1), ("truck", 21_000));
        assert!(found(Filter::default(), 0).is_empty());

        // Retention goes by when an insight was last seen.
        assert_eq!(s.count().unwrap(), 14);
        assert_eq!(s.delete_before(1000).unwrap(), 1);
        assert_eq!(s.count().unwrap(), 13);
        assert_eq!(
            ts(&list(camera("lobby"), Some("person"))),
            vec![4000, 3000, 2000, 1000]
        );
        assert_eq!(ts(&list(camera("dock"), None)), vec![3500, 500]);
        assert_eq!(s.delete_before(0).unwrap(), 0);
    }

    #[test]
    fn sqlite_behaves_like_an_insight_store() {
        let (_d, s) = store();
        behaves_like_an_insight_store(&s);
    }

    /// Runs against a real server: `PANOPTES_TEST_QDRANT_URL=http://127.0.0.1:6334` (and
    /// `PANOPTES_TEST_QDRANT_API_KEY` if it needs one). Each run uses a collection of its own
    /// and deletes it afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn qdrant_behaves_like_an_insight_store() {
        let Ok(url) = std::env::var("PANOPTES_TEST_QDRANT_URL") else {
            eprintln!("skipped: PANOPTES_TEST_QDRANT_URL is not set");
            return;
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let config = InsightsConfig {
            kind: InsightsKind::Qdrant,
            url,
            api_key: std::env::var("PANOPTES_TEST_QDRANT_API_KEY")
                .ok()
                .map(|k| serde_json::from_value(k.into()).unwrap()),
            collection: format!("panoptes_test_{}_{nanos}", std::process::id()),
        };
        let store = Arc::new(InsightStore::qdrant(&config, 4).await.unwrap());
        let s = Arc::clone(&store);
        let outcome = tokio::task::spawn_blocking(move || behaves_like_an_insight_store(&s)).await;
        // Connecting again checks the collection, and a different size is refused.
        let again = InsightStore::qdrant(&config, 4).await;
        let other_size = InsightStore::qdrant(&config, 8).await;
        let InsightStore::Qdrant(q) = &*store else {
            unreachable!("built as a Qdrant store")
        };
        q.store().drop_collection().await.unwrap();
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
        assert!(again.is_ok());
        let e = other_size
            .err()
            .expect("a different vector size is refused")
            .to_string();
        assert!(
            e.contains(&config.collection) && e.contains("4-dimensional") && e.contains("8"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn qdrant_errors_name_the_server_and_the_fix_but_not_the_key() {
        let config = InsightsConfig {
            kind: InsightsKind::Qdrant,
            // Nothing listens on port 1.
            url: "http://127.0.0.1:1".into(),
            api_key: Some(serde_json::from_value("sekrit-key".into()).unwrap()),
            collection: "panoptes_insights".into(),
        };
        let e = InsightStore::qdrant(&config, 4)
            .await
            .err()
            .expect("no server there")
            .to_string();
        assert!(e.contains("http://127.0.0.1:1"), "{e}");
        assert!(e.contains("is the Qdrant server running"), "{e}");
        assert!(!e.contains("sekrit"), "{e}");
        // User information in the URL is no more shown than the key.
        let config = InsightsConfig {
            url: "http://admin:hunter2@127.0.0.1:1".into(),
            ..config
        };
        let e = InsightStore::qdrant(&config, 4)
            .await
            .err()
            .expect("no server there")
            .to_string();
        assert!(e.contains("127.0.0.1:1"), "{e}");
        assert!(!e.contains("hunter2") && !e.contains("admin"), "{e}");
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = insight_id("lobby", Kind::Object, 42, 0);
        assert_eq!(a, insight_id("lobby", Kind::Object, 42, 0));
        assert_ne!(a, insight_id("lobby", Kind::Object, 42, 1));
        assert_ne!(a, insight_id("lobby", Kind::Text, 42, 0));
        assert_eq!(a.get_version_num(), 5);
    }
}
