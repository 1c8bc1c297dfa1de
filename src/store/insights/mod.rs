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
//! [`InsightStore::Qdrant`] keeps the same records in a Qdrant server ([`qdrant`]).

pub mod qdrant;
mod record;
mod sqlite;
mod vectors;

use std::collections::HashMap;
use std::path::Path;

use uuid::Uuid;

pub use qdrant::{QdrantInsights, QdrantSync};
pub use record::{ClipLink, Cursor, Filter, Insight, InsightError, Kind, Query, insight_id};
pub use sqlite::SqliteInsights;

use crate::config::InsightsConfig;

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
