//! The hub assembled from a project file: store, plugin registry, engines, ingestion, the HTTP
//! router ([`Hub::build`]); and serving it, with the schedulers and SIGHUP reload ([`serve`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

use super::http::{self, tracking, Access};
use crate::config::compile::Project;
use crate::config::Config;
use crate::identity::IdentityRules;
use crate::ingest::message::Limits;
use crate::ingest::writer::Ingestor;
use crate::metrics::Metrics;
use crate::profiles::Profiles;
use crate::sources::SourceEngine;
use crate::store::Store;
use crate::streams::StreamEngine;

/// Everything the server needs, built from the config.
pub struct Hub {
    pub store: Store,
    pub metrics: Metrics,
    pub router: axum::Router,
    /// Runs syncs; the scheduler and the admin API share it.
    pub syncs: crate::sync::Engine,
    /// Runs source plugins and applies their webhooks; the scheduler and the webhook route share it.
    pub sources: SourceEngine,
    /// Forwards events as they are committed (`[[streams]]`); started by [`serve`].
    pub streams: StreamEngine,
    /// Erases profiles and sends their destinations' erases; the Profiles API and the
    /// background queue share it.
    pub erasures: crate::erasure::Erasures,
}

impl Hub {
    /// Builds the hub for a project file's values (compiling them; a file with problems is
    /// refused with all of them).
    pub async fn build(config: &Config) -> anyhow::Result<Hub> {
        let project = config
            .clone()
            .compile()
            .map_err(|problems| anyhow::anyhow!("{}", problems.join("\n")))?;
        Hub::build_project(Arc::new(project)).await
    }

    /// Builds the hub for a compiled project.
    pub async fn build_project(config: Arc<Project>) -> anyhow::Result<Hub> {
        let store = config.hub.open_store().await?;
        let metrics = Metrics::new();
        let runtime = crate::runtime::Runtime::new(config.hub.plugin_limits.limits()?)?;
        let registry = Arc::new(crate::registry::Registry::open(
            &config.hub.plugins_dir,
            runtime,
        )?);
        let sources = SourceEngine::new(store.clone(), registry.clone(), config.clone())
            .with_metrics(metrics.clone());
        let syncs = crate::sync::Engine::new(store.clone(), registry.clone(), config.clone())
            .with_metrics(metrics.clone());
        let streams = StreamEngine::new(store.clone(), syncs.clone(), registry.clone())
            .with_metrics(metrics.clone());
        let erasures = crate::erasure::Erasures::new(syncs.clone());
        let rules = IdentityRules::new(&config.identity);
        let ingestor = Ingestor::start(
            store.clone(),
            rules,
            config.hub.ingest_queue,
            metrics.clone(),
        );
        let write_keys: Arc<HashMap<String, String>> =
            Arc::new(config.write_keys()?.into_iter().collect());
        if write_keys.is_empty() {
            tracing::warn!("no [sources.*] write_keys configured: the tracking API will answer 401 to everything");
        }
        let access = Access::new(config.access_tokens()?, Some(store.clone()));
        if !access.enabled() {
            tracing::warn!("no [hub] admin_token nor [hub.tokens.*]: the admin API is disabled");
        }
        let origins = config
            .sources
            .iter()
            .map(|(name, source)| (name.clone(), source.allowed_origins.clone()))
            .collect();
        let console = super::console::ConsoleState::new(
            access.clone(),
            store.clone(),
            Profiles::new(store.clone()),
            syncs.clone(),
            sources.clone(),
            streams.clone(),
            metrics.clone(),
            ingestor.tap().clone(),
            registry,
            erasures.clone(),
        );
        let router = http::router(http::Services {
            tracking: tracking::TrackingState {
                ingestor,
                origins: Arc::new(tracking::cors::OriginPolicy::new(
                    origins,
                    write_keys.clone(),
                )),
                write_keys,
                limits: Arc::new(Limits::default()),
                metrics: metrics.clone(),
                proxies: Arc::new(config.hub.trusted_proxies.clone()),
            },
            profiles: Profiles::new(store.clone()),
            erasures: erasures.clone(),
            syncs: syncs.clone(),
            sources: sources.clone(),
            streams: streams.clone(),
            metrics: metrics.clone(),
            access,
        })
        .merge(super::console::routes(console));
        Ok(Hub {
            store,
            metrics,
            router,
            syncs,
            sources,
            streams,
            erasures,
        })
    }
}

/// `switchyard serve`: builds the hub from the file at `path`, starts the schedulers, reloads on
/// SIGHUP, and serves until SIGINT or SIGTERM (finishing in-flight requests).
pub async fn serve(path: &Path, plugins_dir: Option<PathBuf>) -> anyhow::Result<()> {
    // Plugin calls get half of the descriptors at most (`[hub.plugin_limits] hub_connections`):
    // the rest is the reserve that keeps the listeners and the database answering.
    match crate::runtime::raise_fd_limit() {
        Ok(n) => tracing::debug!(file_descriptors = n, "file descriptor limit"),
        Err(e) => tracing::warn!("could not raise the file descriptor limit: {e}"),
    }
    let config = Arc::new(Project::load_with_plugins_dir(
        path,
        plugins_dir.as_deref(),
    )?);
    let hub = Hub::build_project(config.clone()).await?;
    // Streams place their cursors before the tracking API listens, so nothing it acknowledges
    // is behind a new stream's start.
    hub.streams
        .start()
        .await
        .context("starting the event streams ([[streams]])")?;
    let listener = tokio::net::TcpListener::bind(&config.hub.listen)
        .await
        .with_context(|| format!("listening on {}", config.hub.listen))?;
    let addr = listener.local_addr()?;
    tokio::spawn(crate::sync::scheduler::run(hub.syncs.clone()));
    tokio::spawn(crate::sources::scheduler::run(hub.sources.clone()));
    if let Some(retention) = config.hub.event_retention {
        tokio::spawn(crate::retention::run(
            hub.store.clone(),
            retention,
            hub.metrics.clone(),
        ));
    }
    tokio::spawn(hub.erasures.clone().run());
    reload_on_hangup(&hub, path, plugins_dir);
    tracing::info!(%addr, database = %crate::store::redact_url(&config.hub.database), "switchyard is serving");
    println!("switchyard listening on http://{addr}");
    // Connect info: the tracking API's `context.ip` is the peer's address.
    let app = hub
        .router
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
}

/// SIGHUP: re-read the file and hand it to the engines; audiences, destinations, syncs and
/// plugin sources (their plugin config, streams, schedules, caps) change for runs and webhooks
/// that start from now on, runs in flight finish with the config they started with; event
/// streams whose settings changed start again from their cursors with the new ones. A file that
/// does not load changes nothing (the error is logged).
fn reload_on_hangup(hub: &Hub, path: &Path, plugins_dir: Option<PathBuf>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    let (syncs, sources, streams) = (hub.syncs.clone(), hub.sources.clone(), hub.streams.clone());
    let path = path.to_path_buf();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match Project::load_with_plugins_dir(&path, plugins_dir.as_deref()) {
                Ok(c) => {
                    let c = Arc::new(c);
                    syncs.reload(c.clone());
                    sources.reload(c);
                    // After the sync engine: streams read their config from it.
                    if let Err(e) = streams.reload().await {
                        tracing::error!("streams not reloaded: {e:#}");
                    }
                    tracing::info!(path = %path.display(), "configuration reloaded (audiences, destinations, syncs, plugin sources, [[streams]] and [transforms.*]; [hub], [identity] and write keys need a restart)");
                }
                Err(e) => {
                    tracing::error!("configuration not reloaded, keeping the running one: {e:#}")
                }
            }
        }
    });
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
