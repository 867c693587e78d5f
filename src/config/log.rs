//! The log's configuration: `[log]` and, in cluster mode, `[jetstream]`.

use std::path::PathBuf;
use std::time::Duration;

/// Limits of the log writer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Where the log lives: `sled`, the embedded default (nothing else needed), or
    /// `jetstream`, a NATS JetStream stream shared by several nodes (`[jetstream]`; cluster
    /// mode, see README "When one box is not enough").
    pub backend: LogBackend,
    /// Most events written and flushed together in one group commit. Larger batches amortise
    /// the fsync; the bound keeps one commit's latency and memory in check.
    pub batch_max: usize,
    /// Most bytes of records in one group commit: what one commit can take of the disk is a
    /// multiple of it (see `space`), and the free-space floors are checked between commits.
    pub batch_bytes_max: usize,
    /// Most appends waiting for the writer. A full queue makes appenders wait (backpressure)
    /// instead of letting memory grow.
    pub queue_max: usize,
    /// Bytes of sled's page cache.
    pub cache_bytes_max: u64,
    /// Compact the log (see `roomlog compact`) each time the server starts, before it serves.
    pub compact_at_start: bool,
    /// New content is refused (nothing is written, nothing acknowledged: `disk_full`) while
    /// the log's filesystem has less than this many bytes free, and accepted again once it has
    /// more; clean-up goes on down to half of it (see `space::Floors`). Unset: 10 % of the
    /// volume, at least 64 MiB and at most 256 MiB; never under 32 MiB. sled cannot recover
    /// from a write that fails for lack of space without a restart, so the log never lets it
    /// get there.
    pub min_free_bytes: Option<u64>,
    /// Start even though the log ends before seqs the seq floor says were acknowledged (see
    /// `log::LogError::LostRecords`): what is left is served, and new seqs go on above every seq
    /// ever handed out. For an operator who has no backup to restore; off by default.
    pub accept_lost_records: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            backend: LogBackend::Sled,
            batch_max: 4096,
            batch_bytes_max: 1024 * 1024,
            queue_max: 65_536,
            cache_bytes_max: 256 * 1024 * 1024,
            compact_at_start: false,
            min_free_bytes: None,
            accept_lost_records: false,
        }
    }
}

/// Where the log lives (`log.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogBackend {
    /// The embedded sled database in `<data>/log`.
    Sled,
    /// A NATS JetStream stream (`[jetstream]`), with this node's replica in `<data>/log`.
    Jetstream,
}

/// Where the cluster's log lives: `[jetstream]` in the configuration.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JetStreamConfig {
    /// The NATS servers to connect to (any one is enough; the client learns the others).
    pub servers: Vec<String>,
    /// The stream holding the log, created if absent (file storage, `replicas` copies).
    pub stream: String,
    /// Copies of every record the cluster keeps: 3 for a cluster that survives one node lost.
    pub replicas: usize,
    /// A NATS credentials file (`.creds`), for a server that requires one.
    pub credentials: Option<PathBuf>,
    /// How long an append may wait for JetStream (retrying with the same message id) before
    /// it is refused with `storage_unavailable`.
    #[serde(with = "humantime_serde")]
    pub append_timeout: Duration,
    /// How long one publish waits for its acknowledgement before it is sent again.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// The tail's pull expiry: how soon it notices a lost stream leader.
    #[serde(with = "humantime_serde")]
    pub pull_expiry: Duration,
    /// How long JetStream remembers a message id to drop a duplicate.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// How long start-up waits for JetStream before it gives up.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The node is not ready (`/readyz`) while its replica is more than this many records
    /// behind the stream: it would serve old history.
    pub ready_lag_max: u64,
    /// How long a node holds the lease of work that must run on one node only (the session
    /// sweeper, the janitor's schedule) without renewing it; it renews every third of it. A
    /// node that dies gives its leases up to another after at most this long.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            servers: vec!["nats://127.0.0.1:4222".into()],
            stream: "ROOMLOG".into(),
            replicas: 3,
            credentials: None,
            append_timeout: Duration::from_secs(15),
            ack_timeout: Duration::from_secs(2),
            pull_expiry: Duration::from_secs(2),
            duplicate_window: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(30),
            ready_lag_max: 10_000,
            lease_ttl: Duration::from_secs(10),
        }
    }
}
