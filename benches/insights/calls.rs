//! Phase 4: the store in process, one call at a time, and `--explain`: the SQL each request
//! type runs, with its plan and time.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use panoptes::store::insights::{InsightStore, Query};

use crate::dataset::*;
use crate::load::*;
use crate::store::*;
use crate::support::*;
use crate::{Args, HOUR_MS, SEED};

// Phase 4: the store in process, what `InsightStore::query` and `InsightStore::search` cost per
// request type, one call at a time, without HTTP, the clip lookups or the query's embedding.

pub(crate) fn store_calls(a: &Args, data: &DataSet, store: &Store) {
    let t = Instant::now();
    let s = InsightStore::sqlite(&store.dir.join("insights.db")).unwrap();
    println!(
        "\nstore: opened in process in {:.2} s (the texts' embeddings loaded); {} calls per endpoint, one at a time",
        t.elapsed().as_secs_f64(),
        a.calls
    );
    let embedder = load_embedder();
    let _ = embedder.embed(&["warm up"]);
    let mut embed_ms = Vec::new();
    let mut vectors = HashMap::new();
    for q in SEARCHES {
        let t = Instant::now();
        let v = embedder.embed(&[q]).unwrap().remove(0);
        embed_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        vectors.insert(q, v);
    }
    embed_ms.sort_by(f64::total_cmp);
    println!(
        "store: /v1/search also embeds its query (MiniLM, one session): p50 {:.2} ms, max {:.2} ms over the {} queries; not counted below",
        pct(&embed_ms, 0.5),
        embed_ms.last().copied().unwrap_or(f64::NAN),
        SEARCHES.len()
    );
    // Queries that arrive together can share one run of the model.
    for batch in [2, 4, 8] {
        let mut per_query = Vec::new();
        for _ in 0..5 {
            for chunk in SEARCHES.chunks(batch) {
                let t = Instant::now();
                embedder.embed(chunk).unwrap();
                per_query.push(t.elapsed().as_secs_f64() * 1000.0 / chunk.len() as f64);
            }
        }
        per_query.sort_by(f64::total_cmp);
        println!(
            "store: the same queries embedded {batch} to a run: p50 {:.2} ms per query",
            pct(&per_query, 0.5)
        );
    }
    let ctx = LoadCtx {
        base: String::new(),
        data,
        min_ms: store.min_ms,
        max_ms: store.max_ms,
        recorded: recorded_cameras(data, a.recorded),
    };
    let mut rng = StdRng::seed_from_u64(SEED ^ 0x5707e);
    for (title, ops, _) in endpoints(a) {
        let mut samples = Vec::with_capacity(a.calls);
        for _ in 0..a.calls {
            let d = draw(&ctx, ops[rng.random_range(0..ops.len())], &mut rng);
            let (ms, found) = if let Some(text) = d.search {
                let t = Instant::now();
                let hits = s.search(&vectors[text], &d.filter, d.limit).unwrap();
                (t.elapsed(), Some(hits.len()))
            } else {
                let mut q = Query {
                    filter: d.filter.clone(),
                    q: d.words.map(str::to_string),
                    limit: d.limit,
                    cursor: None,
                };
                if d.page2 {
                    q.cursor = s.query(&q).unwrap().1;
                }
                let t = Instant::now();
                let page = (!d.page2 || q.cursor.is_some()).then(|| s.query(&q).unwrap().0);
                (t.elapsed(), page.map(|p| p.len()))
            };
            samples.push(Sample {
                op: d.op,
                variant: d.variant,
                ms: ms.as_secs_f64() * 1000.0,
                ok: found.is_some(),
                empty: found.is_none_or(|n| d.must_match && n == 0),
            });
        }
        println!(
            "\n| store calls for {title} | calls | p50 ms | p90 ms | p99 ms | max ms | no cursor | empty |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        let row = |name: &str, rows: &[&Sample]| {
            let mut ms: Vec<f64> = rows.iter().filter(|s| s.ok).map(|s| s.ms).collect();
            ms.sort_by(f64::total_cmp);
            println!(
                "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
                rows.len(),
                pct(&ms, 0.5),
                pct(&ms, 0.9),
                pct(&ms, 0.99),
                ms.last().copied().unwrap_or(f64::NAN),
                rows.iter().filter(|s| !s.ok).count(),
                rows.iter().filter(|s| s.ok && s.empty).count()
            );
        };
        let mut by_op: BTreeMap<Op, Vec<&Sample>> = BTreeMap::new();
        for s in &samples {
            by_op.entry(s.op).or_default().push(s);
        }
        for (op, rows) in &by_op {
            row(op.name(), rows);
        }
        row("**all**", &samples.iter().collect::<Vec<_>>());
        slowest(&samples);
    }
}

// --explain: the SQL behind each request type.

pub(crate) const COLUMNS: &str =
    "seq, id, camera, kind, ts, ts_end, label, text, confidence, bbox, snapshot, clip, model";

pub(crate) fn explain(store: &Store, data: &DataSet) {
    use rusqlite::types::Value as V;
    let db = store.dir.join("insights.db");
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let text_id = |body: &str| -> i64 {
        conn.query_row("SELECT id FROM texts WHERE body = ?1", [body], |r| r.get(0))
            .unwrap_or(0)
    };
    let busy = data.cameras[0].clone();
    let quiet = data.cameras[data.cameras.len() - 1].clone();
    let text_cam = data.cameras[1].clone();
    let order = " ORDER BY ts DESC, seq DESC LIMIT 51";
    let base = format!("SELECT {COLUMNS} FROM insights WHERE 1 = 1");
    let words = format!(
        "SELECT {COLUMNS} FROM insights_fts JOIN insights ON insights.seq = insights_fts.rowid WHERE insights_fts MATCH ?"
    );
    // A semantic search checks its best texts 64 at a time for insights passing the filters;
    // the labels are the worst batch for a camera that hears speech.
    let labels: Vec<i64> = LABELS.iter().take(64).map(|l| text_id(l)).collect();
    let labels = V::Text(serde_json::to_string(&labels).unwrap());
    let exists = "SELECT t.key FROM json_each(?) AS t WHERE EXISTS (SELECT 1 FROM insights WHERE text_id = t.value";
    let mid = (store.min_ms + store.max_ms) / 2;
    let page_cursor: (i64, i64) = conn
        .query_row(
            "SELECT ts, seq FROM insights WHERE camera = ?1 ORDER BY ts DESC, seq DESC LIMIT 1 OFFSET 49",
            [&busy],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap_or((store.max_ms, i64::MAX));
    let cases: Vec<(String, String, Vec<V>)> = vec![
        (
            format!("camera + kind ({busy}, text)"),
            format!("{base} AND camera = ? AND kind = ?{order}"),
            vec![V::Text(busy.clone()), V::Text("text".into())],
        ),
        (
            format!("camera + kind ({quiet}, speech: none)"),
            format!("{base} AND camera = ? AND kind = ?{order}"),
            vec![V::Text(quiet.clone()), V::Text("speech".into())],
        ),
        (
            "label + range (person, 1 h)".into(),
            format!("{base} AND label = ? AND coalesce(ts_end, ts) >= ? AND ts < ?{order}"),
            vec![
                V::Text("person".into()),
                V::Integer(mid - HOUR_MS),
                V::Integer(mid),
            ],
        ),
        (
            "label + range (giraffe, 1 h: rare)".into(),
            format!("{base} AND label = ? AND coalesce(ts_end, ts) >= ? AND ts < ?{order}"),
            vec![
                V::Text("giraffe".into()),
                V::Integer(mid - HOUR_MS),
                V::Integer(mid),
            ],
        ),
        (
            "label + range (bicycle, 1 h)".into(),
            format!("{base} AND label = ? AND coalesce(ts_end, ts) >= ? AND ts < ?{order}"),
            vec![
                V::Text("bicycle".into()),
                V::Integer(mid - HOUR_MS),
                V::Integer(mid),
            ],
        ),
        (
            "q=hangar".into(),
            format!("{words} ORDER BY insights_fts.rowid DESC LIMIT 51"),
            vec![V::Text("\"hangar\"".into())],
        ),
        (
            "q=person".into(),
            format!("{words} ORDER BY insights_fts.rowid DESC LIMIT 51"),
            vec![V::Text("\"person\"".into())],
        ),
        (
            format!("page 2 ({busy})"),
            format!("{base} AND camera = ? AND (ts < ? OR (ts = ? AND seq < ?)){order}"),
            vec![
                V::Text(busy.clone()),
                V::Integer(page_cursor.0),
                V::Integer(page_cursor.0),
                V::Integer(page_cursor.1),
            ],
        ),
        (
            "search, one text (person), no filter".into(),
            format!(
                "SELECT {COLUMNS} FROM insights WHERE text_id = ? ORDER BY ts DESC, seq DESC LIMIT 10"
            ),
            vec![V::Integer(text_id("person"))],
        ),
        (
            format!("search, one text (person) + camera {quiet}"),
            format!(
                "SELECT {COLUMNS} FROM insights WHERE text_id = ? AND camera = ? ORDER BY ts DESC, seq DESC LIMIT 10"
            ),
            vec![V::Integer(text_id("person")), V::Text(quiet.clone())],
        ),
        (
            format!("search, one text (EMERGENCY EXIT) + camera {text_cam} + kind text"),
            format!(
                "SELECT {COLUMNS} FROM insights WHERE text_id = ? AND camera = ? AND kind = ? ORDER BY ts DESC, seq DESC LIMIT 10"
            ),
            vec![
                V::Integer(text_id("EMERGENCY EXIT")),
                V::Text(text_cam.clone()),
                V::Text("text".into()),
            ],
        ),
        (
            format!("search, 64 texts (labels) checked + camera {busy} + kind speech"),
            format!("{exists} AND camera = ? AND kind = ?)"),
            vec![
                labels.clone(),
                V::Text(busy.clone()),
                V::Text("speech".into()),
            ],
        ),
        (
            "search, 64 texts (labels) checked + kind speech".into(),
            format!("{exists} AND kind = ?)"),
            vec![labels, V::Text("speech".into())],
        ),
        (
            "search, one text (car) + kind speech (none)".into(),
            format!(
                "SELECT {COLUMNS} FROM insights WHERE text_id = ? AND kind = ? ORDER BY ts DESC, seq DESC LIMIT 10"
            ),
            vec![V::Integer(text_id("car")), V::Text("speech".into())],
        ),
    ];
    println!("\nexplain: the SQL of each request type, in process (no HTTP), median of 5 runs");
    for (name, sql, params) in cases {
        let mut stmt = conn.prepare(&sql).unwrap();
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..5 {
            let t = Instant::now();
            rows = stmt
                .query_map(rusqlite::params_from_iter(params.iter()), |_| Ok(()))
                .unwrap()
                .count();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        let mut plan = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let steps: Vec<String> = plan
            .query_map(rusqlite::params_from_iter(params.iter()), |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .map_while(Result::ok)
            .collect();
        println!(
            "- {name}: {:.2} ms, {rows} rows\n    plan: {}",
            times[2],
            steps.join(" | ")
        );
    }
    // How many rows each search text has: a filter the text's rows rarely pass makes the
    // per-text query walk all of them.
    let person: i64 = conn
        .query_row(
            "SELECT count(*) FROM insights WHERE text_id = ?1",
            [text_id("person")],
            |r| r.get(0),
        )
        .unwrap_or(0);
    println!("  (rows with the text \"person\": {person})");
}
