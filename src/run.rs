//! `panoptes run` / `panoptes edge`: wires the stages together in one process, watches the
//! config file for camera changes and shuts down in order on SIGTERM or Ctrl-C.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use notify::Watcher;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::bus::Bus;
use crate::config::{self, Config};
use crate::edge::Edge;
use crate::edge::status::CameraRegistry;
use crate::store::ObjectStore;

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
    let store = ObjectStore::local(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
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
    let bus = Bus::build(&config.bus);
    let node = std::env::var("PANOPTES_NODE")
        .ok()
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

    let infer = if roles.infer && config.infer.enabled {
        Some(start_infer(&config, &store, &bus, &shutdown).await?)
    } else {
        None
    };

    let mut current = config.clone();
    let mut edge = if roles.edge {
        let mut edge = Edge::build(&config, store.clone(), bus.clone(), registry.clone())
            .context("cannot start the decoder pool")?;
        edge.apply(&config.cameras).await;
        tracing::info!(cameras = edge.camera_ids().len(), "edge started");
        Some(edge)
    } else {
        None
    };

    let api_task = if roles.api {
        let listener = tokio::net::TcpListener::bind(config.api.listen)
            .await
            .with_context(|| format!("cannot listen on {} (api.listen)", config.api.listen))?;
        tracing::info!(listen = %config.api.listen, "api listening");
        let state = AppState {
            registry: registry.clone(),
            store: store.clone(),
            bus: bus.clone(),
            metrics: metrics.clone(),
            insights: infer.as_ref().map(|i| i.api.clone()),
        };
        let token = shutdown.clone();
        Some(tokio::spawn(async move {
            if let Err(e) = api::serve(listener, state, token).await {
                tracing::error!(error = %e, "api server failed");
            }
        }))
    } else {
        None
    };

    let (reload_tx, mut reload_rx) = mpsc::channel::<()>(1);
    let _watcher = watch(&config_path, reload_tx);
    let mut applied = std::fs::read_to_string(&config_path).unwrap_or_default();
    // Fallback for filesystems without change notification.
    let mut poll = tokio::time::interval(Duration::from_secs(3));
    let mut signals = Signals::new()?;
    loop {
        tokio::select! {
            _ = signals.next() => break,
            _ = reload_rx.recv() => {}
            _ = poll.tick() => {}
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
                    edge.apply(&new.cameras).await;
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
    if let Some(edge) = edge {
        edge.shutdown().await;
    }
    shutdown.cancel();
    if let Some(i) = infer {
        // The batch in hand is finished, stored and acknowledged.
        let _ = tokio::time::timeout(Duration::from_secs(5), i.worker).await;
    }
    if let Some(t) = api_task {
        let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
    }
    let _ = upkeep.await;
    tracing::info!("stopped");
    Ok(())
}

/// The running infer role.
struct InferRole {
    api: crate::api::insights::InsightApi,
    worker: tokio::task::JoinHandle<()>,
}

/// Loads the models, opens the insight store and starts the worker, the live feed of new
/// insights and the retention sweep.
async fn start_infer(
    config: &Config,
    store: &ObjectStore,
    bus: &Bus,
    shutdown: &CancellationToken,
) -> anyhow::Result<InferRole> {
    let (infer_cfg, models_cfg) = (config.infer.clone(), config.models.clone());
    let models = tokio::task::spawn_blocking(move || {
        crate::infer::Models::load(&infer_cfg, &models_cfg)
    })
    .await?
    .context("cannot load the models (models/install.sh installs them; [infer] enabled = false runs without)")?;
    tracing::info!(
        provider = ?models.runtime.provider(),
        threads = models.runtime.threads(),
        library = %models.runtime.library().display(),
        models = %models.runtime.dir().display(),
        "models loaded"
    );
    let db = config.data_dir.join("insights.db");
    let insights = Arc::new(
        crate::store::insights::InsightStore::sqlite(&db)
            .with_context(|| format!("cannot open the insight store {}", db.display()))?,
    );
    let models = Arc::new(models);
    let (events, _) = tokio::sync::broadcast::channel(1024);
    let worker = crate::infer::worker::Worker::new(
        Arc::clone(&models),
        Arc::clone(&insights),
        store.clone(),
        bus.clone(),
        &config.infer,
        config.sampling.interval,
    );
    let worker = tokio::spawn(worker.run(shutdown.clone()));

    // Stored insights come back over the bus (as they would from another node) and go out
    // to every /v1/events listener.
    let mut feed = bus
        .consumer(crate::bus::StreamKind::Insights, "api-events")
        .await?;
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

    let (retention, sweep_store, token) = (
        config.infer.retention,
        Arc::clone(&insights),
        shutdown.clone(),
    );
    let objects = store.clone();
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

    Ok(InferRole {
        api: crate::api::insights::InsightApi {
            store: insights,
            embedder: Some(Arc::clone(&models.embedder)),
            events,
        },
        worker,
    })
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
