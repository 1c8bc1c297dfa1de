//! `panoptes run` / `edge` / `infer` / `api`: wires the roles together in one process,
//! watches the config file for camera changes and shuts down in order on SIGTERM or Ctrl-C.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use notify::Watcher;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::bus::Bus;
use crate::config::{self, Config, InsightsKind};
use crate::edge::Edge;
use crate::edge::cluster::{self, Membership};
use crate::edge::status::CameraRegistry;
use crate::store::insights::InsightStore;
use crate::store::objects::ObjectStore;

/// Which roles this process runs.
#[derive(Debug, Clone, Copy)]
pub struct Roles {
    /// Camera ingest.
    pub edge: bool,
    /// The HTTP API.
    pub api: bool,
    /// Inference: sampled frames and audio become insights (when `infer.enabled`).
    pub infer: bool,
}

/// Runs until a shutdown signal.
pub async fn run(config_path: PathBuf, config: Config, roles: Roles) -> anyhow::Result<()> {
    let metrics = crate::telemetry::metrics();
    let store = ObjectStore::build(&config)
        .await
        .context("cannot open the object store")?;
    let orphans = std::fs::read_dir(store.spool_dir())
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
                .count()
        })
        .unwrap_or(0);
    if orphans > 0 {
        // A segment gets its index (moov) when it is closed; a crash leaves it without one.
        tracing::warn!(
            files = orphans,
            spool = %store.spool_dir().display(),
            "partial clips from an unclean stop are in the spool; they have no index and are not served"
        );
    }
    let bus = Bus::connect(&config)
        .await
        .context("cannot start the bus")?;
    let node = config
        .cluster
        .node
        .clone()
        .or_else(|| std::env::var("PANOPTES_NODE").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "local".into());
    let registry = Arc::new(CameraRegistry::new(&node));
    let shutdown = CancellationToken::new();

    let upkeep = {
        let m = metrics.clone();
        let token = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    biased;
                    _ = token.cancelled() => break,
                    _ = tick.tick() => m.run_upkeep(),
                }
            }
        })
    };

    let insights = if (roles.infer || roles.api) && config.infer.enabled {
        Some(start_insights(&config, &store, &bus, roles, &shutdown).await?)
    } else {
        None
    };

    // On a cluster bus, edge nodes share the cameras; otherwise this node runs them all.
    let membership = match (&bus, roles.edge) {
        (Bus::Nats(nats), true) => {
            let m = Membership::open(nats, &config.cluster, &node)
                .await
                .context("cannot join the cluster")?;
            m.beat().await.context("cannot join the cluster")?;
            tracing::info!(node = %node, "joined the cluster");
            Some(m)
        }
        _ => None,
    };
    let mut members: Vec<String> = match &membership {
        Some(m) => m.live().await.unwrap_or_else(|_| vec![node.clone()]),
        None => Vec::new(),
    };
    let owned =
        |cameras: &[config::CameraConfig], members: &[String]| -> Vec<config::CameraConfig> {
            if membership.is_none() {
                return cameras.to_vec();
            }
            cameras
                .iter()
                .filter(|c| cluster::owner(c, members) == Some(node.as_str()))
                .cloned()
                .collect()
        };

    let mut current = config.clone();
    let mut edge = if roles.edge {
        let mut edge = Edge::build(&config, store.clone(), bus.clone(), registry.clone())
            .context("cannot start the decoder pool")?;
        edge.apply(&owned(&config.cameras, &members)).await;
        tracing::info!(cameras = edge.camera_ids().len(), "edge started");
        Some(edge)
    } else {
        None
    };

    let configured = Arc::new(std::sync::RwLock::new(config.cameras.clone()));
    // Every role answers /healthz, /readyz and /metrics; the api role serves the rest.
    let api_task = {
        let listener = tokio::net::TcpListener::bind(config.api.listen)
            .await
            .with_context(|| format!("cannot listen on {} (api.listen)", config.api.listen))?;
        tracing::info!(listen = %config.api.listen, api = roles.api, "http listening");
        let cluster = match &bus {
            Bus::Nats(nats) if roles.api => Some(api::ClusterApi {
                cameras: cluster::ClusterCameras::open(nats, &config.cluster)
                    .await
                    .context("cannot read the cluster's cameras")?,
                configured: Arc::clone(&configured),
            }),
            _ => None,
        };
        let state = AppState {
            registry: registry.clone(),
            store: store.clone(),
            bus: bus.clone(),
            metrics: metrics.clone(),
            insights: insights.as_ref().and_then(|i| i.api.clone()),
            cluster,
        };
        let (token, full, api_config) = (shutdown.clone(), roles.api, config.api.clone());
        tokio::spawn(async move {
            if let Err(e) = api::serve(listener, state, full, &api_config, token).await {
                tracing::error!(error = %e, "api server failed");
            }
        })
    };

    let (reload_tx, mut reload_rx) = mpsc::channel::<()>(1);
    let _watcher = watch(&config_path, reload_tx);
    let mut applied = std::fs::read_to_string(&config_path).unwrap_or_default();
    // Fallback for filesystems without change notification.
    let mut poll = tokio::time::interval(Duration::from_secs(3));
    let mut signals = Signals::new()?;
    let mut heartbeat = tokio::time::interval(config.cluster.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = signals.next() => break,
            _ = reload_rx.recv() => {}
            _ = poll.tick() => {}
            _ = heartbeat.tick(), if membership.is_some() => {
                if let (Some(m), Some(edge)) = (&membership, &mut edge) {
                    if let Err(e) = m.beat().await {
                        tracing::warn!(error = %e, "cluster heartbeat failed");
                    }
                    if let Ok(live) = m.live().await
                        && live != members
                    {
                        tracing::info!(members = ?live, "cluster membership changed; rebalancing cameras");
                        members = live;
                        edge.apply(&owned(&current.cameras, &members)).await;
                        tracing::info!(cameras = edge.camera_ids().len(), "cameras owned by this node");
                    }
                    m.report(&registry.views()).await;
                }
                continue;
            }
        }
        // Editors write files in several steps: let the last one land.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let text = match std::fs::read_to_string(&config_path) {
            Ok(t) => t,
            Err(_) => continue,
        };
        if text == applied {
            continue;
        }
        applied = text;
        match config::load(&config_path) {
            Ok(new) => {
                let settings = |c: &Config| Config {
                    cameras: Vec::new(),
                    ..c.clone()
                };
                if settings(&new) != settings(&current) {
                    tracing::warn!(
                        "settings outside [[cameras]] changed; they take effect after a restart"
                    );
                }
                if let Some(edge) = &mut edge {
                    tracing::info!(
                        cameras = new.cameras.len(),
                        "config changed; applying camera changes"
                    );
                    edge.apply(&owned(&new.cameras, &members)).await;
                }
                if let Ok(mut c) = configured.write() {
                    c.clone_from(&new.cameras);
                }
                current = new;
            }
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!(error = %e, "config change ignored");
                }
            }
        }
    }

    tracing::info!("shutting down: stopping cameras and storing open clips");
    // A second signal means "now".
    tokio::spawn(async move {
        signals.next().await;
        tracing::warn!("second signal: exiting at once");
        std::process::exit(130);
    });
    if let Some(m) = &membership {
        // The other nodes take this node's cameras now rather than after member_ttl.
        m.leave().await;
    }
    if let Some(edge) = edge {
        edge.shutdown().await;
    }
    shutdown.cancel();
    if let Some(worker) = insights.and_then(|i| i.worker) {
        // The batch in hand is finished, stored and acknowledged.
        if tokio::time::timeout(Duration::from_secs(5), worker)
            .await
            .is_err()
        {
            tracing::warn!(
                "inference did not finish its batch within 5 s; the bus redelivers it after ack_wait"
            );
        }
    }
    if let Err(e) = bus.flush(Duration::from_secs(2)).await {
        tracing::warn!(error = %e, "bus: the last acknowledgements may not have reached the server");
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), api_task).await;
    let _ = upkeep.await;
    tracing::info!("stopped");
    Ok(())
}

/// The insight side of this process: the infer worker and/or what the api serves.
struct InsightRoles {
    api: Option<crate::api::insights::InsightApi>,
    worker: Option<tokio::task::JoinHandle<()>>,
}

/// Opens the insight store; for the infer role loads the models and starts the worker and
/// the retention sweep; for the api role loads the embedder (search) and starts the live
/// feed of new insights.
async fn start_insights(
    config: &Config,
    store: &ObjectStore,
    bus: &Bus,
    roles: Roles,
    shutdown: &CancellationToken,
) -> anyhow::Result<InsightRoles> {
    let (infer_cfg, models_cfg, infer_role) =
        (config.infer.clone(), config.models.clone(), roles.infer);
    let (models, embedder) = tokio::task::spawn_blocking(move || -> Result<_, crate::infer::Error> {
        if infer_role {
            let models = crate::infer::Models::load(&infer_cfg, &models_cfg)?;
            let embedder = Arc::clone(&models.embedder);
            Ok((Some(models), embedder))
        } else {
            let runtime = crate::infer::Runtime::new(&infer_cfg, &models_cfg)?;
            Ok((None, Arc::new(crate::infer::Embedder::load(&runtime)?)))
        }
    })
    .await?
    .context("cannot load the models (models/install.sh installs them; [infer] enabled = false runs without)")?;
    if let Some(models) = &models {
        tracing::info!(
            provider = ?models.runtime.provider(),
            threads = models.runtime.threads(),
            library = %models.runtime.library().display(),
            models = %models.runtime.dir().display(),
            "models loaded"
        );
    }
    let probe = Arc::clone(&embedder);
    let dim = tokio::task::spawn_blocking(move || probe.embed(&["panoptes"]))
        .await?
        .context("the text embedder does not run")?
        .first()
        .map_or(0, Vec::len);
    let insights = Arc::new(match config.insights.kind {
        InsightsKind::Sqlite => {
            let db = config.data_dir.join("insights.db");
            InsightStore::sqlite(&db)
                .with_context(|| format!("cannot open the insight store {}", db.display()))?
        }
        InsightsKind::Qdrant => InsightStore::qdrant(&config.insights, dim)
            .await
            .context("cannot open the Qdrant insight store")?,
    });

    let worker = models.map(|models| {
        let worker = crate::infer::worker::Worker::new(
            Arc::new(models),
            Arc::clone(&insights),
            store.clone(),
            bus.clone(),
            &config.infer,
            config.sampling.interval,
        );
        start_retention(config, &insights, store, shutdown);
        tokio::spawn(worker.run(shutdown.clone()))
    });

    let api = if roles.api {
        // Stored insights come back over the bus (from this process or another node) and
        // go out to every /v1/events listener.
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let mut feed = bus.live(crate::bus::StreamKind::Insights).await?;
        let tx = events.clone();
        let token = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let d = tokio::select! {
                    biased;
                    _ = token.cancelled() => break,
                    d = feed.next(Duration::from_millis(500)) => d,
                };
                let Some(d) = d else { continue };
                if let Ok(i) = serde_json::from_slice(&d.message().payload) {
                    let _ = tx.send(i);
                }
                let _ = d.ack().await;
            }
        });
        let queries = crate::infer::QueryEmbedder::new(embedder)
            .context("cannot start the search query embedder")?;
        Some(crate::api::insights::InsightApi {
            store: insights,
            embedder: Some(Arc::new(queries)),
            events,
            closing: shutdown.clone(),
        })
    } else {
        None
    };
    Ok(InsightRoles { api, worker })
}

/// Deletes insights, clips and snapshots older than `infer.retention`, hourly.
fn start_retention(
    config: &Config,
    insights: &Arc<InsightStore>,
    objects: &ObjectStore,
    shutdown: &CancellationToken,
) {
    let (retention, sweep_store, token, objects) = (
        config.infer.retention,
        Arc::clone(insights),
        shutdown.clone(),
        objects.clone(),
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                biased;
                _ = token.cancelled() => break,
                _ = tick.tick() => {}
            }
            let cutoff = chrono::Utc::now().timestamp_millis()
                - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
            let (s, o) = (Arc::clone(&sweep_store), objects.clone());
            let swept = tokio::task::spawn_blocking(move || {
                (s.delete_before(cutoff), o.delete_before(cutoff))
            })
            .await;
            if let Ok((Ok(insights), files)) = swept
                && (insights > 0 || files > 0)
            {
                tracing::info!(
                    insights,
                    files,
                    "retention: deleted what is older than infer.retention"
                );
            }
        }
    });
}

fn watch(path: &Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let name = path.file_name()?.to_os_string();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && ev.paths.iter().any(|p| p.file_name() == Some(&name))
        {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "config file watch unavailable; polling"))
    .ok()?;
    // The directory, not the file: editors replace files by renaming.
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| tracing::warn!(error = %e, "config file watch unavailable; polling"))
        .ok()?;
    Some(watcher)
}

/// SIGTERM and Ctrl-C.
struct Signals {
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot install the SIGTERM handler")?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
}
