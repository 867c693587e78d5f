//! Starting and stopping a whole server: the log, the projections, the actors and the facade,
//! in that order, and the reverse on shutdown. `main` and the integration tests both use
//! [`Server::start`] on a listener they bound.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::actor::rooms::Rooms;
use crate::actor::session::SessionContext;
use crate::actor::sessions::SessionsHandle;
use crate::actor::ChatContext;
use crate::auth::Authenticator;
use crate::blob::service::FileService;
use crate::blob::{BlobStore, Tier};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::disk::Disk;
use crate::http::App;
use crate::janitor::{JanitorContext, JanitorHandle};
use crate::log::{EventLog, LogError};
use crate::projection::{files, history, search, sessions, Kind, Projection, ProjectionError, Runner, SpaceFloor};
use crate::state::{Opened, StateDb};

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("opening the log in {path}: {source}")]
    Log { path: String, source: LogError },
    #[error("starting the {name} projection: {source}")]
    Projection { name: &'static str, source: ProjectionError },
    #[error("moving the data folder to the new layout: {0}")]
    Migrate(crate::layout::MigrateError),
    #[error("the data folder: {0}")]
    DataFolder(crate::layout::MigrateError),
    #[error("opening the projections' store in {path}: {source}")]
    State { path: String, source: crate::durable::SledOpenError },
    #[error("starting the actors: {0}")]
    Actors(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// Another server holds the data folder (or its lock file cannot be used): `roomlog serve`
    /// prints this and exits 1.
    #[error(transparent)]
    Locked(#[from] crate::data_lock::DataLockError),
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    app: Arc<App>,
    stop: watch::Sender<bool>,
    serving: JoinHandle<()>,
    /// Projection tasks; they end when the log closes.
    projections: Vec<JoinHandle<()>>,
    /// Held from before the databases open until after they close.
    lock: crate::data_lock::DataLock,
}

impl Server {
    /// Opens the data folder, catches the projections up with the log, starts the actors and
    /// serves on `listener`.
    /// Starts on the configured authentication: signed tokens under the secret in
    /// `auth.secret_dir` (generated at first start), and `auth.anonymous` for callers without.
    pub async fn start(config: Config, listener: TcpListener) -> Result<Self, ServerError> {
        // Before the token secret is written into it.
        crate::layout::refuse_sled_database(&config.data).map_err(ServerError::DataFolder)?;
        let files = crate::token::SecretFiles { dir: config.secret_dir() };
        let io =
            |source| ServerError::Io { what: format!("loading the token secret in {}", files.dir.display()), source };
        if config.log.backend == crate::log::LogBackend::Jetstream {
            // Every node of a cluster signs with the one secret, so that tokens work on any node.
            let local = files.shared_form().map_err(io)?;
            let shared = Box::pin(crate::log::jetstream::share_secret(&config.jetstream, local))
                .await
                .map_err(|source| ServerError::Log { path: "the cluster (sharing its token secret)".into(), source })?;
            if files.adopt(&shared).map_err(io)? {
                tracing::info!(dir = %files.dir.display(), "token secret replaced by the cluster's: tokens of any node work here");
            }
        }
        let secrets = files.load_or_create().map_err(io)?;
        let auth = crate::auth::TokenAuth {
            secrets,
            anonymous: config.auth.anonymous,
            clock: Arc::new(SystemClock),
            sessions: Default::default(),
            reserved: crate::auth::ReservedNames::new(&config.auth.reserved_names),
        };
        Self::start_with(config, listener, Arc::new(auth)).await
    }

    /// [`Self::start`] with another authenticator.
    pub async fn start_with(
        config: Config,
        listener: TcpListener,
        auth: Arc<dyn Authenticator>,
    ) -> Result<Self, ServerError> {
        Self::start_with_clock(config, listener, auth, Arc::new(SystemClock)).await
    }

    /// [`Self::start_with`] on another clock (for tests that move time forward).
    pub async fn start_with_clock(
        config: Config,
        listener: TcpListener,
        auth: Arc<dyn Authenticator>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ServerError> {
        // Boxed: start-up's future is large (hundreds of KiB in a debug build, where every
        // caller's frame held a copy), and callers run it on their own stack.
        Box::pin(Self::open_and_serve(config, listener, auth, clock)).await
    }

    async fn open_and_serve(
        config: Config,
        listener: TcpListener,
        auth: Arc<dyn Authenticator>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ServerError> {
        crate::layout::refuse_sled_database(&config.data).map_err(ServerError::DataFolder)?;
        // Checked before anything opens: a bad rule stops start-up with nothing held.
        let lifecycle = crate::blob::lifecycle::Rules::load(config.files.lifecycle.as_deref())
            .map_err(|e| ServerError::Config(e.to_string()))?;
        // Before anything in the folder is touched: a second server names the first.
        crate::durable::create_dir_all(&config.data)
            .map_err(|source| ServerError::Io { what: format!("creating {}", config.data.display()), source })?;
        let lock = crate::data_lock::DataLock::acquire(&config.data, &config.addr_file())?;
        let (data, cache_bytes_max) = (config.data.clone(), config.log.cache_bytes_max);
        // Below the log floor, the reserve makes room for opening the databases (sled writes a
        // snapshot at recovery) and for the janitor's clean-up.
        let floors = crate::space::Floors::for_dir(config.log.min_free_bytes, &config.data);
        if crate::space::available(&config.data).is_some_and(|free| free < floors.log) {
            if let Err(source) = crate::space::Reserve::of(&config.data).release("start-up below the log floor") {
                return Err(ServerError::Io { what: "releasing the reserve file".into(), source });
            }
        }
        let migrated = tokio::task::spawn_blocking(move || crate::layout::migrate(&data, cache_bytes_max))
            .await
            .map_err(|e| ServerError::Actors(e.to_string()))?
            .map_err(ServerError::Migrate)?;
        let log_dir = config.log_dir();
        let log_config = config.log.clone();
        let log = match config.log.backend {
            crate::log::LogBackend::Sled => tokio::task::spawn_blocking(move || EventLog::open(&log_dir, &log_config))
                .await
                .map_err(|e| ServerError::Actors(e.to_string()))?,
            // Boxed: the NATS client's futures are large, and this function's frame is on the
            // stack of whoever starts the server.
            crate::log::LogBackend::Jetstream => {
                Box::pin(EventLog::open_jetstream(&log_dir, &log_config, &config.jetstream, config.janitor.purge_log))
                    .await
            }
        }
        .map_err(|source| ServerError::Log { path: config.log_dir().display().to_string(), source })?;
        let mut recovered = Vec::new();
        if let Some(migrated) = migrated {
            recovered.push(format!(
                "data folder moved to the layout with a separate log and state store ({} records); projections rebuilt",
                migrated.records
            ));
        }
        let state_dir = config.state_dir();
        let (state, opened) =
            tokio::task::spawn_blocking(move || StateDb::open_or_replace(&state_dir, cache_bytes_max))
                .await
                .map_err(|e| ServerError::Actors(e.to_string()))?
                .map_err(|source| ServerError::State { path: config.state_dir().display().to_string(), source })?;
        if let Opened::Replaced { set_aside, reason } = opened {
            recovered.push(format!(
                "the projections' store did not open ({reason}); it was moved to {} and rebuilt from the log",
                set_aside.display()
            ));
        }
        let no_repair = || Ok(());
        let mut starting = Starting {
            log: &log,
            // Projections pause below the clean-up floor (see `space`) and go on by themselves.
            space: SpaceFloor { dir: config.data.clone(), floor: log.floors().cleanup },
            accept_lost_records: config.log.accept_lost_records,
            recovered: &mut recovered,
        };
        let texts: Arc<dyn history::RoomRecords> = Arc::new(log.clone());
        let (history, history_runner, history_following) =
            start_projection(Kind::History, &mut starting, || history::open(&state, texts.clone()), no_repair).await?;
        let search_dir = config.search_dir();
        let search_config = config.search.clone();
        let open_search = || search::open(&search_dir, &search_config, 1);
        let set_search_aside = || set_aside(&config.search_dir());
        let (search_index, search_runner, search_following) =
            start_projection(Kind::Search, &mut starting, open_search, set_search_aside).await?;
        let (sessions_read, sessions_runner, sessions_following) =
            start_projection(Kind::Sessions, &mut starting, || sessions::open(&state), no_repair).await?;
        auth.attach_sessions(sessions_read.clone());
        let (files_read, files_runner, files_following) =
            start_projection(Kind::Files, &mut starting, || files::open(&state), no_repair).await?;
        let blob_dir = config.blob_dir();
        let store = BlobStore::open(&blob_dir, config.files.cold_dir.as_deref()).map_err(|source| ServerError::Io {
            what: format!("opening the file store in {}", blob_dir.display()),
            source,
        })?;
        if !store.has_cold() && lifecycle.rules.iter().any(|r| r.transitions.iter().any(|t| t.2 == Tier::Cold)) {
            tracing::warn!("lifecycle rules move content to a cold tier but files.cold_dir is not set; those transitions are skipped");
        }
        let file_service =
            FileService::new(store, files_read, files_runner.clone(), sessions_read.clone(), log.clone())
                .with_lifecycle(lifecycle);
        file_service
            .settle()
            .map_err(|source| ServerError::Io { what: "settling tier moves cut off by a crash".into(), source })?;
        let ctx = ChatContext {
            log: log.clone(),
            history: history.clone(),
            history_runner: history_runner.clone(),
            chat: config.chat.clone(),
            limits: config.limits.clone(),
        };
        let rooms = Rooms::start(ctx).await.map_err(|e| ServerError::Actors(e.to_string()))?;

        let addr = listener
            .local_addr()
            .map_err(|source| ServerError::Io { what: "reading the bound address".into(), source })?;
        let addr_file = config.addr_file();
        std::fs::write(&addr_file, format!("{addr}\n"))
            .map_err(|source| ServerError::Io { what: format!("writing {}", addr_file.display()), source })?;

        let (stop, stopping) = watch::channel(false);
        let stopping_for_backups = stopping.clone();
        let session_ctx = SessionContext {
            log: log.clone(),
            sessions: sessions_read.clone(),
            runner: sessions_runner.clone(),
            config: config.sessions.clone(),
            clock: clock.clone(),
        };
        let sessions = SessionsHandle::start(session_ctx, stopping.clone())
            .await
            .map_err(|e| ServerError::Actors(e.to_string()))?;
        config.janitor.at_seconds().map_err(ServerError::Config)?;
        let janitor_ctx = JanitorContext {
            log: log.clone(),
            files: file_service.clone(),
            sessions: sessions.clone(),
            clock: clock.clone(),
            config: config.janitor.clone(),
            on_pay: config.files.on_pay.clone(),
            history: history.clone(),
            history_runner: history_runner.clone(),
            retention: config.retention.clone(),
            log_files: config.logging.dir.clone().map(|dir| (dir, config.logging.keep_files)),
            reserve: crate::space::Reserve::of(&config.data),
            data: config.data.clone(),
        };
        let janitor = Box::pin(JanitorHandle::start(janitor_ctx, stopping.clone()))
            .await
            .map_err(|e| ServerError::Actors(e.to_string()))?;
        let mut watched = vec![("data", config.data.clone())];
        watched.extend(config.files.cold_dir.clone().map(|cold| ("cold", cold)));
        let disk =
            Disk::new(watched, config.disk.clone()).with_reserve(crate::space::Reserve::of(&config.data), log.floors());
        disk.measure();
        let janitor_for_disk = janitor.clone();
        let ask_janitor = move || {
            let janitor = janitor_for_disk.clone();
            tokio::spawn(async move {
                let _ = janitor.run("disk_critical").await;
            });
        };
        tokio::spawn(disk.clone().watch(ask_janitor, stopping.clone()));
        let growth = crate::growth::Growth::open(&state)
            .map_err(|e| ServerError::Projection { name: "storage.daily", source: e.into() })?;
        tokio::spawn(sample_growth(growth.clone(), config.data.clone(), clock, stopping.clone()));
        let parts = crate::http::Parts {
            history,
            history_runner,
            search: search_index,
            search_runner,
            sessions_read,
            sessions_runner,
            rooms,
            sessions,
            files: file_service.clone(),
            files_runner,
            janitor,
            disk,
            growth,
            recovered,
        };
        let app = Arc::new(App::new(config, addr, log, parts, auth, stopping.clone()));
        // Metrics: install the recorder before anything counts, and keep its histograms rolling.
        if let Some(handle) = crate::metrics::handle() {
            let mut stopped = stopping.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(crate::metrics::UPKEEP_EVERY);
                loop {
                    tokio::select! {
                        _ = every.tick() => handle.run_upkeep(),
                        _ = stopped.wait_for(|stop| *stop) => return,
                    }
                }
            });
        }
        let serving = tokio::spawn(crate::http::listen::serve(listener, app.clone(), stopping));
        tokio::spawn(file_service.reap(stopping_for_backups.clone()));
        if let Some(every) = app.config.backup.every {
            tokio::spawn(backup_schedule(app.clone(), every, stopping_for_backups));
        }
        tracing::info!(%addr, data = %app.config.data.display(), head_seq = app.log.head(), "roomlog listening");
        Ok(Self {
            addr,
            app,
            stop,
            serving,
            projections: vec![history_following, search_following, sessions_following, files_following],
            lock,
        })
    }

    /// Waits until a core task fails for good: the log writer (its storage refused a write) or
    /// a projection runner that gave up. The server then stores or applies nothing more and is
    /// not ready; `roomlog serve` stops and exits non-zero so that its supervisor restarts it
    /// (everything acknowledged is durable, so a restart loses nothing).
    pub async fn failed(&self) -> String {
        loop {
            if let Some(failure) = self.app.log.failure() {
                return failure.to_string();
            }
            if let Some((name, why)) = self.app.runners().find_map(|r| Some((r.name(), r.failed()?))) {
                return format!("the {name} projection gave up: {why}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The rooms, for tests and tools in the same process.
    pub fn rooms(&self) -> &Rooms {
        &self.app.rooms
    }

    /// The sessions, for tests and benchmarks in the same process.
    pub fn sessions(&self) -> &SessionsHandle {
        &self.app.sessions
    }

    /// The janitor, for tests in the same process.
    pub fn janitor(&self) -> &JanitorHandle {
        &self.app.janitor
    }

    /// The event log.
    pub fn log(&self) -> &EventLog {
        &self.app.log
    }

    /// The history projection's reads.
    pub fn history(&self) -> &history::History {
        &self.app.history
    }

    /// The search index's reads and its runner (to wait until a seq is searchable).
    pub fn search(&self) -> (&search::SearchIndex, &Runner) {
        (&self.app.search, &self.app.search_runner)
    }

    /// Graceful shutdown: stop accepting, close connections (code 1001), let rooms finish
    /// what they hold, make every acknowledged append durable, close the log.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.serving.await;
        let all = u32::try_from(self.app.config.limits.connections_max).unwrap_or(u32::MAX);
        let grace = self.app.config.limits.shutdown_grace;
        if tokio::time::timeout(grace, self.app.connections.acquire_many(all)).await.is_err() {
            tracing::warn!(grace = %humantime::format_duration(grace), "connections still open after the grace period");
        }
        self.app.rooms.stop().await;
        self.app.janitor.stop().await;
        self.app.sessions.stop().await;
        self.app.log.close().await;
        for projection in self.projections {
            let _ = projection.await;
        }
        // roomlog.addr stays: `roomlog status` on a stopped folder names the address last used.
        drop(self.lock);
        tracing::info!("roomlog stopped");
    }
}

/// What every projection starts with.
struct Starting<'a> {
    log: &'a EventLog,
    space: SpaceFloor,
    accept_lost_records: bool,
    recovered: &'a mut Vec<String>,
}

/// Starts a projection and its runner. A projection whose own state fails (damaged by a crash,
/// or ahead of the log) is set aside or reset and rebuilt from the log, said in the log and in
/// `/api/status`, rather than stopping start-up: it is derived state (issue 18). Only a failure
/// to read the log itself stops the server.
async fn start_projection<R, P: Projection>(
    kind: Kind,
    starting: &mut Starting<'_>,
    open: impl Fn() -> Result<(R, P), ProjectionError>,
    repair: impl FnOnce() -> Result<(), ProjectionError>,
) -> Result<(R, Runner, JoinHandle<()>), ServerError> {
    let name = kind.name();
    let (log, space) = (starting.log, Some(starting.space.clone()));
    let failed = |source| ServerError::Projection { name, source };
    let first = match open() {
        Ok((read, projection)) => match projection.checkpoint() {
            Ok(checkpoint) if checkpoint > log.head() => Err(ProjectionError::Ahead { checkpoint, head: log.head() }),
            Ok(_) => {
                Runner::start(log.clone(), projection, space.clone()).await.map(|(runner, task)| (read, runner, task))
            }
            Err(error) => Err(error),
        },
        Err(error) => Err(error),
    };
    let damage = match first {
        Ok(started) => return Ok(started),
        Err(error @ ProjectionError::Log(_)) => return Err(failed(error)),
        // A projection applies only durable records: one past the head means the log lost
        // acknowledged records, which stops start-up unless the operator accepts it.
        Err(ProjectionError::Ahead { checkpoint, head }) if !starting.accept_lost_records => {
            return Err(ServerError::Log {
                path: format!("the log (the {name} projection had applied it through seq {checkpoint})"),
                source: crate::log::LogError::LostRecords { head, acked_through: checkpoint },
            });
        }
        Err(damage) => damage,
    };
    tracing::error!(projection = name, error = %damage, "projection damaged: rebuilding it from the log");
    starting.recovered.push(format!("{name}: rebuilt from the log ({damage})"));
    repair().map_err(failed)?;
    let (read, mut projection) = open().map_err(failed)?;
    projection.reset().map_err(failed)?;
    let (runner, task) = Runner::start(log.clone(), projection, space).await.map_err(failed)?;
    Ok((read, runner, task))
}

/// Moves a damaged folder aside, for a projection rebuilt anew.
fn set_aside(dir: &std::path::Path) -> Result<(), ProjectionError> {
    if dir.exists() {
        crate::durable::set_aside(dir)
            .map_err(|e| ProjectionError::Task(format!("moving {} aside: {e}", dir.display())))?;
    }
    Ok(())
}

/// How often the data folder is measured for growth (the day's latest sample is kept).
const GROWTH_SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Records a growth sample at start and every [`GROWTH_SAMPLE_EVERY`].
async fn sample_growth(
    growth: crate::growth::Growth,
    data: std::path::PathBuf,
    clock: Arc<dyn Clock>,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        let (growth, data, now) = (growth.clone(), data.clone(), clock.now_ms());
        let recorded = tokio::task::spawn_blocking(move || match crate::growth::measure(&data, now) {
            Some(sample) => growth.record(&sample).map_err(|e| e.to_string()),
            None => Err(format!("cannot measure the filesystem of {}", data.display())),
        })
        .await;
        if let Ok(Err(error)) = recorded {
            tracing::warn!(error = %error, "growth sample not recorded");
        }
        tokio::select! {
            _ = tokio::time::sleep(GROWTH_SAMPLE_EVERY) => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
    }
}

/// Takes a full backup every `every` into `backup.dir`, keeping `backup.keep` of them. A failed
/// backup is logged and counted, and the next slot tries again.
async fn backup_schedule(app: Arc<App>, every: std::time::Duration, mut stopping: watch::Receiver<bool>) {
    let dir = app.config.backup.dir.clone().unwrap_or_else(|| app.config.data.join("backups"));
    let config_toml = toml::to_string_pretty(&app.config).unwrap_or_default();
    // A zero period would panic tokio's interval, a huge one the Instant addition: held to a
    // second up to a year.
    let every = every.clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(366 * 24 * 3600));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
        let (log, store, dir, keep) = (app.log.clone(), app.files.store.clone(), dir.clone(), app.config.backup.keep);
        let config_toml = config_toml.clone();
        let secret_files = crate::token::SecretFiles { dir: app.config.secret_dir() };
        let result = tokio::task::spawn_blocking(move || {
            let secrets = secret_files
                .export()
                .map_err(|source| crate::backup::BackupError::Io { what: "reading the token secret".into(), source })?;
            crate::backup::scheduled(&log, &store, &dir, keep, &config_toml, &secrets)
        })
        .await;
        match result {
            Ok(Ok((archive, manifest))) => {
                let now =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
                metrics::gauge!(crate::metrics::BACKUP_LAST_SUCCESS_SECONDS).set(now);
                tracing::info!(archive = %archive.display(), through_seq = manifest.through_seq, events = manifest.events, "scheduled backup written");
            }
            Ok(Err(error)) => {
                metrics::counter!(crate::metrics::BACKUP_FAILURES_TOTAL).increment(1);
                tracing::error!(error = %error, "scheduled backup failed; next slot retries");
            }
            Err(error) => {
                metrics::counter!(crate::metrics::BACKUP_FAILURES_TOTAL).increment(1);
                tracing::error!(error = %error, "scheduled backup task failed; next slot retries");
            }
        }
    }
}
