//! The insight-store behaviour tests, run against every backend: SQLite, and a real Qdrant
//! server (see `QdrantServer`: `PANOPTES_TEST_QDRANT_URL`, or a `qdrant` binary started on
//! free loopback ports; without either the Qdrant tests print that they skipped).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use common::services::QdrantServer;
use panoptes::config::{InsightsConfig, InsightsKind};
use panoptes::geometry::BBox;
use panoptes::store::insights::{Filter, Insight, InsightStore, Kind, Query, insight_id};

fn from_ms(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(v).unwrap()
}

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
fn unit4(v: [f32; 4]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

/// What every insight store does, whatever the backend: `s` starts empty and takes
/// 4-dimensional embeddings.
fn behaves_like_an_insight_store(s: &InsightStore) {
    assert_eq!(s.count().unwrap(), 0);
    let ts = |items: &[Insight]| {
        items
            .iter()
            .map(|i| i.ts.timestamp_millis())
            .collect::<Vec<_>>()
    };
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
            .map(|(i, sim)| {
                (
                    i.body().unwrap_or("-").to_string(),
                    i.ts.timestamp_millis(),
                    sim,
                )
            })
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
    let dir = tempfile::tempdir().unwrap();
    let s = InsightStore::sqlite(&dir.path().join("insights.db")).unwrap();
    behaves_like_an_insight_store(&s);
}

/// A collection of its own on `server`, deleted again by [`drop_collection`].
fn qdrant_config(server: &QdrantServer) -> InsightsConfig {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    InsightsConfig {
        kind: InsightsKind::Qdrant,
        url: server.url(),
        api_key: std::env::var("PANOPTES_TEST_QDRANT_API_KEY")
            .ok()
            .map(|k| serde_json::from_value(k.into()).unwrap()),
        collection: format!("panoptes_test_{}_{nanos}", std::process::id()),
    }
}

async fn drop_collection(store: &InsightStore) {
    let InsightStore::Qdrant(q) = store else {
        unreachable!("built as a Qdrant store")
    };
    q.store().drop_collection().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_behaves_like_an_insight_store() {
    let Some(server) = QdrantServer::start("qdrant_behaves_like_an_insight_store") else {
        return;
    };
    let config = qdrant_config(&server);
    let store = Arc::new(InsightStore::qdrant(&config, 4).await.unwrap());
    let s = Arc::clone(&store);
    let outcome = tokio::task::spawn_blocking(move || behaves_like_an_insight_store(&s)).await;
    // Connecting again checks the collection, and a different size is refused.
    let again = InsightStore::qdrant(&config, 4).await;
    let other_size = InsightStore::qdrant(&config, 8).await;
    drop_collection(&store).await;
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

/// SIGKILL of the server between two writes: what it acknowledged before is all there after
/// the restart, the same store (and its connection) keeps working, and no id is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_restart_loses_no_acknowledged_insight() {
    let Some(mut server) = QdrantServer::start("qdrant_restart_loses_no_acknowledged_insight")
    else {
        return;
    };
    if !server.is_ours() {
        eprintln!(
            "skipped qdrant_restart_loses_no_acknowledged_insight: the server at              PANOPTES_TEST_QDRANT_URL cannot be restarted by the test"
        );
        return;
    }
    let config = qdrant_config(&server);
    let store = Arc::new(InsightStore::qdrant(&config, 4).await.unwrap());
    let batch = |from: i64, n: i64| -> Vec<Insight> {
        (from..from + n)
            .map(|k| insight("gate", Kind::Text, 1000 * k, &format!("PLATE {}", k % 7)))
            .collect()
    };
    let emb: HashMap<String, Vec<f32>> = (0..7)
        .map(|k| (format!("PLATE {k}"), unit4([1.0, k as f32, 0.5, 0.0])))
        .collect();
    let write = |items: Vec<Insight>| {
        let (s, emb) = (Arc::clone(&store), emb.clone());
        tokio::task::spawn_blocking(move || s.upsert(&items, &emb))
    };
    write(batch(0, 200)).await.unwrap().unwrap();
    let s = Arc::clone(&store);
    tokio::task::spawn_blocking(move || assert_eq!(s.count().unwrap(), 200))
        .await
        .unwrap();

    server.kill();
    // While it is down a write fails with an error naming the server; nothing panics.
    let e = write(batch(200, 10))
        .await
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(e.contains(&server.url()), "{e}");
    server.start_again();

    // The store keeps working after the restart: the write that failed is retried, as the
    // bus redelivers unacknowledged work, and the first batch comes again, as a redelivery
    // of work whose acknowledgement was lost would; neither adds an insight twice.
    common::wait_for(
        std::time::Duration::from_secs(30),
        "a write to the restarted server",
        || {
            let s = Arc::clone(&store);
            let (items, emb) = (batch(200, 100), emb.clone());
            std::thread::spawn(move || s.upsert(&items, &emb))
                .join()
                .unwrap()
                .ok()
        },
    );
    write(batch(0, 200)).await.unwrap().unwrap();
    let s = Arc::clone(&store);
    let outcome = tokio::task::spawn_blocking(move || {
        assert_eq!(s.count().unwrap(), 300);
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let (page, next) = s
                .query(&Query {
                    limit: 64,
                    cursor,
                    ..Default::default()
                })
                .unwrap();
            seen.extend(page.into_iter().map(|i| i.id));
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let want: HashSet<Uuid> = batch(0, 300).iter().map(|i| i.id).collect();
        assert_eq!(seen.len(), 300, "every insight listed once");
        assert_eq!(seen.iter().copied().collect::<HashSet<_>>(), want);
        // Search still finds texts embedded before the restart.
        let hits = s
            .search(&unit4([1.0, 3.0, 0.5, 0.0]), &Filter::default(), 1)
            .unwrap();
        assert_eq!(hits[0].0.text.as_deref(), Some("PLATE 3"));
    })
    .await;
    drop_collection(&store).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
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
