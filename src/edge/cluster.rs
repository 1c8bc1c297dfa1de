//! Edge nodes sharing cameras.
//!
//! Each edge node renews a key in the `panoptes_members` key-value bucket every
//! `cluster.heartbeat`; the bucket's max age is `cluster.member_ttl`, so a node that stops
//! renewing disappears on its own. A camera belongs to the live node with the highest
//! rendezvous score for (camera, node), or to the node its config pins it to. When a node
//! joins or leaves, only the cameras whose best node changed move.
//!
//! Edge nodes also publish the state of the cameras they run to `panoptes_cameras`, so any
//! api node can show every camera with its owner.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::bus::{BusError, NatsBus};
use crate::config::{CameraConfig, ClusterConfig};
use crate::edge::status::CameraView;

/// Members: one key per live edge node.
pub const MEMBERS_BUCKET: &str = "panoptes_members";
/// Camera state as last reported by the owning node.
pub const CAMERAS_BUCKET: &str = "panoptes_cameras";

/// The rendezvous score of `node` for `camera`: stable across processes and versions.
pub fn score(camera: &str, node: &str) -> u64 {
    // FNV-1a over "camera \0 node", then a 64-bit finaliser (splitmix64) to spread it.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in camera.bytes().chain([0u8]).chain(node.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The node that runs `camera` among the live `nodes`: its pinned node if that one is live,
/// otherwise the highest score. `None` when no node may run it.
pub fn owner<'a>(camera: &CameraConfig, nodes: &'a [String]) -> Option<&'a str> {
    if let Some(pinned) = &camera.node {
        return nodes.iter().find(|n| *n == pinned).map(String::as_str);
    }
    nodes
        .iter()
        .max_by_key(|n| (score(&camera.id, n), n.as_str()))
        .map(String::as_str)
}

/// What a member writes about itself.
#[derive(Debug, Serialize, Deserialize)]
struct Member {
    node: String,
    since: chrono::DateTime<chrono::Utc>,
}

/// This node's membership and the cluster's shared camera state.
pub struct Membership {
    node: String,
    members: kv::Store,
    cameras: kv::Store,
    since: chrono::DateTime<chrono::Utc>,
}

async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
) -> Result<kv::Store, BusError> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    // The bucket's stream, as the client's create_key_value makes it; made directly because
    // that call first reads account details that nats-server 2.9 reports in an older form.
    let config = jetstream::stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: jetstream::stream::StorageType::Memory,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: 1,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    if let Err(e) = js.create_stream(config).await {
        // Another node may have made it meanwhile.
        if js.get_key_value(name).await.is_err() {
            return Err(BusError::Nats(format!(
                "cannot create key-value bucket {name}: {e}"
            )));
        }
    }
    js.get_key_value(name)
        .await
        .map_err(|e| BusError::Nats(format!("cannot open key-value bucket {name}: {e}")))
}

impl Membership {
    /// Opens the buckets (creating them on first use).
    pub async fn open(
        bus: &NatsBus,
        cluster: &ClusterConfig,
        node: &str,
    ) -> Result<Self, BusError> {
        let js = bus.jetstream();
        let members = bucket(js, MEMBERS_BUCKET, cluster.member_ttl).await?;
        // Camera state outlives one missed report but not a dead node by long.
        let cameras = bucket(js, CAMERAS_BUCKET, cluster.member_ttl * 3).await?;
        Ok(Membership {
            node: node.to_string(),
            members,
            cameras,
            since: chrono::Utc::now(),
        })
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Renews this node's membership.
    pub async fn beat(&self) -> Result<(), BusError> {
        let body = serde_json::to_vec(&Member {
            node: self.node.clone(),
            since: self.since,
        })
        .unwrap_or_default();
        self.members
            .put(&self.node, Bytes::from(body))
            .await
            .map(|_| ())
            .map_err(|e| BusError::Unavailable(e.to_string()))
    }

    /// The live members, sorted.
    pub async fn live(&self) -> Result<Vec<String>, BusError> {
        live_keys(&self.members).await
    }

    /// Leaves at once (on shutdown), so the others take the cameras without waiting.
    pub async fn leave(&self) {
        let _ = self.members.purge(&self.node).await;
    }

    /// Reports the state of the cameras this node runs.
    pub async fn report(&self, views: &[CameraView]) {
        for v in views {
            if let Ok(body) = serde_json::to_vec(v) {
                let _ = self.cameras.put(&v.id, Bytes::from(body)).await;
            }
        }
    }
}

async fn live_keys(store: &kv::Store) -> Result<Vec<String>, BusError> {
    let mut keys = store
        .keys()
        .await
        .map_err(|e| BusError::Unavailable(e.to_string()))?;
    let mut out = Vec::new();
    while let Some(k) = keys.next().await {
        match k {
            Ok(k) => out.push(k),
            Err(e) => return Err(BusError::Unavailable(e.to_string())),
        }
    }
    out.sort();
    Ok(out)
}

/// The cluster's camera state as the api role reads it.
#[derive(Clone)]
pub struct ClusterCameras {
    members: kv::Store,
    cameras: kv::Store,
    bus: NatsBus,
}

impl ClusterCameras {
    /// Opens the buckets.
    pub async fn open(bus: &NatsBus, cluster: &ClusterConfig) -> Result<Self, BusError> {
        let js = bus.jetstream();
        Ok(ClusterCameras {
            members: bucket(js, MEMBERS_BUCKET, cluster.member_ttl).await?,
            cameras: bucket(js, CAMERAS_BUCKET, cluster.member_ttl * 3).await?,
            bus: bus.clone(),
        })
    }

    /// The views of `configured` cameras: as reported by their owner, or, for a camera no
    /// live node has reported, a view in state `unassigned` with the owner it should have.
    pub async fn views(&self, configured: &[CameraConfig]) -> Vec<serde_json::Value> {
        let nodes = live_keys(&self.members).await.unwrap_or_default();
        let mut out = Vec::with_capacity(configured.len());
        for cam in configured.iter().filter(|c| c.enabled) {
            let owner = owner(cam, &nodes);
            let reported = self
                .cameras
                .get(cam.id.clone())
                .await
                .ok()
                .flatten()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .filter(|v| owner.is_some() && v["owner"].as_str() == owner);
            out.push(reported.unwrap_or_else(|| {
                serde_json::json!({
                    "id": cam.id,
                    "state": if owner.is_some() { "connecting" } else { "unassigned" },
                    "state_since": null,
                    "url": cam.display_url(),
                    "owner": owner,
                    "video": null,
                    "audio": null,
                    "frames_received": 0,
                    "keyframes": 0,
                    "samples": 0,
                    "dropped": 0,
                    "reconnects": 0,
                    "clips": 0,
                    "bytes_received": 0,
                    "audio_chunks": 0,
                    "stream_errors": 0,
                    "stream_errors_by_kind": {},
                    "parameter_changes": 0,
                    "last_frame_at": null,
                    "last_snapshot_at": null,
                    "last_error_kind": null,
                    "last_error_at": null,
                    "last_error": if owner.is_none() && cam.node.is_some() {
                        Some(format!("pinned to node {:?}, which is not running", cam.node.as_deref().unwrap_or_default()))
                    } else { None },
                })
            }));
        }
        out
    }

    /// The newest sampled frame of a camera, from the FRAMES stream.
    pub async fn snapshot(&self, camera: &str) -> Option<(Bytes, Option<i64>)> {
        let m = self
            .bus
            .last_on(&crate::bus::StreamKind::Frames.subject(camera))
            .await?;
        let at = m.header("capture-ns").and_then(|v| v.parse::<i64>().ok());
        Some((m.payload, at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cam(id: &str, node: Option<&str>) -> CameraConfig {
        let text = format!(
            "[[cameras]]\nid = \"{id}\"\nurl = \"rtsp://127.0.0.1/{id}\"\n{}",
            node.map(|n| format!("node = \"{n}\"\n"))
                .unwrap_or_default()
        );
        crate::config::load_str(&text, "t.toml", &|_| None)
            .unwrap()
            .cameras
            .remove(0)
    }

    #[test]
    fn scores_are_stable() {
        // Fixed values: a change would move cameras between nodes after an upgrade.
        assert_eq!(score("lobby", "edge-a"), score("lobby", "edge-a"));
        assert_ne!(score("lobby", "edge-a"), score("lobby", "edge-b"));
        assert_ne!(score("lobby", "edge-a"), score("edge-a", "lobby"));
        assert_eq!(score("lobby", "edge-a"), 0x943b_1351_0286_d095);
    }

    #[test]
    fn only_the_leavers_cameras_move() {
        let cams: Vec<CameraConfig> = (0..200).map(|i| cam(&format!("cam-{i}"), None)).collect();
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let two: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let before: Vec<&str> = cams.iter().map(|c| owner(c, &three).unwrap()).collect();
        let after: Vec<&str> = cams.iter().map(|c| owner(c, &two).unwrap()).collect();
        let mut per_node = std::collections::HashMap::new();
        for (b, a) in before.iter().zip(&after) {
            *per_node.entry(*b).or_insert(0) += 1;
            if *b != "c" {
                assert_eq!(b, a, "a camera of a staying node moved");
            } else {
                assert_ne!(*a, "c");
            }
        }
        // Shares are roughly even: each node gets 200/3 +- 40%.
        for n in ["a", "b", "c"] {
            let k = per_node[n];
            assert!((40..=94).contains(&k), "node {n} got {k} of 200 cameras");
        }
    }

    #[test]
    fn pinned_cameras_wait_for_their_node() {
        let pinned = cam("dock", Some("edge-b"));
        let nodes: Vec<String> = ["edge-a", "edge-b"].map(String::from).to_vec();
        assert_eq!(owner(&pinned, &nodes), Some("edge-b"));
        assert_eq!(owner(&pinned, &nodes[..1]), None);
        assert_eq!(owner(&cam("x", None), &[]), None);
    }
}
