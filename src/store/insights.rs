//! The insight store: what the models found, searchable by filters, by words and by meaning.
//!
//! [`InsightStore::Sqlite`] is the embedded default: SQLite (WAL, one writer, a few readers)
//! is the store of record, FTS5 answers `q=` word search, and semantic search ranks the
//! distinct texts of insights (labels, OCR text, transcripts) by their embeddings, held in
//! memory, then returns the newest insights carrying the best texts. The ranking is exact; the
//! scan that finds it reads the embeddings quantised to 8 bits and computes exact similarities
//! only for the texts whose bounded quantisation error could put them in the lead.
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
use rusqlite::config::DbConfig;
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
CREATE INDEX IF NOT EXISTS insights_camera_kind_text ON insights (camera, kind, text_id, ts DESC, seq DESC);
CREATE VIRTUAL TABLE IF NOT EXISTS insights_fts USING fts5 (body, tokenize = 'unicode61');
CREATE TABLE IF NOT EXISTS texts (
    id INTEGER PRIMARY KEY,
    body TEXT NOT NULL UNIQUE,
    embedding BLOB NOT NULL
);
";

/// Insert or overwrite one insight by id; its seq (new ones: ts * 1024 + n, so that seq order
/// is time order).
const UPSERT: &str = "INSERT INTO insights (seq, id, camera, kind, ts, ts_end, label, text, confidence, bbox, snapshot, clip, model, text_id)
     VALUES ((SELECT coalesce(max(seq) + 1, ?4 * 1024) FROM insights WHERE seq BETWEEN ?4 * 1024 AND ?4 * 1024 + 1023),
             ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
     ON CONFLICT (id) DO UPDATE SET
       ts_end = excluded.ts_end, label = excluded.label, text = excluded.text,
       confidence = excluded.confidence, bbox = excluded.bbox,
       snapshot = coalesce(excluded.snapshot, insights.snapshot),
       clip = coalesce(excluded.clip, insights.clip), model = excluded.model,
       text_id = excluded.text_id
     RETURNING seq";

const COLUMNS: &str =
    "seq, id, camera, kind, ts, ts_end, label, text, confidence, bbox, snapshot, clip, model";

/// Readers kept open; WAL lets them read while the writer writes.
const READERS: usize = 4;

/// Prepared statements each connection keeps. Every combination of filters is a statement of
/// its own, and a search runs two per combination: rusqlite's default of 16 is outgrown by an
/// ordinary mix of requests, which then prepares statements again and again.
const STATEMENTS: usize = 128;

/// Distinct texts, best first, whose insights a semantic search looks through for ones that
/// pass its filters (each look is an index probe).
const SEARCH_TEXTS: usize = 1024;

/// Texts ranked (exactly) and checked against the filters at a time, in one statement: a
/// search without filters usually needs the first few texts only, one with filters may
/// need many.
const PROBE_TEXTS: usize = 64;

/// The embedded store.
pub struct SqliteInsights {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    vectors: RwLock<Vectors>,
}

/// Every distinct text's embedding, row by row: as given, for exact similarities, and
/// quantised to i8 for the scan over all of them, which then reads a quarter of the memory
/// (over the 6235 texts of the 1M-insight bench: 0.25 ms, against 2 ms for the plain f32 loop).
#[derive(Default)]
struct Vectors {
    ids: Vec<i64>,
    by_body: HashMap<String, i64>,
    data: Vec<f32>,
    /// Row r of `data` is about `scales[r] * codes[r]`: each value within half a step.
    codes: Vec<i8>,
    scales: Vec<f32>,
    /// Sum of the magnitudes of each row of `data`, for the error bound of a quantised score.
    l1: Vec<f32>,
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
        self.scales.push(quantise(v, &mut self.codes));
        self.l1.push(v.iter().map(|x| x.abs()).sum());
    }

    fn rows(&self) -> usize {
        self.ids.len()
    }

    fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.dim..(r + 1) * self.dim]
    }

    fn codes(&self, r: usize) -> &[i8] {
        &self.codes[r * self.dim..(r + 1) * self.dim]
    }
}

/// `v` as steps of one scale (the largest magnitude is 127 steps), appended to `codes`; the
/// scale. A row of zeros (or one that is not finite) gets scale 0 and codes 0.
fn quantise(v: &[f32], codes: &mut Vec<i8>) -> f32 {
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 && max.is_finite() {
        max / 127.0
    } else {
        0.0
    };
    codes.extend(v.iter().map(|x| {
        if scale > 0.0 {
            (x / scale).round() as i8
        } else {
            0
        }
    }));
    scale
}

/// Lanes of the dot products: wide enough for LLVM to fill the SIMD registers, with
/// independent sums (a float sum in one accumulator cannot be reordered into lanes).
const LANES: usize = 16;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (a16, a_rest) = a.as_chunks::<LANES>();
    let (b16, b_rest) = b.as_chunks::<LANES>();
    let mut acc = [0.0f32; LANES];
    for (x, y) in a16.iter().zip(b16) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let rest: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + rest
}

/// Exact: at most 127 * 127 * the dimension, far inside an i32. Kept out of line: inlined
/// into the scan's loop, LLVM left it scalar (4 times slower).
#[inline(never)]
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let (a16, a_rest) = a.as_chunks::<LANES>();
    let (b16, b_rest) = b.as_chunks::<LANES>();
    let mut acc = [0i32; LANES];
    for (x, y) in a16.iter().zip(b16) {
        for i in 0..LANES {
            acc[i] += i32::from(x[i]) * i32::from(y[i]);
        }
    }
    let rest: i32 = a_rest
        .iter()
        .zip(b_rest)
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum();
    acc.iter().sum::<i32>() + rest
}

/// A score and its row, ordered by score (`f32::total_cmp`), then the older row first.
#[derive(Clone, Copy, Debug)]
struct Scored(f32, usize);

impl Ord for Scored {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0).then(o.1.cmp(&self.1))
    }
}

impl PartialOrd for Scored {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl PartialEq for Scored {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}

impl Eq for Scored {}

/// The texts in order of exact similarity to a query (dot product), worked out only as far as
/// they are read. One scan of the quantised rows gives each row an upper bound on its exact
/// score; a row is scored exactly once its bound could beat every exactly scored row not yet
/// returned, so the order is the exact one although most rows are never scored exactly.
/// Rows only ever get appended to [`Vectors`], so a ranking outlives the lock it was made
/// under: rows added later are not in it.
struct Ranking {
    query: Vec<f32>,
    /// Upper bounds of the rows not scored exactly yet.
    bounds: std::collections::BinaryHeap<Scored>,
    /// Exact scores of the rows scored but not returned yet.
    exact: std::collections::BinaryHeap<Scored>,
    /// Rows still to return.
    left: usize,
}

impl Ranking {
    /// At most `limit` rows of `v`, ranked against `query` (empty when the sizes differ).
    fn new(v: &Vectors, query: &[f32], limit: usize) -> Ranking {
        let mut r = Ranking {
            query: query.to_vec(),
            bounds: Default::default(),
            exact: Default::default(),
            left: limit,
        };
        if v.dim == 0 || query.len() != v.dim {
            r.left = 0;
            return r;
        }
        let mut qcodes = Vec::with_capacity(v.dim);
        let qscale = quantise(query, &mut qcodes);
        let qcodes_l1: f32 = qcodes.iter().map(|c| f32::from(*c).abs()).sum::<f32>() * qscale;
        let qmax = 127.0 * qscale;
        let mut bounds = Vec::with_capacity(v.rows());
        for row in 0..v.rows() {
            let (scale, l1) = (v.scales[row], v.l1[row]);
            let approx = scale * qscale * dot_i8(v.codes(row), &qcodes) as f32;
            // |v.q - v'.q'| <= |v|.|q - q'| + |q'|.|v - v'|, each value within half a step;
            // the rest covers the rounding of the f32 sums (relative 1e-4 of their scale).
            let err = 0.5 * (qscale * l1 + scale * qcodes_l1) + 1e-4 * (l1 * qmax + approx.abs());
            bounds.push(Scored(approx + err, row));
        }
        // A row that is not finite gets an infinite or NaN bound: scored exactly, first.
        r.bounds = bounds.into();
        r
    }

    /// The next `n` rows at most, best first: (row, exact score).
    fn next(&mut self, v: &Vectors, n: usize) -> Vec<(usize, f32)> {
        let mut out = Vec::with_capacity(n.min(self.left));
        while out.len() < n && self.left > 0 {
            while let Some(&bound) = self.bounds.peek() {
                if self.exact.peek().is_some_and(|best| *best > bound) {
                    break;
                }
                self.bounds.pop();
                self.exact
                    .push(Scored(dot(v.row(bound.1), &self.query), bound.1));
            }
            let Some(best) = self.exact.pop() else { break };
            out.push((best.1, best.0));
            self.left -= 1;
        }
        out
    }
}

/// A connection to the database file, set up for statements that are prepared once and run
/// many times.
fn connect(path: &Path) -> Result<Connection, InsightError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(STATEMENTS);
    // Without the planner's stability guarantee, SQLite looks at the integers bound to some
    // parameters (a cursor's ts, an upsert's ts) to refine its estimates, and then prepares
    // the statement again whenever they change: listings and upserts were parsed and planned
    // anew on every call, the statement cache notwithstanding. The plans here do not hinge on
    // those estimates.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(conn)
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
        let writer = connect(path)?;
        writer.execute_batch(SCHEMA)?;
        let readers = (0..READERS)
            .map(|_| connect(path).map(Mutex::new))
            .collect::<Result<_, _>>()?;
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
            let mut upsert = tx.prepare_cached(UPSERT)?;
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
        let Some((sql, args)) = listing_sql(q) else {
            return Ok((Vec::new(), None));
        };
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
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.refresh_vectors()?;
        let vectors = || self.vectors.read().unwrap_or_else(|p| p.into_inner());
        let mut ranking = Ranking::new(&vectors(), vector, SEARCH_TEXTS);
        let mut base: Vec<rusqlite::types::Value> = Vec::new();
        let mut filters = String::new();
        push_text_filter(filter, &mut filters, &mut base);
        let conn = self.reader();
        let mut rows = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM insights WHERE text_id = ?{filters} ORDER BY ts DESC, seq DESC LIMIT ?"
        ))?;
        // Which texts of a batch have an insight that passes the filters: one statement for
        // the batch rather than a query per text, most of which find nothing.
        let mut passing = (!filters.is_empty())
            .then(|| {
                conn.prepare_cached(&format!(
                    "SELECT t.key FROM json_each(?) AS t WHERE EXISTS (SELECT 1 FROM insights WHERE text_id = t.value{filters})"
                ))
            })
            .transpose()?;
        let mut out = Vec::new();
        while out.len() < limit {
            let (ids, batch): (Vec<i64>, Vec<f32>) = {
                let v = vectors();
                ranking
                    .next(&v, PROBE_TEXTS)
                    .into_iter()
                    .map(|(row, similarity)| (v.ids[row], similarity))
                    .unzip()
            };
            if ids.is_empty() {
                break;
            }
            let keep: Vec<usize> = match passing.as_mut() {
                None => (0..ids.len()).collect(),
                Some(stmt) => {
                    let mut args: Vec<rusqlite::types::Value> =
                        vec![serde_json::to_string(&ids).unwrap_or_default().into()];
                    args.extend(base.iter().cloned());
                    let mut keep = stmt
                        .query_map(params_from_iter(args), |r| r.get::<_, i64>(0))?
                        .map(|k| Ok(k? as usize))
                        .collect::<Result<Vec<_>, InsightError>>()?;
                    keep.sort_unstable();
                    keep
                }
            };
            for k in keep {
                if out.len() >= limit {
                    break;
                }
                let mut args: Vec<rusqlite::types::Value> = vec![ids[k].into()];
                args.extend(base.iter().cloned());
                args.push(((limit - out.len()) as i64).into());
                for r in rows.query_map(params_from_iter(args), row)? {
                    out.push((r??.1, batch[k]));
                }
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

/// The statement of a listing and its arguments; none when `q=` holds no words.
fn listing_sql(q: &Query) -> Option<(String, Vec<rusqlite::types::Value>)> {
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut sql = if let Some(text) = &q.q {
        let m = fts_query(text)?;
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
    Some((sql, args))
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

/// The filters of a semantic search's queries on one text (`text_id = ?`). The label is
/// checked on the text's rows (a unary `+` keeps it out of the choice of index): the text's
/// own index has no more rows than the label's, which SQLite might otherwise pick and walk.
/// Camera and kind have indexes with the text in them.
fn push_text_filter(f: &Filter, sql: &mut String, args: &mut Vec<rusqlite::types::Value>) {
    push_filter(
        &Filter {
            label: None,
            ..f.clone()
        },
        sql,
        args,
    );
    if let Some(l) = &f.label {
        sql.push_str(" AND +label = ?");
        args.push(l.clone().into());
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

    /// `n` random unit vectors of `dim` values, every third one a near copy of the one before
    /// (the last value nudged by less than a quantisation step), so that the quantised scores
    /// of neighbours tie or cross while their exact scores do not.
    fn random_vectors(n: usize, dim: usize, seed: u64) -> Vectors {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut v = Vectors::default();
        let mut last = Vec::new();
        for i in 0..n {
            let mut x: Vec<f32> = if i % 3 == 2 {
                let mut x = last.clone();
                x[dim - 1] += 1e-4 * (rng.random::<f32>() - 0.5);
                x
            } else {
                (0..dim).map(|_| rng.random::<f32>() - 0.5).collect()
            };
            let norm = x.iter().map(|a| a * a).sum::<f32>().sqrt();
            x.iter_mut().for_each(|a| *a /= norm);
            v.push(i as i64 + 1, format!("text {i}"), &x);
            last = x;
        }
        v
    }

    #[test]
    fn quantised_ranking_is_the_exact_ranking() {
        for (dim, seed) in [(3, 1), (37, 2), (384, 3)] {
            let v = random_vectors(1500, dim, seed);
            for q in 0..4 {
                // A stored vector as the query (its own row scores 1), then fresh ones.
                let query: Vec<f32> = if q == 0 {
                    v.row(7).to_vec()
                } else {
                    let w = random_vectors(1, dim, seed * 100 + q);
                    w.row(0).to_vec()
                };
                let mut exact: Vec<Scored> = (0..v.rows())
                    .map(|r| Scored(dot(v.row(r), &query), r))
                    .collect();
                exact.sort_by(|a, b| b.cmp(a));
                let mut ranking = Ranking::new(&v, &query, 1000);
                let mut got = Vec::new();
                // Read in uneven batches, as a search does when its filters drop texts.
                for n in [1, 7, 64].into_iter().cycle() {
                    let batch = ranking.next(&v, n);
                    if batch.is_empty() {
                        break;
                    }
                    got.extend(batch);
                }
                assert_eq!(got.len(), 1000, "dim {dim}");
                for (k, ((row, score), want)) in got.iter().zip(&exact).enumerate() {
                    assert_eq!(
                        (*row, *score),
                        (want.1, want.0),
                        "dim {dim}, query {q}, rank {k}"
                    );
                }
                if q == 0 {
                    assert_eq!(got[0].0, 7);
                    assert!((got[0].1 - 1.0).abs() < 1e-5);
                }
                // f32 sums in lanes agree with an f64 sum.
                let wide: f64 = v
                    .row(got[0].0)
                    .iter()
                    .zip(&query)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                assert!((f64::from(got[0].1) - wide).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn the_best_texts_are_found_without_scoring_most_exactly() {
        let v = random_vectors(3000, 384, 9);
        let query = random_vectors(1, 384, 10).row(0).to_vec();
        let mut ranking = Ranking::new(&v, &query, SEARCH_TEXTS);
        assert_eq!(ranking.next(&v, 10).len(), 10);
        // The error bound is tight enough that most rows are ruled out by their quantised score.
        assert!(ranking.bounds.len() > 2500, "{} left", ranking.bounds.len());
    }

    #[test]
    fn ranking_handles_empty_mismatched_and_zero_vectors() {
        let mut v = Vectors::default();
        assert!(Ranking::new(&v, &[1.0, 0.0], 10).next(&v, 10).is_empty());
        v.push(1, "zero".into(), &[0.0, 0.0]);
        v.push(2, "x".into(), &[1.0, 0.0]);
        v.push(3, "wrong size".into(), &[1.0, 0.0, 0.0]);
        assert_eq!(v.rows(), 2);
        assert!(
            Ranking::new(&v, &[1.0, 0.0, 0.0], 10)
                .next(&v, 10)
                .is_empty()
        );
        let got = Ranking::new(&v, &[1.0, 0.0], 10).next(&v, 10);
        assert_eq!(got, vec![(1, 1.0), (0, 0.0)]);
        let zero_query = Ranking::new(&v, &[0.0, 0.0], 10).next(&v, 10);
        assert_eq!(zero_query.len(), 2);
        assert!(zero_query.iter().all(|(_, s)| *s == 0.0));
        // The limit holds however the rows are read.
        let mut one = Ranking::new(&v, &[1.0, 0.0], 1);
        assert_eq!(one.next(&v, 10), vec![(1, 1.0)]);
        assert!(one.next(&v, 10).is_empty());
    }

    #[test]
    fn search_filters_reach_past_the_first_texts_checked() {
        let (_d, s) = store();
        // 150 object texts nearer the query than anything else, every one on camera a; on
        // camera b only the far ones: a sign, a sentence and an object seen an hour apart.
        let mut emb = HashMap::new();
        let mut items = Vec::new();
        for n in 0..150 {
            let body = format!("truck {n}");
            emb.insert(body.clone(), unit([1.0, 0.001 * n as f32, 0.0]));
            items.push(insight("a", Kind::Object, 1000 + n, &body));
        }
        for (body, v) in [
            ("EXIT", [0.2, 1.0, 0.0]),
            ("Open the door.", [0.1, 1.0, 0.0]),
            ("cat", [0.0, 1.0, 0.0]),
        ] {
            emb.insert(body.to_string(), unit(v));
        }
        items.extend([
            insight("b", Kind::Text, 5000, "EXIT"),
            insight("b", Kind::Speech, 6000, "Open the door."),
            insight("b", Kind::Object, 3_600_000, "cat"),
            insight("a", Kind::Object, 7000, "cat"),
        ]);
        s.upsert(&items, &emb).unwrap();
        let q = unit([1.0, 0.0, 0.0]);
        let found = |f: Filter| -> Vec<(String, String)> {
            s.search(&q, &f, 5)
                .unwrap()
                .into_iter()
                .map(|(i, _)| (i.camera.clone(), i.body().unwrap().to_string()))
                .collect()
        };
        let pair = |c: &str, b: &str| (c.to_string(), b.to_string());
        let b = |kind: Option<Kind>| Filter {
            camera: Some("b".into()),
            kind,
            ..Default::default()
        };
        assert_eq!(
            found(b(None)),
            vec![
                pair("b", "EXIT"),
                pair("b", "Open the door."),
                pair("b", "cat")
            ]
        );
        assert_eq!(
            found(b(Some(Kind::Speech))),
            vec![pair("b", "Open the door.")]
        );
        assert_eq!(found(b(Some(Kind::Object))), vec![pair("b", "cat")]);
        let text = Filter {
            kind: Some(Kind::Text),
            ..Default::default()
        };
        assert_eq!(found(text), vec![pair("b", "EXIT")]);
        let cats = Filter {
            label: Some("cat".into()),
            ..Default::default()
        };
        assert_eq!(found(cats), vec![pair("b", "cat"), pair("a", "cat")]);
        let late = Filter {
            from_ms: Some(10_000),
            ..Default::default()
        };
        assert_eq!(found(late), vec![pair("b", "cat")]);
        let early_b = Filter {
            to_ms: Some(5500),
            ..b(None)
        };
        assert_eq!(found(early_b), vec![pair("b", "EXIT")]);
        assert!(
            found(Filter {
                camera: Some("c".into()),
                ..Default::default()
            })
            .is_empty()
        );
    }

    #[test]
    fn statements_are_planned_once_whatever_values_they_run_with() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteInsights::open(&dir.path().join("insights.db")).unwrap();
        let emb = HashMap::from([("person".to_string(), unit([1.0, 0.0, 0.0]))]);
        for n in 0..5 {
            s.upsert(&[insight("a", Kind::Object, 1000 * n, "person")], &emb)
                .unwrap();
        }
        // Pages of one listing: the same statement with other values each time.
        let pages: Vec<Query> = (0..5)
            .map(|n| Query {
                filter: Filter {
                    label: Some("person".into()),
                    from_ms: Some(n),
                    to_ms: Some(10_000 + n),
                    ..Default::default()
                },
                q: None,
                limit: 1 + n as usize,
                cursor: Some(Cursor {
                    ts_ms: 4000 - n,
                    seq: (4000 - n) * 1024,
                }),
            })
            .collect();
        for q in &pages {
            assert!(!s.query(q).unwrap().0.is_empty());
        }
        let replanned = |conn: &Connection, sql: &str| {
            conn.prepare_cached(sql)
                .unwrap()
                .get_status(rusqlite::StatementStatus::RePrepare)
        };
        let (listing, _) = listing_sql(&pages[0]).unwrap();
        let readers: i32 = s
            .readers
            .iter()
            .map(|r| replanned(&r.lock().unwrap(), &listing))
            .sum();
        assert_eq!(readers, 0);
        assert_eq!(replanned(&s.writer.lock().unwrap(), UPSERT), 0);
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
