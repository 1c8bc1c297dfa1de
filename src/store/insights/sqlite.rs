//! The embedded insight store: SQLite in WAL mode (one writer, a few readers) as the store of
//! record, FTS5 for word search, and the in-memory [`Vectors`] index for semantic search.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use uuid::Uuid;

use super::record::{Cursor, Filter, Insight, InsightError, Kind, Query, from_ms, ms, query_words};
use super::vectors::{Ranking, Vectors};

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
pub(super) const SEARCH_TEXTS: usize = 1024;

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

    pub(super) fn missing_texts(&self, bodies: &[&str]) -> Result<Vec<String>, InsightError> {
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

    pub(super) fn upsert(
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

    pub(super) fn query(&self, q: &Query) -> Result<(Vec<Insight>, Option<Cursor>), InsightError> {
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

    pub(super) fn search(
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

    pub(super) fn get(&self, id: &Uuid) -> Result<Option<Insight>, InsightError> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM insights WHERE id = ?1"))?;
        match stmt.query_row([id.to_string()], row).optional()? {
            Some(r) => Ok(Some(r?.1)),
            None => Ok(None),
        }
    }

    pub(super) fn count(&self) -> Result<u64, InsightError> {
        let conn = self.reader();
        let n: i64 = conn.query_row("SELECT count(*) FROM insights", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    pub(super) fn delete_before(&self, cutoff_ms: i64) -> Result<usize, InsightError> {
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
    use super::*;
    use crate::store::insights::{InsightStore, insight_id};

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
}
