//! Configuration: defaults that work out of the box, a TOML file, and environment variables.
//!
//! Precedence, lowest first: built-in defaults, the TOML file (`--config`), environment
//! variables `ROOMLOG_<SECTION>__<KEY>` (for example `ROOMLOG_CHAT__RECENT_COUNT=100`), then
//! command-line flags. Durations are humantime (`30s`, `5m`, `7d`). Every limit has a key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

mod log;

pub use log::{JetStreamConfig, LogBackend, LogConfig};

/// `ROOMLOG_*` variables that are not configuration keys: the tracing filter
/// (`ROOMLOG_LOG`) and the config file's path (`ROOMLOG_CONFIG`).
const NOT_CONFIG_KEYS: &[&str] = &["log", "config", "fault_pause"];

/// The folder of the log's database under the data folder.
pub const LOG_FOLDER: &str = "log";
/// The folder of the projections' database under the data folder.
pub const STATE_FOLDER: &str = "state";
/// Longest `chat.node_id`.
const NODE_ID_LEN_MAX: usize = 64;

/// Whether `name` is 1 to 64 characters of `A-Z a-z 0-9 _ . -`: a node id that also names a
/// room, a subject token and a file without escaping.
fn is_plain_name(name: &str) -> bool {
    let plain = name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    !name.is_empty() && name.len() <= NODE_ID_LEN_MAX && plain
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP and WebSocket facade listens on. Port 0 picks a free port; the bound
    /// address is written to `<data>/roomlog.addr` for tools and tests, and stays there after
    /// a stop (the address last used).
    pub listen: SocketAddr,
    /// Folder holding the log, the projections and (later) the file store.
    pub data: PathBuf,
    pub log: LogConfig,
    /// The cluster's log, used when `log.backend = "jetstream"`.
    pub jetstream: JetStreamConfig,
    pub chat: ChatConfig,
    pub search: SearchConfig,
    pub sessions: SessionsConfig,
    pub files: FilesConfig,
    pub janitor: JanitorConfig,
    /// Room history retention, applied by the janitor. The default keeps everything.
    pub retention: RetentionConfig,
    /// Disk thresholds: warning, critical (the janitor runs now), danger (uploads refused).
    pub disk: DiskConfig,
    pub limits: Limits,
    /// Who may connect and do what: tokens, and what callers without one may do.
    pub auth: AuthConfig,
    pub logging: Logging,
    pub backup: BackupSchedule,
}

/// The file store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesConfig {
    /// Lifecycle rules in the JSON shape of an S3 bucket lifecycle configuration. A relative
    /// path is read from the config file's folder. Checked at start-up: a bad rule stops the
    /// server with the rule and the field named.
    pub lifecycle: Option<PathBuf>,
    /// The cold tier: a folder, e.g. on a cheaper disk, for content that lifecycle rules move to
    /// `STANDARD_IA`, `GLACIER` and the other cold classes. A relative path is read from the
    /// config file's folder. Unset: no cold tier, and transitions to it are skipped (and said so).
    pub cold_dir: Option<PathBuf>,
    /// Keys a paid session's `temp_` files move to: each entry maps a key prefix to the prefix
    /// that replaces it (`temp_` → `permanent/` turns `temp_photos/x.jpg` into
    /// `permanent/photos/x.jpg`). The first matching entry applies. The move renames keys; no
    /// bytes move.
    pub on_pay: Vec<PrefixMove>,
}

/// The janitor: when it runs, and what it may delete beyond the lifecycle rules.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JanitorConfig {
    /// Run every this long (`6h`), counted from start-up. Ignored when `at` is set.
    #[serde(with = "humantime_serde")]
    pub every: Option<Duration>,
    /// Run once a day at this UTC time (`02:00`).
    pub at: Option<String>,
    /// Content no key references is deleted once its file is older than this (younger ones
    /// may be uploads being committed).
    #[serde(with = "humantime_serde")]
    pub orphan_min_age: Duration,
    /// After a scheduled run that did not finish everything (`partial` or `failed`), the next
    /// try comes this long after it, or at the next slot if that is sooner.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Plan and remove from the log, while serving, the records that retention cuts and file
    /// deletions superseded (rule `log_purge`; planning it reads the whole log). The log then
    /// stops growing by what is removed; the files shrink only with `roomlog compact`.
    pub purge_log: bool,
    /// After a purge that removed at least an eighth of the log's records (from a log of two
    /// sled segments, 32 MiB, or more), rewrite the log's files while serving, which gives the
    /// removed records' space back to the filesystem (sled reuses freed space and shrinks its
    /// file only when segments at its end come free). Needs free space for a copy of the log;
    /// appends wait only for the swap at its end.
    pub rewrite_log: bool,
}

impl Default for JanitorConfig {
    fn default() -> Self {
        Self {
            every: Some(Duration::from_secs(6 * 3600)),
            at: None,
            orphan_min_age: Duration::from_secs(3600),
            retry_after: Duration::from_secs(15 * 60),
            purge_log: true,
            rewrite_log: true,
        }
    }
}

impl JanitorConfig {
    /// `at` as seconds after midnight UTC, checked.
    pub fn at_seconds(&self) -> Result<Option<u64>, String> {
        let Some(at) = &self.at else { return Ok(None) };
        let bad = || format!("janitor.at {at:?}: use HH:MM, 24-hour UTC (\"02:00\")");
        let (h, m) = at.split_once(':').ok_or_else(bad)?;
        let (h, m) = (h.parse::<u64>().map_err(|_| bad())?, m.parse::<u64>().map_err(|_| bad())?);
        if h > 23 || m > 59 {
            return Err(bad());
        }
        Ok(Some(h * 3600 + m * 60))
    }
}

/// Room history retention: `default` for every room that `rooms` does not name.
///
/// ```toml
/// [retention.default]
/// max_age = "90days"
/// [retention.rooms.lobby]
/// max_messages = 10000
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    pub default: RoomRetention,
    /// Per room name, in place of `default` (not merged with it).
    pub rooms: std::collections::BTreeMap<String, RoomRetention>,
}

/// What one room keeps: at most `max_messages` messages, and only messages younger than
/// `max_age`; a message goes when either says so. Neither set: everything is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomRetention {
    pub max_messages: Option<u64>,
    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

impl RetentionConfig {
    /// The rule for `room` and its name in config (`retention.rooms.lobby`, `retention.default`).
    pub fn for_room(&self, room: &str) -> (String, &RoomRetention) {
        match self.rooms.get(room) {
            Some(rule) => (format!("retention.rooms.{room}"), rule),
            None => ("retention.default".into(), &self.default),
        }
    }
}

/// One entry of `files.on_pay`: keys under `from` move under `to` when their session is paid.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixMove {
    pub from: String,
    pub to: String,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            lifecycle: None,
            cold_dir: None,
            on_pay: vec![PrefixMove { from: "temp_".into(), to: "permanent/".into() }],
        }
    }
}

/// Session lifecycle. A session expires `expire_after` after it was created (or, with
/// `sliding`, after its last touch) unless paid; an unpaid one is purged `purge_after` after it
/// was created; a paid one is kept for good.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    #[serde(with = "humantime_serde")]
    pub expire_after: Duration,
    #[serde(with = "humantime_serde")]
    pub purge_after: Duration,
    /// Whether a touch moves the expiry to `expire_after` from the touch.
    pub sliding: bool,
    /// A session's actor stops after this long without a command; its due times are then kept
    /// by the sessions projection's deadline index, and its actor comes back when needed.
    #[serde(with = "humantime_serde")]
    pub actor_idle_stop: Duration,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            expire_after: Duration::from_secs(24 * 3600),
            purge_after: Duration::from_secs(7 * 24 * 3600),
            sliding: false,
            actor_idle_stop: Duration::from_secs(60),
        }
    }
}

/// The message search index (`<data>/search`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// Near-real-time delay: indexed messages become searchable (and durable in the index) at
    /// most this long after the index receives them. Shorter is fresher and costs more commits.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// Also commit once this many events are pending, whatever the time.
    pub commit_events_max: usize,
    /// Memory the index writer may use before it writes a segment, in bytes.
    pub writer_bytes: usize,
    /// Most hits one search page returns.
    pub limit_max: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self { refresh: Duration::from_millis(500), commit_events_max: 100_000, writer_bytes: 64 << 20, limit_max: 100 }
    }
}

/// The thresholds, as used fractions (0 to 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiskConfig {
    /// At or above: warning (logged, exported).
    pub warning: f64,
    /// At or above: critical (the janitor runs now).
    pub critical: f64,
    /// Above: danger (uploads refused, not ready).
    pub danger: f64,
    /// How often the disks are measured.
    #[serde(with = "humantime_serde")]
    pub check_every: Duration,
    /// Least time between two janitor runs the disk asks for.
    #[serde(with = "humantime_serde")]
    pub janitor_min_interval: Duration,
}

impl Default for DiskConfig {
    fn default() -> Self {
        Self {
            warning: 0.50,
            critical: 0.75,
            danger: 0.85,
            check_every: Duration::from_secs(5),
            janitor_min_interval: Duration::from_secs(600),
        }
    }
}

/// What a caller without a token may do (`auth.anonymous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Anonymous {
    /// Nothing: every connection and API call needs a token.
    None,
    /// Read every room (with `?name=` for a display name), write none.
    Read,
    /// Read and write every room under the name it gives (no authentication at all).
    Write,
}

/// Backups the server takes by itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupSchedule {
    /// Take a full backup this often (`24h`); none when unset.
    #[serde(with = "humantime_serde")]
    pub every: Option<Duration>,
    /// Folder for scheduled archives (`roomlog-<unix ms>.tar`); default `<data>/backups`.
    pub dir: Option<PathBuf>,
    /// Scheduled archives kept; older ones are deleted after each new one.
    pub keep: usize,
}
/// Where the server's own log lines go.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Logging {
    /// JSON lines instead of text (also `--log-json`).
    pub json: bool,
    /// Also write log files here, one per day (`roomlog.YYYY-MM-DD.log`); stdout alone when
    /// unset, which is what journald collects.
    pub dir: Option<PathBuf>,
    /// Daily log files kept in `dir`, the compressed ones included; the janitor compresses
    /// every day's file but the current one (`.log.gz`) and deletes the oldest beyond this.
    pub keep_files: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            data: PathBuf::from("./roomlog-data"),
            log: LogConfig::default(),
            jetstream: Default::default(),
            chat: ChatConfig::default(),
            search: SearchConfig::default(),
            sessions: SessionsConfig::default(),
            files: FilesConfig::default(),
            janitor: JanitorConfig::default(),
            retention: RetentionConfig::default(),
            disk: DiskConfig::default(),
            limits: Limits::default(),
            auth: AuthConfig::default(),
            logging: Logging { json: false, dir: None, keep_files: 14 },
            backup: BackupSchedule { every: None, dir: None, keep: 7 },
        }
    }
}

/// How rooms behave.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    /// Messages a client receives when it joins without `since`.
    pub recent_count: usize,
    /// Messages a room actor keeps in memory: joins and resumes within it need no disk read.
    /// Raised to `recent_count` if set lower.
    pub ring_capacity: usize,
    /// Client message ids remembered per room: a retried send whose original is among the
    /// room's newest `dedup_window` messages gets the original seq; an older one is stored
    /// again. Loaded from the history when a room starts, so it holds across restarts.
    pub dedup_window: usize,
    /// Most messages replayed to a resuming client in one step; a longer gap is replayed in
    /// several steps, so one resume never holds a room for long.
    pub replay_batch_max: usize,
    /// Most messages one history page returns.
    pub history_page_max: usize,
    /// A room with no members and nothing in flight stops after this long, and comes back
    /// from the history projection on the next join.
    #[serde(with = "humantime_serde")]
    pub room_idle_stop: Duration,
    /// Most appends a room has in flight before it waits for the log.
    pub room_inflight_max: usize,
    /// Room actor restarts allowed within `restart_window` before the room is refused for
    /// the rest of the window (restart intensity, as in OTP supervisors).
    pub restarts_max: usize,
    #[serde(with = "humantime_serde")]
    pub restart_window: Duration,
    /// Whether members of a room are told when a user arrives (its first connection joins)
    /// or departs (its last one leaves), with `member_joined` and `member_left` frames. Off by
    /// default: a large room would hear of every reconnect of every member.
    pub join_leave: bool,
    /// This node's name in presence answers: several nodes sharing one log must have distinct
    /// ones (1 to 64 characters of `A-Z a-z 0-9 _ . -`; another value stops the start with
    /// an error).
    pub node_id: String,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            recent_count: 50,
            ring_capacity: 1000,
            dedup_window: 10_000,
            replay_batch_max: 1000,
            history_page_max: 200,
            room_idle_stop: Duration::from_secs(300),
            room_inflight_max: 8192,
            restarts_max: 5,
            restart_window: Duration::from_secs(10),
            join_leave: false,
            node_id: "local".into(),
        }
    }
}

/// Authentication.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// What a caller without a token may do: `none`, `read` (every room) or `write` (every
    /// room, under the name it gives: no authentication). Callers with a token get what it
    /// grants.
    pub anonymous: Anonymous,
    /// The folder of the token secret (`secret`, mode 0600, generated at first start; and
    /// `secret.previous` after `roomlog token rotate`). Default `<data>/auth`.
    pub secret_dir: Option<PathBuf>,
    /// Whether a caller on this host (a loopback peer) may use the admin endpoints without an
    /// admin token. Off by default: a tunnel (cloudflared, ngrok, ssh -R) also connects from
    /// loopback, so it would hand the admin scope to the internet. The operator's commands
    /// (`roomlog stats`, `janitor run`, ...) sign their own admin token with the secret. A peer
    /// listed in `trusted_proxies` never counts as this host: it relays callers from anywhere.
    pub admin_from_host: bool,
    /// Whether `/metrics` needs the admin scope (an admin token, or the host when
    /// `admin_from_host`). On by default: behind a tunnel (cloudflared, ngrok, ssh -R) every
    /// client connects from loopback, so a public `/metrics` would be public to the internet.
    /// Prometheus sends an admin token (`ops/prometheus/prometheus.yml`).
    pub metrics_private: bool,
    /// Names no caller without a token may take (compared case-insensitively), besides the
    /// ones reserved by token users themselves (see `auth::ReservedNames`).
    pub reserved_names: Vec<String>,
    /// Peers whose forwarding headers (`CF-Connecting-IP`, `Forwarded`, `X-Forwarded-For`)
    /// say who the client is: a tunnel or reverse proxy on this host (cloudflared, ngrok,
    /// nginx), typically `["127.0.0.1", "::1"]`. Empty by default: from any other peer those
    /// headers are the client's own word, and a client that could name its address would get a
    /// fresh failure budget per request.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            anonymous: Anonymous::None,
            secret_dir: None,
            admin_from_host: false,
            metrics_private: true,
            reserved_names: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

impl Config {
    /// Where the token secret lives.
    pub fn secret_dir(&self) -> PathBuf {
        self.auth.secret_dir.clone().unwrap_or_else(|| self.data.join("auth"))
    }
}

/// The most `limits.body_bytes_max` may be: with the client id and names, a message's log
/// record, edit or history page then stays under the size sled keeps durable
/// (`durable::VALUE_BYTES_MAX`, 80 KiB; see `durable::SledDb`).
pub const BODY_BYTES_LIMIT: usize = 64 * 1024;
/// The most `limits.client_id_bytes_max` may be, for the same reason.
pub const CLIENT_ID_BYTES_LIMIT: usize = 1024;

/// Bounds on what one client can make the server hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest message body in bytes; a larger one gets `body_too_large` and is not stored.
    pub body_bytes_max: usize,
    /// Largest client id in bytes.
    pub client_id_bytes_max: usize,
    /// Largest WebSocket message a client may send; beyond it the connection is closed
    /// (1009) because the frame cannot even be read.
    pub frame_bytes_max: usize,
    /// Bytes of a connection's WebSocket read buffer, and of the writes gathered before one
    /// goes to the socket. Small, because every connection holds one; a larger frame grows
    /// the read buffer while it is read.
    pub read_buffer_bytes: usize,
    /// Bytes a connection's WebSocket may buffer when the client does not read; past it the
    /// connection is closed. (tungstenite's own default is unbounded.)
    pub write_buffer_bytes_max: usize,
    /// Open WebSocket connections; more are refused with HTTP 503.
    pub connections_max: usize,
    /// Open WebSocket connections from one source address; more are refused with HTTP 429
    /// `too_many_connections_from_address`.
    pub connections_per_address_max: usize,
    /// Rooms one connection may have joined at once.
    pub rooms_per_connection_max: usize,
    /// Frames queued for one connection per joined room; a client that falls this far behind
    /// is disconnected (close code 4008) and may resume from its last seq.
    pub outbound_queue_max: usize,
    /// Bytes of frames queued for one connection across all its rooms; a client that falls
    /// this far behind is disconnected (close code 4008) and may resume from its last seq.
    pub outbound_queue_bytes_max: usize,
    /// Frames one connection may send per second, on average (a token bucket); beyond it a
    /// frame is refused with `rate_limited` and the connection stays.
    pub frames_per_second: u32,
    /// Frames one connection may send at once after being quiet (the bucket's size).
    pub frames_burst: u32,
    /// How long a client has to send a whole request head (and, on a kept-alive connection,
    /// the next one); a slower one is disconnected.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Largest request head (request line and headers), in bytes; a larger one gets HTTP 431.
    pub header_bytes_max: usize,
    /// How long a WebSocket may stay without a frame from the client (pongs count: the server
    /// pings at a third of it, and browsers answer pings themselves); then it is closed (1001).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Largest file upload, in bytes; streamed, never held in memory.
    pub upload_bytes_max: u64,
    /// How long a graceful shutdown waits for connections to close.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Failed authentications one source address may make per minute; beyond it, its
    /// connections are refused with HTTP 429 `too_many_failures` until the minute is over.
    pub auth_failures_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes_max: 64 * 1024,
            client_id_bytes_max: 128,
            frame_bytes_max: 1024 * 1024,
            read_buffer_bytes: 8 * 1024,
            write_buffer_bytes_max: 4 * 1024 * 1024,
            connections_max: 20_000,
            connections_per_address_max: 1_000,
            rooms_per_connection_max: 64,
            outbound_queue_max: 4096,
            outbound_queue_bytes_max: 1024 * 1024,
            frames_per_second: 20,
            frames_burst: 60,
            handshake_timeout: Duration::from_secs(10),
            header_bytes_max: 16 * 1024,
            idle_timeout: Duration::from_secs(300),
            upload_bytes_max: 1 << 30,
            shutdown_grace: Duration::from_secs(5),
            auth_failures_per_minute: 20,
        }
    }
}

/// A configuration that cannot be loaded; reported by `main` with the file and key.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

impl Config {
    /// Loads defaults, then the TOML file if given, then `ROOMLOG_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        let mut config: Config = figment
            .merge(Env::prefixed("ROOMLOG_").ignore(NOT_CONFIG_KEYS).split("__"))
            .extract()
            .map_err(|e| ConfigError(Box::new(e)))?;
        for (key, value, limit) in [
            ("limits.body_bytes_max", config.limits.body_bytes_max, BODY_BYTES_LIMIT),
            ("limits.client_id_bytes_max", config.limits.client_id_bytes_max, CLIENT_ID_BYTES_LIMIT),
        ] {
            if value > limit {
                let why = format!("{key} = {value} is over its limit of {limit} bytes: a larger message would not fit a durable log record");
                return Err(ConfigError(Box::new(figment::Error::from(why))));
            }
        }
        if !is_plain_name(&config.chat.node_id) {
            let why = format!(
                "chat.node_id = {:?}: use 1 to 64 characters of A-Z a-z 0-9 _ . -",
                config.chat.node_id.chars().take(80).collect::<String>()
            );
            return Err(ConfigError(Box::new(figment::Error::from(why))));
        }
        if let Some(folder) = file.and_then(Path::parent) {
            for path in [&mut config.files.lifecycle, &mut config.files.cold_dir].into_iter().flatten() {
                if path.is_relative() {
                    *path = folder.join(&*path);
                }
            }
        }
        config.normalise();
        Ok(config)
    }

    /// Raises values that other values depend on, so that no combination is inconsistent, and
    /// holds counts and sizes to what the code can allocate and add up without overflow (a
    /// count of `usize::MAX` once made tokio's channel constructor panic on every join).
    pub fn normalise(&mut self) {
        const COUNT_MAX: usize = 1 << 24;
        const BYTES_MAX: usize = 1 << 30;
        let chat = &mut self.chat;
        chat.recent_count = chat.recent_count.min(COUNT_MAX);
        chat.ring_capacity = chat.ring_capacity.max(chat.recent_count).clamp(1, COUNT_MAX);
        chat.dedup_window = chat.dedup_window.max(chat.ring_capacity).min(COUNT_MAX);
        chat.replay_batch_max = chat.replay_batch_max.clamp(1, COUNT_MAX);
        chat.history_page_max = chat.history_page_max.clamp(1, 100_000);
        chat.room_inflight_max = chat.room_inflight_max.clamp(1, COUNT_MAX);
        self.search.limit_max = self.search.limit_max.clamp(1, 10_000);
        self.log.queue_max = self.log.queue_max.clamp(1, COUNT_MAX);
        self.log.batch_max = self.log.batch_max.clamp(1, COUNT_MAX);
        self.limits.connections_max = self.limits.connections_max.clamp(1, COUNT_MAX);
        self.limits.outbound_queue_max = self.limits.outbound_queue_max.clamp(16, COUNT_MAX);
        self.limits.read_buffer_bytes = self.limits.read_buffer_bytes.clamp(1024, BYTES_MAX);
        self.limits.frame_bytes_max = self.limits.frame_bytes_max.min(BYTES_MAX);
        self.limits.body_bytes_max = self.limits.body_bytes_max.min(BODY_BYTES_LIMIT);
        self.limits.client_id_bytes_max = self.limits.client_id_bytes_max.min(CLIENT_ID_BYTES_LIMIT);
        // tungstenite needs room for its write buffer plus one whole message.
        let write_buffer_min =
            self.limits.read_buffer_bytes + 2 * self.limits.body_bytes_max.max(self.limits.frame_bytes_max);
        self.limits.write_buffer_bytes_max = self.limits.write_buffer_bytes_max.max(write_buffer_min);
    }

    /// Where the server writes the address it is listening on.
    pub fn addr_file(&self) -> PathBuf {
        self.data.join("roomlog.addr")
    }

    /// The address a running server on this data folder wrote to [`Self::addr_file`], if any.
    pub fn recorded_addr(&self) -> Option<SocketAddr> {
        std::fs::read_to_string(self.addr_file()).ok().and_then(|s| s.trim().parse().ok())
    }

    /// The folder of the log's sled database.
    pub fn log_dir(&self) -> PathBuf {
        self.data.join(LOG_FOLDER)
    }

    /// The folder of the projections' sled database.
    pub fn state_dir(&self) -> PathBuf {
        self.data.join(STATE_FOLDER)
    }

    /// The file store's folder.
    pub fn blob_dir(&self) -> PathBuf {
        self.data.join("blobs")
    }

    /// The folder of the message search index (tantivy).
    pub fn search_dir(&self) -> PathBuf {
        self.data.join("search")
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures must return figment's own large error
mod tests {
    use super::*;

    #[test]
    fn file_then_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "roomlog.toml",
                "[chat]\nrecent_count = 20\nroom_idle_stop = \"2m\"\n[limits]\nbody_bytes_max = 100\n",
            )?;
            jail.set_env("ROOMLOG_LIMITS__BODY_BYTES_MAX", "200");
            jail.set_env("ROOMLOG_LOG", "debug"); // the tracing filter, not a config key
            jail.set_env("ROOMLOG_CONFIG", "roomlog.toml");
            let config = Config::load(Some(Path::new("roomlog.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.chat.recent_count, 20);
            assert_eq!(config.chat.room_idle_stop, Duration::from_secs(120));
            assert_eq!(config.limits.body_bytes_max, 200);
            assert_eq!(config.chat.ring_capacity, 1000);
            Ok(())
        });
    }

    #[test]
    fn a_body_limit_past_what_a_durable_record_holds_is_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("big.toml", "[limits]\nbody_bytes_max = 1048576\n")?;
            let err = Config::load(Some(Path::new("big.toml"))).expect_err("over the limit");
            assert!(err.to_string().contains("limits.body_bytes_max"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_node_id_that_is_not_a_plain_name_is_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("node.toml", "[chat]\nnode_id = \"a b/c\"\n")?;
            let err = Config::load(Some(Path::new("node.toml"))).expect_err("not a plain name");
            assert!(err.to_string().contains("chat.node_id"), "{err}");
            jail.create_file("good.toml", "[chat]\nnode_id = \"node-2\"\njoin_leave = true\n")?;
            let config = Config::load(Some(Path::new("good.toml"))).map_err(|e| e.to_string())?;
            assert_eq!((config.chat.node_id.as_str(), config.chat.join_leave), ("node-2", true));
            assert_eq!((Config::default().chat.node_id.as_str(), Config::default().chat.join_leave), ("local", false));
            Ok(())
        });
    }

    #[test]
    fn a_plain_node_id_is_also_a_room_name_and_nothing_else_is() {
        for name in ["node-2", "a.b_c", "x", &"n".repeat(64), "", "a b", "a/b", &"n".repeat(65), "é"] {
            let room = crate::event::RoomId::parse(name).is_ok();
            assert_eq!(is_plain_name(name), room, "{name:?}");
        }
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[chat]\nrecnt_count = 20\n")?;
            let err = Config::load(Some(Path::new("bad.toml"))).expect_err("unknown key must be refused");
            assert!(err.to_string().contains("recnt_count"), "{err}");
            Ok(())
        });
    }
}
