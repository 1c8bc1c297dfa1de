//! Cluster mode with real processes: nats-server (JetStream), an S3 server (moto), two
//! `panoptes edge` nodes, one `panoptes infer` and one `panoptes api`, over replayed cameras;
//! then the same roles with the insights in a real Qdrant server, restarted mid-run.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::flow::{self, all_ids, all_items, items};
use common::services::{MotoServer, NatsServer, QdrantServer};
use common::{Panoptes, Replay, fixtures, models, wait_for};

const BUCKET: &str = "panoptes";

/// camera id -> owner node, once every camera streams.
fn owners(api: &Panoptes, cameras: usize) -> Option<BTreeMap<String, String>> {
    let cams = items(&api.get("/v1/cameras"));
    let streaming: BTreeMap<String, String> = cams
        .iter()
        .filter(|c| c["state"] == "streaming")
        .filter_map(|c| {
            Some((
                c["id"].as_str()?.to_string(),
                c["owner"].as_str()?.to_string(),
            ))
        })
        .collect();
    (streaming.len() == cameras).then_some(streaming)
}

#[test]
fn cluster_shares_cameras_survives_failures_and_answers() {
    let fx = fixtures();
    let models = models();
    let nats = NatsServer::start();
    let mut s3 = MotoServer::start();
    s3.create_bucket(BUCKET);
    let replay = Replay::start(&[fx.join("lobby.mp4"), fx.join("photos.mp4")], 1);

    // lobby and photos carry the checked content; four more cameras give the nodes a share
    // each, sampled rarely and without audio so inference keeps up on small machines.
    let mut cameras = format!(
        "[[cameras]]\nid = \"lobby\"\nurl = \"{}\"\n\n[[cameras]]\nid = \"photos\"\nurl = \"{}\"\n",
        replay.url("lobby"),
        replay.url("photos")
    );
    for i in 1..=4 {
        cameras.push_str(&format!(
            "\n[[cameras]]\nid = \"gate-{i}\"\nurl = \"{}\"\naudio = false\nsample_interval = \"60s\"\n",
            replay.url("photos")
        ));
    }
    let n_cameras = 6;
    let extra = format!(
        "[bus]\nkind = \"nats\"\nurl = \"{}\"\n\n\
         [store]\nkind = \"s3\"\n\n[store.s3]\nbucket = \"{BUCKET}\"\nendpoint = \"{}\"\npath_style = true\n\
         access_key_id = \"test\"\nsecret_access_key = \"${{S3_SECRET}}\"\n\n\
         [cluster]\nheartbeat = \"1s\"\nmember_ttl = \"4s\"\n\n\
         [sampling]\ninterval = \"2s\"\n\n[recording]\nsegment = \"4s\"\n\n[infer]\nenabled = true\n",
        nats.url(),
        s3.url()
    );
    let models_env = ("PANOPTES_MODELS", models.to_str().unwrap());
    let secret = ("S3_SECRET", "cluster-test-secret");
    let shared = tempfile::tempdir().unwrap();
    let edge = |node: &str| {
        Panoptes::start_role(
            "edge",
            None,
            &extra,
            &cameras,
            &[("PANOPTES_NODE", node), secret],
        )
    };
    let edge_a = edge("edge-a");
    let mut edge_b = edge("edge-b");
    let infer = Panoptes::start_role(
        "infer",
        Some(shared.path()),
        &extra,
        &cameras,
        &[models_env, secret, ("PANOPTES_NODE", "infer-1")],
    );
    let api = Panoptes::start_role(
        "api",
        Some(shared.path()),
        &extra,
        &cameras,
        &[models_env, secret, ("PANOPTES_NODE", "api-1")],
    );

    // The cameras are split between the two edge nodes, as seen from the api node.
    let split = wait_for(Duration::from_secs(60), "every camera streaming", || {
        owners(&api, n_cameras)
    });
    let nodes: HashSet<&str> = split.values().map(String::as_str).collect();
    assert_eq!(
        nodes,
        HashSet::from(["edge-a", "edge-b"]),
        "both edge nodes run cameras: {split:?}"
    );

    // The whole insight flow, through the bus, the shared store and S3.
    flow::check_answers(&api, &infer, &fx);
    let clips = wait_for(Duration::from_secs(30), "clips in the bucket", || {
        let keys = s3.keys(BUCKET, "clips/lobby/");
        (!keys.is_empty()).then_some(keys)
    });
    assert!(clips.iter().all(|k| k.ends_with(".mp4")), "{clips:?}");

    // A dead edge node's cameras move to the live one; the others stay where they are.
    edge_b.kill();
    let moved = wait_for(
        Duration::from_secs(45),
        "edge-b's cameras to stream on edge-a",
        || owners(&api, n_cameras).filter(|o| o.values().all(|n| n == "edge-a")),
    );
    assert_eq!(moved.len(), n_cameras);
    // Back again: only its share returns.
    edge_b.start_again();
    let back = wait_for(Duration::from_secs(45), "edge-b's share to return", || {
        owners(&api, n_cameras).filter(|o| *o == split)
    });
    assert_eq!(back, split);

    // NATS restarts mid-run: frames sampled meanwhile are counted as dropped, every stored
    // insight stays, and no id appears twice.
    let before = all_ids(&api);
    let dropped_before = edge_a.metric("panoptes_bus_dropped_total{");
    nats_restart(nats, &edge_a, dropped_before, &api, &before);

    // The object store goes away for 30 s: clips wait in the edge nodes' spools and are all
    // uploaded when it is back (moto keeps objects in memory, so it comes back empty).
    let down_at = chrono::Utc::now().timestamp_millis();
    s3.kill();
    std::thread::sleep(Duration::from_secs(30));
    s3.start_again();
    s3.create_bucket(BUCKET);
    let back_at = chrono::Utc::now().timestamp_millis();
    let spans = wait_for(
        Duration::from_secs(90),
        "the clips recorded during the outage in the bucket",
        || {
            let mut spans: Vec<(i64, i64)> = s3
                .keys(BUCKET, "clips/lobby/")
                .iter()
                .filter_map(|k| {
                    let (a, b) = k
                        .rsplit('/')
                        .next()?
                        .strip_suffix(".mp4")?
                        .split_once('-')?;
                    Some((a.parse().ok()?, b.parse().ok()?))
                })
                .filter(|&(a, b): &(i64, i64)| b > down_at && a < back_at)
                .collect();
            spans.sort_unstable();
            let covered = spans.first().is_some_and(|f| f.0 <= down_at)
                && spans.last().is_some_and(|l| l.1 >= back_at);
            covered.then_some(spans)
        },
    );
    for w in spans.windows(2) {
        assert_eq!(w[0].1, w[1].0, "a clip is missing between {w:?}: {spans:?}");
    }
    for edge in [&edge_a, &edge_b] {
        wait_for(Duration::from_secs(60), "an empty upload spool", || {
            (edge.metric("panoptes_store_pending_uploads") == 0.0).then_some(())
        });
    }

    drop(infer);
}

fn nats_restart(
    mut nats: NatsServer,
    edge: &Panoptes,
    dropped_before: f64,
    api: &Panoptes,
    before: &[String],
) {
    nats.kill();
    wait_for(
        Duration::from_secs(20),
        "samples counted as dropped while NATS is down",
        || (edge.metric("panoptes_bus_dropped_total{") > dropped_before).then_some(()),
    );
    nats.start_again();
    after_restart(api, before, "NATS");
    // The api node reports the bus as ready again.
    wait_for(Duration::from_secs(20), "api /readyz", || {
        (api.get_bytes("/readyz").0 == 200).then_some(())
    });
}

/// The cluster with `insights.kind = "qdrant"`: the whole insight flow through a real Qdrant
/// server, which is then killed (SIGKILL) and restarted under the running roles: every
/// insight stored before is still there, none twice, and new ones keep coming.
#[test]
fn cluster_on_qdrant_answers_and_survives_a_qdrant_restart() {
    let Some(mut qdrant) =
        QdrantServer::start("cluster_on_qdrant_answers_and_survives_a_qdrant_restart")
    else {
        return;
    };
    let fx = fixtures();
    let models = models();
    let nats = NatsServer::start();
    let s3 = MotoServer::start();
    s3.create_bucket(BUCKET);
    let replay = Replay::start(&[fx.join("lobby.mp4"), fx.join("photos.mp4")], 1);
    let cameras = format!(
        "[[cameras]]\nid = \"lobby\"\nurl = \"{}\"\n\n[[cameras]]\nid = \"photos\"\nurl = \"{}\"\n",
        replay.url("lobby"),
        replay.url("photos")
    );
    let collection = format!("panoptes_cluster_{}", std::process::id());
    let extra = format!(
        "[bus]\nkind = \"nats\"\nurl = \"{}\"\n\n\
         [store]\nkind = \"s3\"\n\n[store.s3]\nbucket = \"{BUCKET}\"\nendpoint = \"{}\"\npath_style = true\n\
         access_key_id = \"test\"\nsecret_access_key = \"${{S3_SECRET}}\"\n\n\
         [insights]\nkind = \"qdrant\"\nurl = \"{}\"\ncollection = \"{collection}\"\n\n\
         [sampling]\ninterval = \"2s\"\n\n[recording]\nsegment = \"4s\"\n\n[infer]\nenabled = true\n",
        nats.url(),
        s3.url(),
        qdrant.url(),
    );
    let models_env = ("PANOPTES_MODELS", models.to_str().unwrap());
    let secret = ("S3_SECRET", "cluster-test-secret");
    let _edge = Panoptes::start_role(
        "edge",
        None,
        &extra,
        &cameras,
        &[("PANOPTES_NODE", "edge-a"), secret],
    );
    let infer = Panoptes::start_role(
        "infer",
        None,
        &extra,
        &cameras,
        &[models_env, secret, ("PANOPTES_NODE", "infer-1")],
    );
    let api = Panoptes::start_role(
        "api",
        None,
        &extra,
        &cameras,
        &[models_env, secret, ("PANOPTES_NODE", "api-1")],
    );
    wait_for(Duration::from_secs(60), "both cameras streaming", || {
        owners(&api, 2)
    });
    // The api and infer nodes have no data directory in common: every answer comes from
    // Qdrant.
    flow::check_answers(&api, &infer, &fx);

    if !qdrant.is_ours() {
        eprintln!("skipped the Qdrant restart: the server at PANOPTES_TEST_QDRANT_URL is not ours");
        return;
    }
    let before = all_ids(&api);
    assert!(!before.is_empty());
    eprintln!("killing Qdrant with {} insights stored", before.len());
    let failures_before = infer.metric("panoptes_infer_errors_total{");
    qdrant.kill();
    // Writes fail while it is down (the frames go back to the bus for another try).
    wait_for(
        Duration::from_secs(30),
        "inference to notice Qdrant is down",
        || (infer.metric("panoptes_infer_errors_total{") > failures_before).then_some(()),
    );
    qdrant.start_again();
    let after = after_restart(&api, &before, "Qdrant");
    eprintln!(
        "after the Qdrant restart: {} insights, all {} from before among them",
        after.len(),
        before.len()
    );
}

/// After `what` came back: waits until the api lists an insight seen since, then checks
/// that every insight listed `before` is still listed and none twice. Returns the ids now.
fn after_restart(api: &Panoptes, before: &[String], what: &str) -> Vec<String> {
    let back = chrono::Utc::now().timestamp_millis();
    wait_for(
        Duration::from_secs(90),
        &format!("insights seen after {what} came back"),
        || {
            let (status, _) = api.get_bytes("/v1/insights?limit=1");
            (status == 200).then_some(())?;
            all_items(api)
                .iter()
                .any(|i| flow::last_seen_ms(i) > back)
                .then_some(())
        },
    );
    let after = all_ids(api);
    let unique: HashSet<&String> = after.iter().collect();
    assert_eq!(unique.len(), after.len(), "an id is listed twice");
    let lost: Vec<&String> = before.iter().filter(|id| !unique.contains(id)).collect();
    assert!(lost.is_empty(), "lost across the {what} restart: {lost:?}");
    after
}
