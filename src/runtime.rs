//! Wires a config into a running perch: store → journal → connectors → bots → router
//! → outbox, plus the upkeep task. `Perch::start` returns a handle whose `app()` is the
//! HTTP router and whose `shutdown()` stops everything in order.

use crate::bots::{BotInfo, Directory, Services};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::connectors::{self, ConnectorEnv, SharedConnector};
use crate::event::EventId;
use crate::journal::Journal;
use crate::lanes::Lanes;
use crate::outbox::Outbox;
use crate::router::{Processor, Router};
use crate::store::{SledStore, Store, StoreError, SweepCutoffs};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the store in {dir}: {source}")]
    Store { dir: String, source: StoreError },
    #[error("cannot open the PostgreSQL store: {0}")]
    Postgres(StoreError),
    #[error("cannot create the data directory {dir}: {source}")]
    DataDir { dir: String, source: std::io::Error },
    #[error("bot `{name}`: {why}")]
    Bot { name: String, why: String },
    #[error("{0}")]
    Connector(String),
    #[error("routes: {0}")]
    Routes(String),
    #[error("HTTP client: {0}")]
    Http(String),
    #[error("scheduler: {0}")]
    Scheduler(#[from] crate::scheduler::SchedulerError),
    #[error("card templates in {dir}:\n{source}")]
    Cards {
        dir: String,
        source: crate::cards::CardError,
    },
}

/// Everything the HTTP layer needs. Cloned for every request (axum state), so it is one
/// `Arc`; its fields are read through `Deref`.
#[derive(Clone)]
pub struct Shared(Arc<SharedParts>);

impl std::ops::Deref for Shared {
    type Target = SharedParts;
    fn deref(&self) -> &SharedParts {
        &self.0
    }
}

/// What `Shared` holds.
pub struct SharedParts {
    pub store: Arc<dyn Store>,
    pub journal: Journal,
    pub connectors: HashMap<String, SharedConnector>,
    pub clock: SharedClock,
    pub admin_token: Option<crate::config::Secret>,
    pub body_limit: usize,
    /// Timeouts and the connection cap (`server::serve`, `server::app`).
    pub connection_limits: crate::server::ConnectionLimits,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Hands queued items to the outbox (`ring` after queueing outside the router).
    pub outbox: Arc<crate::outbox::OutboxDoor>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// The configured schedules (for `GET /api/schedules`).
    pub schedules: Arc<crate::scheduler::Schedules>,
    /// The compiled card templates (`server.cards_dir`).
    pub cards: Arc<crate::cards::CardEngine>,
    /// Where card-click requests wait for the bot's answer.
    pub clicks: Arc<crate::clicks::Clicks>,
    /// How long they wait (`server.click_answer_window`).
    pub click_answer_window: std::time::Duration,
    /// The bots by name (`POST /api/bots/<name>/actions` asks the bot to check it).
    pub bots: HashMap<String, Arc<dyn crate::bots::Bot>>,
    /// Sign-in, sessions and roles for the web surfaces (`[auth]`).
    pub auth: Arc<crate::auth::Auth>,
    /// `server.metrics_token`: the bearer token `/metrics` wants, if set.
    pub metrics_token: Option<crate::config::Secret>,
    /// Each bot's config (secrets masked) and routes, for the console's Bots page.
    pub bot_overviews: Vec<crate::server::bots_page::BotOverview>,
    /// Each bot's events handled, failures and last error since start.
    pub bot_activity: Arc<crate::health::BotActivity>,
}

/// A running perch.
pub struct Perch {
    pub(crate) shared: Shared,
    event_lanes: Arc<Lanes<EventId, crate::router::PendingEvent>>,
    outbox_lanes: Arc<Lanes<String, crate::outbox::Queued>>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// `server.shutdown_grace`.
    shutdown_grace: std::time::Duration,
}

impl Perch {
    /// Open the store (`open_store`) and start.
    pub async fn start(config: Config, clock: SharedClock) -> Result<Perch, StartError> {
        let store = open_store(&config).await?;
        Self::start_with_store(config, store, clock).await
    }

    /// Start on a given store (tests use a temporary one).
    pub async fn start_with_store(
        config: Config,
        store: Arc<dyn Store>,
        clock: SharedClock,
    ) -> Result<Perch, StartError> {
        let metrics = crate::telemetry::install();
        let router_door = crate::lanes::Doorbell::new();
        let outbox_door = crate::lanes::Doorbell::new();
        let cancel = CancellationToken::new();
        let (journal, committer_task) = Journal::start(
            store.clone(),
            config.server.dedupe_window,
            clock.clone(),
            router_door.clone(),
            cancel.clone(),
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| StartError::Http(e.to_string()))?;

        // Who speaks which language, before the config is taken apart.
        let locales = crate::i18n::Locales {
            default: config.server.locale,
            connectors: config
                .connectors
                .iter()
                .filter_map(|(name, c)| Some((name.clone(), c.get_ref().locale()?)))
                .collect(),
            bots: config
                .bots
                .iter()
                .filter_map(|(name, b)| Some((name.clone(), b.get_ref().locale?)))
                .collect(),
        };
        let Config {
            server,
            store: _,
            outbox: outbox_config,
            auth: auth_config,
            connectors: connector_configs,
            bots: bot_configs,
            routes,
            permissions,
            schedules,
            source,
            bot_kinds,
        } = config;
        let schedules = Arc::new(crate::scheduler::Schedules::from_config(&schedules)?);
        let routing_config = Config {
            server: Default::default(),
            store: Default::default(),
            outbox: Default::default(),
            auth: Default::default(),
            connectors: Default::default(),
            bots: Default::default(),
            routes,
            permissions: Default::default(),
            schedules: Default::default(),
            source,
            bot_kinds: Default::default(),
        };
        let router = Router::from_config(&routing_config).map_err(StartError::Routes)?;
        let cards_dir = server.cards_dir.clone();
        let cards_at = server.cards_dir.display().to_string();
        let cards =
            tokio::task::spawn_blocking(move || crate::cards::CardEngine::load_dir(&cards_dir))
                .await
                .map_err(|e| StartError::Cards {
                    dir: cards_at.clone(),
                    source: crate::cards::CardError::Io {
                        path: cards_at.clone(),
                        message: e.to_string(),
                    },
                })?
                .map_err(|source| StartError::Cards {
                    dir: cards_at.clone(),
                    source,
                })?;
        let cards = Arc::new(cards);

        let clicks = crate::clicks::Clicks::new(store.clone());
        let env = ConnectorEnv {
            store: store.clone(),
            journal: journal.clone(),
            clicks: clicks.clone(),
            click_answer_window: server.click_answer_window,
            dedupe_window: server.dedupe_window,
            clock: clock.clone(),
            http,
            bot_names: bot_configs.keys().cloned().collect(),
            default_locale: locales.default,
            auth_mode: auth_config.mode,
            cancel: cancel.clone(),
        };
        let mut connectors = HashMap::new();
        for (name, c) in connector_configs {
            let connector =
                connectors::build(&name, c.into_inner(), &env).map_err(StartError::Connector)?;
            connectors.insert(name.clone(), connector);
        }

        let mut bots = HashMap::new();
        let mut infos = Vec::new();
        let mut bot_overviews = Vec::new();
        let route_configs: Vec<crate::config::RouteConfig> = routing_config
            .routes
            .iter()
            .map(|r| r.get_ref().clone())
            .collect();
        let bot_activity = Arc::new(crate::health::BotActivity::default());
        let reach = router.reachability();
        for (name, c) in bot_configs {
            let kind = bot_kinds
                .name_of(c.get_ref().kind.get_ref())
                .unwrap_or("unknown");
            let bot = bot_kinds
                .build(&name, c.get_ref())
                .map_err(|e| StartError::Bot {
                    name: name.clone(),
                    why: e.to_string(),
                })?;
            bot_overviews.push(crate::server::bots_page::BotOverview::new(
                &name,
                kind,
                &c.get_ref().settings,
                &bot.secrets(),
                &route_configs,
            ));
            infos.push(BotInfo {
                name: name.clone(),
                kind,
                commands: bot.commands(),
                connectors: reach.get(&name).cloned().unwrap_or_default(),
            });
            bots.insert(name, bot);
        }
        let permissions = Arc::new(crate::permissions::Permissions::new(
            permissions.into_iter().map(|r| r.into_inner()).collect(),
            auth_config.groups.clone(),
        ));
        let services = Arc::new(Services {
            store: store.clone(),
            connectors: connectors.clone(),
            clock: clock.clone(),
            cards: cards.clone(),
            directory: Directory { bots: infos },
            locales,
            permissions: permissions.clone(),
        });
        let processor = Arc::new(Processor {
            router,
            permissions,
            bots: bots.clone(),
            services,
            bot_timeout: server.bot_timeout,
            outbox: outbox_door.clone(),
            clicks: clicks.clone(),
            ingesting: journal.ingesting(),
            feed: journal.feed(),
            bot_activity: bot_activity.clone(),
        });
        let (event_lanes, router_task) =
            crate::router::start(processor, server.concurrency, &router_door, cancel.clone());
        let outbox = Arc::new(Outbox::new(
            store.clone(),
            connectors.clone(),
            outbox_config,
            clock.clone(),
            journal.health(),
            journal.connector_health(),
        ));
        let (outbox_lanes, outbox_task) = outbox.start(&outbox_door, cancel.clone());
        let upkeep_task = tokio::spawn(upkeep(
            store.clone(),
            clock.clone(),
            server.dedupe_window,
            server.journal_retention,
            cancel.clone(),
        ));
        let scheduler = crate::scheduler::Scheduler::open(
            schedules.clone(),
            store.clone(),
            journal.clone(),
            clock.clone(),
            outbox_door.clone(),
        )
        .await?;
        let scheduler_task = tokio::spawn(scheduler.run(cancel.clone()));

        let connection_limits = crate::server::ConnectionLimits::from_config(&server);
        let auth = Arc::new(crate::auth::Auth::new(
            auth_config,
            store.clone(),
            clock.clone(),
        ));
        let sweeper_task = tokio::spawn(auth.clone().run_sweeper(cancel.clone()));
        let shared = Shared(Arc::new(SharedParts {
            auth,
            store,
            journal,
            connectors,
            clock: clock.clone(),
            admin_token: server.admin_token.filter(|t| !t.is_empty()),
            metrics_token: server.metrics_token.filter(|t| !t.is_empty()),
            body_limit: server.body_limit,
            connection_limits,
            metrics,
            outbox: outbox_door,
            started_at: clock.now(),
            schedules,
            cards,
            clicks,
            click_answer_window: server.click_answer_window,
            bots,
            bot_overviews,
            bot_activity,
        }));
        Ok(Perch {
            shared,
            event_lanes,
            outbox_lanes,
            cancel,
            shutdown_grace: server.shutdown_grace,
            tasks: vec![
                router_task,
                outbox_task,
                upkeep_task,
                committer_task,
                scheduler_task,
                sweeper_task,
            ],
        })
    }

    /// The HTTP application.
    pub fn app(&self) -> axum::Router {
        crate::server::app(self.shared.clone())
    }

    /// Stop in order: feeders stop taking work, lanes finish the item each is running
    /// (no new item, no backoff waited out) within `server.shutdown_grace`, then the
    /// store is flushed. Whatever is unfinished stays queued for the next start. (The
    /// HTTP server is stopped by the caller first.)
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        let drained = tokio::time::timeout(self.shutdown_grace, async {
            self.event_lanes.drain().await;
            self.outbox_lanes.drain().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(grace = ?self.shutdown_grace, "in-flight work did not finish within the shutdown grace; it stays queued for the next start");
        }
        if let Err(e) = self.shared.store.flush().await {
            tracing::error!(error = %e, "final flush failed");
        }
        // Everything holding the store has stopped; dropping `self` closes it (and
        // releases its file lock), so a restart in the same process can open it again.
        let holders = Arc::strong_count(&self.shared.store);
        tracing::debug!(holders, "store references at shutdown");
    }
}

/// Periodic upkeep: queue-depth gauges every few seconds; expired dedupe keys, old sent
/// records, old journal entries and old console presses every ten minutes.
async fn upkeep(
    store: Arc<dyn Store>,
    clock: SharedClock,
    dedupe_window: Duration,
    retention: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let pending = store.pending_count().await.unwrap_or(0);
        let queued = store.outbox_count().await.unwrap_or(0);
        crate::telemetry::queue_depths(pending, queued);
        n += 1;
        if n % 120 == 1 {
            let now = clock.now();
            let window =
                chrono::Duration::from_std(dedupe_window).unwrap_or(chrono::Duration::hours(8));
            let keep = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(7));
            let cut = SweepCutoffs {
                sent_before: now - window,
                journal_before: now - keep,
            };
            match store.sweep(cut).await {
                Ok(s) => tracing::debug!(?s, "sweep"),
                Err(e) => tracing::error!(error = %e, "sweep failed"),
            }
            // Console presses are remembered as long as dedupe keys.
            if let Err(e) =
                crate::server::bots_page::sweep_presses(store.as_ref(), now - window).await
            {
                tracing::error!(error = %e, "sweeping console presses failed");
            }
        }
    }
}

/// `[store]` for the PostgreSQL backend; `None` for the embedded store.
pub fn postgres_settings(
    config: &Config,
) -> Result<Option<crate::store::postgres::PostgresSettings>, StartError> {
    if config.store.kind != crate::config::StoreKind::Postgres {
        return Ok(None);
    }
    let url = config
        .store
        .url
        .as_ref()
        .ok_or_else(|| StartError::Postgres(StoreError::Io("store.url is not set".into())))?;
    Ok(Some(crate::store::postgres::PostgresSettings {
        url: url.expose().to_string(),
        pool_size: config.store.pool_size,
    }))
}

/// Open the store `[store]` names: the embedded one in `server.data_dir`, or the shared
/// PostgreSQL (connecting and applying schema migrations). Also used by `perch export`
/// and `perch import`.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    if let Some(settings) = postgres_settings(config)? {
        let store = crate::store::PostgresStore::connect(&settings)
            .await
            .map_err(StartError::Postgres)?;
        return Ok(Arc::new(store));
    }
    let dir = config.server.data_dir.clone();
    std::fs::create_dir_all(&dir).map_err(|source| StartError::DataDir {
        dir: dir.display().to_string(),
        source,
    })?;
    let cache = config.server.cache_mb * 1024 * 1024;
    let store_dir = dir.join("store");
    let log_dir = dir.join("ingest-log");
    // Opened once here, and again by `Reopening` after a write error (a full disk).
    let open: crate::store::reopening::Opener = Arc::new(move || {
        SledStore::open(&store_dir, &log_dir, cache).map(|s| Arc::new(s) as Arc<dyn Store>)
    });
    let first = open.clone();
    let store = tokio::task::spawn_blocking(move || first())
        .await
        .map_err(|e| StartError::Store {
            dir: dir.display().to_string(),
            source: StoreError::Io(e.to_string()),
        })?
        .map_err(|source| StartError::Store {
            dir: dir.display().to_string(),
            source,
        })?;
    Ok(crate::store::reopening::Reopening::new(store, open))
}
