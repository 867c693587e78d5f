//! The log on a NATS JetStream stream: cluster mode (issue 16, `log.backend = "jetstream"`).
//!
//! JetStream assigns seqs itself, so this is not a [`Backend`] under the local writer but a
//! second way [`EventLog`] is backed, with the same API:
//!
//! - **appends** are published to one stream (`jetstream.stream`, subjects `rl.>`), pipelined:
//!   each carries a `Nats-Msg-Id` (for a post, the hash of room, author and client id, so that a
//!   retry through any node is stored once; for any other event, an id of its own), and a
//!   publish that times out or finds no leader (an election takes 5–8 s) is sent again with
//!   the same id until `jetstream.append_timeout`. The stream's seq is roomlog's seq;
//! - **every node keeps a replica** of the stream in its own data folder (`<data>/log`, the
//!   sled backend), filled in seq order by one ordered consumer (the *tail*, with a short pull
//!   expiry: the client's defaults stall ~35 s after a leader loss). Reads, the head and the
//!   projections are served from the replica, exactly as on one node;
//! - an append is **acknowledged** once JetStream acknowledged it (stored on a quorum, fsynced
//!   with `sync_interval: always`) *and* this node's tail has it, so that what the caller gets
//!   back is what every reader of this node sees next (the stored record: for a duplicate, the
//!   original with its seq).
//!
//! Timestamps come from the publishing node's clock; the tail keeps them non-decreasing in seq
//! order (`at = max(previous, stamped)`), which every node computes alike.
//!
//! Where one writer must win, an append is **conditional** (`Nats-Expected-Last-Subject-Sequence`):
//! an edit or deletion on the subject of the message it amends, a session's change on its
//! session's subject, and a lease holder's run fenced by the newest record of its own stream
//! (with `Nats-Expected-Last-Subject-Sequence-Subject`, nats-server 2.11 and later). A stale one
//! is refused with [`LogError::Conflict`] and nothing is stored.
//!
//! **Removing superseded records** (`log::compact`'s rule, which makes what goes of a stream a
//! prefix of it) purges the stream by subject below a seq, then removes the same records from
//! the replica ([`purge`]). The janitor's run does it on the lease holder (rule `log_purge`);
//! every node, when its tail brings a `JanitorRan`, finds what its own replica holds that the
//! log's removals now supersede and purges it too, from its replica and, if still there, from
//! the stream. A purge is idempotent and needs no lease: what a removal supersedes stays
//! superseded, whichever node finds it.
//!
//! [`Backend`]: super::Backend

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::{Context, PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};

pub use crate::config::JetStreamConfig;

use super::backend::Backend;
use super::writer::{Expect, WriterMsg};
use super::{off_async, LogError};
use crate::event::{decode, encode, Envelope, Event, StreamId};

/// The subjects of the log's stream.
pub const SUBJECTS: &str = "rl.>";

/// The subject of a stream's records: `rl.` and the stream's parts, each a subject token in
/// which every byte but `[A-Za-z0-9_-]` is written `~XX` (hex), so that room names with dots
/// and file keys with slashes map one to one: `room/a.b` → `rl.room.a~2eb`.
pub fn subject(stream: &StreamId) -> String {
    let (kind, rest) = stream.as_str().split_once('/').unwrap_or((stream.as_str(), ""));
    let mut out = String::with_capacity(4 + stream.as_str().len() * 2);
    out.push_str("rl.");
    token(kind, &mut out);
    if !rest.is_empty() {
        out.push('.');
        token(rest, &mut out);
    }
    out
}

fn token(part: &str, out: &mut String) {
    for byte in part.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("~{byte:02x}"));
        }
    }
}

/// The `Nats-Msg-Id` of an append: a post's is derived from what makes it the same post (its
/// room, author and client id), so that a retry through any node within the duplicate window
/// is stored once; any other event gets an id of its own, which its retries reuse.
pub fn message_id(event: &Event) -> String {
    match event {
        Event::MessagePosted(post) => {
            let mut hasher = blake3::Hasher::new();
            for part in [post.room.as_str(), &post.author, &post.client_id] {
                hasher.update(&(part.len() as u64).to_be_bytes());
                hasher.update(part.as_bytes());
            }
            format!("post-{}", hasher.finalize().to_hex())
        }
        _ => format!("ev-{}", uuid::Uuid::new_v4().simple()),
    }
}

/// A failure of the cluster's log, kept as the source of [`LogError::Storage`].
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("connecting to NATS at {servers}: {reason}")]
    Connect { servers: String, reason: String },
    #[error("JetStream stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
    #[error("JetStream did not store the record within {0:?} (no stream leader, or NATS unreachable): {1}")]
    Unavailable(Duration, String),
    #[error("JetStream refused the record: {0}")]
    Refused(String),
    #[error("this node's replica of the log did not reach seq {seq} within {waited:?}")]
    ReplicaBehind { seq: u64, waited: Duration },
    #[error("record {0} is not in this node's replica of the log")]
    NotInReplica(u64),
    #[error("purging superseded records of {subject} below seq {below} from the stream: {reason}")]
    Purge { subject: String, below: u64, reason: String },
}

impl From<ClusterError> for LogError {
    fn from(error: ClusterError) -> Self {
        LogError::Storage(Box::new(error))
    }
}

/// What the log's JetStream side hands to [`EventLog`](super::EventLog).
pub(super) struct Started {
    pub head: watch::Receiver<u64>,
    pub failure: watch::Receiver<Option<Arc<LogError>>>,
    pub connected: watch::Receiver<bool>,
    /// Records of the stream not yet in the replica, as the tail last heard.
    pub lag: watch::Receiver<u64>,
    pub leases: Leases,
    pub files: SharedFiles,
    pub client: async_nats::Client,
    pub newest: Newest,
}

/// Connects, makes sure the stream exists, and starts the tail (filling `replica`) and the
/// publisher (taking `rx`).
///
/// With `purge_superseded` (the janitor's `purge_log`), the tail purges what removals
/// superseded once it has brought a janitor's run and caught up with the stream (see the
/// module's notes).
pub(super) async fn start(
    replica: Arc<dyn Backend>,
    config: &JetStreamConfig,
    rx: mpsc::Receiver<WriterMsg>,
    purge_superseded: bool,
) -> Result<Started, LogError> {
    let client = connect(config).await?;
    let nats = client.clone();
    let (connected_tx, connected) = watch::channel(true);
    let context = async_nats::jetstream::ContextBuilder::new()
        .timeout(config.ack_timeout)
        .max_ack_inflight(8192)
        .backpressure_on_inflight(true)
        .build(client.clone());
    let stream = ensure_stream(&context, config).await?;
    let newest_of = stream.clone();
    let leases = Leases::open(&context, config).await?;
    let files = SharedFiles::open(&context, config).await?;
    let last = replica.last()?.map(|(seq, bytes)| decode(seq, &bytes)).transpose()?;
    let (head_tx, head) = watch::channel(last.as_ref().map_or(0, |e| e.seq));
    let (failure_tx, failure) = watch::channel(None);
    let (lag_tx, lag) = watch::channel(0);
    let tail = Tail {
        lag: lag_tx,
        replica: replica.clone(),
        stream,
        pull_expiry: config.pull_expiry,
        last_seq: last.as_ref().map_or(0, |e| e.seq),
        last_at: last.as_ref().map_or(0, |e| e.at_unix_ms),
        head: head_tx,
        failure: failure_tx,
        purging: purge_superseded.then(Arc::default),
        purge_due: false,
    };
    let (stop_tail, tail_stopped) = oneshot::channel();
    tokio::spawn(tail.run(tail_stopped));
    tokio::spawn(watch_connection(client, connected_tx));
    let publisher = Publisher {
        context,
        stream: newest_of.clone(),
        replica,
        head: head.clone(),
        append_timeout: config.append_timeout,
        record_bytes_max: 0,
        last_at: last.as_ref().map_or(0, |e| e.at_unix_ms),
    };
    let newest = Newest { stream: newest_of, head: head.clone(), waited_max: config.append_timeout };
    tokio::spawn(publisher.run(rx, stop_tail));
    Ok(Started { head, failure, connected, lag, leases, files, client: nats, newest })
}

async fn connect(config: &JetStreamConfig) -> Result<async_nats::Client, LogError> {
    let servers = config.servers.join(",");
    let failed = |reason: String| LogError::from(ClusterError::Connect { servers: servers.clone(), reason });
    let options = match &config.credentials {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| failed(format!("reading credentials {}: {e}", path.display())))?,
        None => async_nats::ConnectOptions::new(),
    };
    let options = options
        .name("roomlog")
        .connection_timeout(config.ack_timeout.max(Duration::from_secs(1)))
        .request_timeout(Some(config.ack_timeout))
        .max_reconnects(None)
        .retry_on_initial_connect();
    let client = options.connect(config.servers.clone()).await.map_err(|e| failed(e.to_string()))?;
    let deadline = Instant::now() + config.connect_timeout;
    while client.connection_state() != async_nats::connection::State::Connected {
        if Instant::now() >= deadline {
            return Err(failed(format!("no server answered within {:?}", config.connect_timeout)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(client)
}

/// The stream, created if absent. Its subjects, storage and replicas are checked: a stream of
/// the same name holding something else is an error, not something to write into.
async fn ensure_stream(context: &Context, config: &JetStreamConfig) -> Result<stream::Stream, LogError> {
    let failed = |reason: String| LogError::from(ClusterError::Stream { stream: config.stream.clone(), reason });
    let wanted = stream::Config {
        name: config.stream.clone(),
        subjects: vec![SUBJECTS.into()],
        num_replicas: config.replicas.max(1),
        storage: stream::StorageType::File,
        duplicate_window: config.duplicate_window,
        allow_direct: true,
        ..Default::default()
    };
    let mut stream = until_ready(config, &config.stream, || async {
        context.get_or_create_stream(wanted.clone()).await.map_err(|e| e.to_string())
    })
    .await
    .map_err(failed)?;
    let info = stream.info().await.map_err(|e| failed(e.to_string()))?;
    let have = &info.config;
    if have.subjects != wanted.subjects || have.storage != wanted.storage || have.num_replicas != wanted.num_replicas {
        return Err(failed(format!(
            "it exists with subjects {:?}, {:?} storage and {} replicas; roomlog needs {:?}, file storage and {}",
            have.subjects, have.storage, have.num_replicas, wanted.subjects, wanted.num_replicas
        )));
    }
    Ok(stream)
}

/// Asks the cluster for the newest record of one stream, so that a node whose conditional
/// append was refused can catch up with what another node wrote before it decides again.
#[derive(Debug, Clone)]
pub struct Newest {
    stream: stream::Stream,
    head: watch::Receiver<u64>,
    /// How long to wait for this node's replica to hold that record.
    waited_max: Duration,
}

impl Newest {
    /// The seq of the newest record of `of` in the stream (0: none), once this node's replica
    /// holds it. Asked of the stream leader (a direct get may be answered by a follower that
    /// is behind).
    pub async fn caught_up(&self, of: &StreamId) -> Result<u64, LogError> {
        let seq = match self.stream.get_last_raw_message_by_subject(&subject(of)).await {
            Ok(message) => message.sequence,
            Err(error) if error.kind() == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => 0,
            Err(error) => return Err(ClusterError::Unavailable(self.waited_max, error.to_string()).into()),
        };
        self.replica_holds(seq).await
    }

    /// `seq`, once this node's replica holds it.
    async fn replica_holds(&self, seq: u64) -> Result<u64, LogError> {
        let mut head = self.head.clone();
        let reached = tokio::time::timeout(self.waited_max, head.wait_for(|&head| head >= seq)).await;
        match reached {
            Ok(Ok(_)) => Ok(seq),
            _ => Err(ClusterError::ReplicaBehind { seq, waited: self.waited_max }.into()),
        }
    }

    /// The seq of the newest record in the stream, asked of its leader, once this node's
    /// replica holds it: everything the cluster committed before this call.
    pub async fn caught_up_all(&self) -> Result<u64, LogError> {
        let seq = match self.stream.clone().info().await {
            Ok(info) => info.state.last_sequence,
            Err(error) => return Err(ClusterError::Unavailable(self.waited_max, error.to_string()).into()),
        };
        self.replica_holds(seq).await
    }
}

/// The KV bucket of the leases.
pub const LEASE_BUCKET: &str = "roomlog_leases";

/// Leases in a JetStream key-value bucket, for work that must run on one node at a time: a
/// node takes a lease by creating its key (which fails while another holds it), keeps it by
/// updating the key at the revision it last wrote (which fails once another took it), and the
/// bucket's `max_age` (`jetstream.lease_ttl`) lets a dead holder's key expire.
#[derive(Debug, Clone)]
pub struct Leases {
    store: async_nats::jetstream::kv::Store,
    /// This process, as the holder named in the keys.
    holder: String,
    ttl: Duration,
    held: Arc<std::sync::Mutex<std::collections::BTreeMap<String, watch::Receiver<bool>>>>,
}

impl Leases {
    async fn open(context: &Context, config: &JetStreamConfig) -> Result<Self, LogError> {
        let store = until_ready(config, LEASE_BUCKET, || kv_bucket(context, LEASE_BUCKET, config.lease_ttl, config))
            .await
            .map_err(|reason| LogError::from(ClusterError::Stream { stream: LEASE_BUCKET.into(), reason }))?;
        let holder = format!("{}-{}", hostname(), uuid::Uuid::new_v4().simple());
        Ok(Self { store, holder, ttl: config.lease_ttl, held: Arc::default() })
    }

    /// Whether this node holds lease `name`, changing as it takes or loses it; tries to take
    /// it from now on (once per name), and gives it back when every receiver is dropped.
    pub fn hold(&self, name: &str) -> watch::Receiver<bool> {
        let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(receiver) = held.get(name) {
            return receiver.clone();
        }
        let (tx, rx) = watch::channel(false);
        held.insert(name.to_owned(), rx.clone());
        tokio::spawn(self.clone().keep(name.to_owned(), tx));
        rx
    }

    /// Asks the bucket whether this process still holds lease `name` (its key names this
    /// process), just before work under it: a holder paused past its lease (a stopped VM, a long
    /// GC-like stall) finds out here rather than at its next renewal.
    pub async fn confirm(&self, name: &str) -> bool {
        match self.store.get(name).await {
            Ok(Some(value)) => value.as_ref() == self.holder.as_bytes(),
            _ => false,
        }
    }

    /// The names of the leases this node holds now.
    pub fn held(&self) -> Vec<String> {
        let held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        held.iter().filter(|(_, rx)| *rx.borrow()).map(|(name, _)| name.clone()).collect()
    }

    async fn keep(self, name: String, tx: watch::Sender<bool>) {
        let mut revision: Option<u64> = None;
        let value = bytes::Bytes::from(self.holder.clone());
        loop {
            let outcome = match revision {
                None => self.store.create(&name, value.clone()).await.map_err(|e| e.to_string()),
                Some(revision) => self.store.update(&name, value.clone(), revision).await.map_err(|e| e.to_string()),
            };
            match (outcome, revision) {
                (Ok(new), None) => {
                    tracing::info!(lease = name, holder = self.holder, "took the lease: this node runs it");
                    revision = Some(new);
                    tx.send_replace(true);
                }
                (Ok(new), Some(_)) => revision = Some(new),
                (Err(_), None) => {} // held by another node
                (Err(error), Some(_)) => {
                    tracing::warn!(lease = name, error, "lost the lease: this node stops running it");
                    revision = None;
                    tx.send_replace(false);
                }
            }
            // After each held renewal, the key has a third of its life left at the latest check.
            tokio::select! {
                () = tokio::time::sleep(self.ttl / 3) => {}
                () = tx.closed() => break,
            }
        }
        // Nobody here wants it any more (the server stops): give it up at once, if still ours.
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&name);
        if let Some(revision) = revision {
            let _ = self.store.delete_expect_revision(&name, Some(revision)).await;
        }
    }
}

/// The object-store bucket of the files' content.
pub const FILE_BUCKET: &str = "roomlog_files";

/// The content of uploaded files, shared by every node: a JetStream object-store bucket whose
/// objects are named by their blake3 hash, so that storing the same content twice (two nodes
/// racing, a retry) is harmless. Each node keeps its own copies as a read-through cache.
#[derive(Clone)]
pub struct SharedFiles {
    store: async_nats::jetstream::object_store::ObjectStore,
    /// The bucket's own stream, for reads the stream leader answers ([`SharedFiles::holds`]).
    stream: stream::Stream,
}

impl std::fmt::Debug for SharedFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedFiles { bucket: roomlog_files }")
    }
}

impl SharedFiles {
    async fn open(context: &Context, config: &JetStreamConfig) -> Result<Self, LogError> {
        let failed = |reason: String| LogError::from(ClusterError::Stream { stream: FILE_BUCKET.into(), reason });
        let (store, stream) = until_ready(config, FILE_BUCKET, || async {
            crate::fault::fail("jetstream:files-bucket").map_err(|e| e.to_string())?;
            let store = match context.get_object_store(FILE_BUCKET).await {
                Ok(store) => store,
                Err(_) => context
                    .create_object_store(async_nats::jetstream::object_store::Config {
                        bucket: FILE_BUCKET.into(),
                        num_replicas: config.replicas.max(1),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?,
            };
            let stream = context.get_stream(format!("OBJ_{FILE_BUCKET}")).await.map_err(|e| e.to_string())?;
            Ok((store, stream))
        })
        .await
        .map_err(failed)?;
        until_answering(context, config, &format!("$O.{FILE_BUCKET}.C.probe")).await.map_err(failed)?;
        Ok(Self { store, stream })
    }

    /// Whether the bucket holds `name` now, asked of its stream's leader (the object store's
    /// own `info` is a direct get, which a follower that is behind may answer).
    pub async fn holds(&self, name: &str) -> Result<bool, ClusterError> {
        use base64::Engine as _;
        let meta = format!("$O.{FILE_BUCKET}.M.{}", base64::engine::general_purpose::URL_SAFE.encode(name));
        match Box::pin(self.stream.get_last_raw_message_by_subject(&meta)).await {
            Ok(message) => serde_json::from_slice::<async_nats::jetstream::object_store::ObjectInfo>(&message.payload)
                .map(|info| !info.deleted)
                .map_err(|e| ClusterError::Refused(format!("the bucket's record of {name}: {e}"))),
            Err(error) if error.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(false),
            Err(error) => Err(ClusterError::Unavailable(Duration::ZERO, error.to_string())),
        }
    }

    /// Deletes `name` from the bucket; gone already is fine.
    pub async fn delete(&self, name: &str) -> Result<(), ClusterError> {
        use async_nats::jetstream::object_store::DeleteErrorKind;
        match Box::pin(self.store.delete(name)).await {
            Err(error) if error.kind() != DeleteErrorKind::NotFound => {
                Err(ClusterError::Refused(format!("deleting {name}: {error}")))
            }
            _ => Ok(()),
        }
    }

    /// Stores the file at `path` as `name`, unless the bucket has it already; returns once
    /// JetStream acknowledged every chunk.
    pub async fn put(&self, name: &str, path: &std::path::Path) -> Result<(), ClusterError> {
        if self.holds(name).await? {
            return Ok(());
        }
        let mut file = tokio::fs::File::open(path).await.map_err(|e| ClusterError::Refused(e.to_string()))?;
        Box::pin(self.store.put(name, &mut file))
            .await
            .map_err(|e| ClusterError::Refused(format!("storing {name}: {e}")))?;
        Ok(())
    }

    /// The object `name`, to read; `None` when the bucket does not have it.
    pub async fn get(&self, name: &str) -> Result<Option<async_nats::jetstream::object_store::Object>, ClusterError> {
        use async_nats::jetstream::object_store::GetErrorKind;
        match Box::pin(self.store.get(name)).await {
            Ok(object) => Ok(Some(object)),
            Err(error) if error.kind() == GetErrorKind::NotFound => Ok(None),
            Err(error) => Err(ClusterError::Unavailable(Duration::ZERO, error.to_string())),
        }
    }
}

/// Asks every node: publishes `payload` on `subject` (plain NATS, not the stream) and gathers
/// the answers until none came for `quiet` after the last one, or `max` has passed. For what
/// nodes hold in memory only (presence); an unreachable NATS answers nothing.
pub async fn ask_all(
    client: &async_nats::Client,
    subject: String,
    payload: bytes::Bytes,
    quiet: Duration,
    max: Duration,
) -> Vec<bytes::Bytes> {
    let inbox = client.new_inbox();
    let Ok(mut answers) = client.subscribe(inbox.clone()).await else { return Vec::new() };
    if client.publish_with_reply(subject, inbox, payload).await.is_err() {
        return Vec::new();
    }
    let deadline = tokio::time::Instant::now() + max;
    let mut out = Vec::new();
    loop {
        // Until the first answer, up to `max`: a loaded node may take longer than `quiet` to
        // send any (CI found a third node left out that way).
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let wait = if out.is_empty() { left } else { quiet.min(left) };
        match tokio::time::timeout(wait, answers.next()).await {
            Ok(Some(answer)) => out.push(answer.payload),
            _ => return out,
        }
    }
}

/// Answers every [`ask_all`] on `subject` with what `answer` makes of the payload, until the
/// connection ends.
pub async fn answer_all<F, Fut>(client: async_nats::Client, subject: String, answer: F)
where
    F: Fn(bytes::Bytes) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<bytes::Bytes>> + Send,
{
    let mut asked = match client.subscribe(subject.clone()).await {
        Ok(asked) => asked,
        Err(error) => {
            tracing::error!(subject, error = %error, "cannot answer the other nodes");
            return;
        }
    };
    while let Some(question) = asked.next().await {
        let Some(reply) = question.reply else { continue };
        if let Some(payload) = answer(question.payload).await {
            let _ = client.publish(reply, payload).await;
        }
    }
}

/// The subject of an import's placeholders: a seq the imported log does not have is taken by a
/// placeholder, deleted once the import is done, so that every record keeps its seq.
pub const GAP_SUBJECT: &str = "rl.gap";

/// What an import moved into the cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Imported {
    pub records: u64,
    pub head_seq: u64,
    /// Seqs the log did not have (removed, or skipped after a crash), kept as gaps.
    pub gaps: u64,
    pub files: u64,
    pub file_bytes: u64,
}

/// Waits until the stream that takes `subject` answers publishes there: one just created on a
/// cluster of servers answers "no responders" for a moment. An import once failed on it in its
/// log's stream, and CI's run of stop 27 in the file bucket's (the object store's put gives up
/// at the first chunk refused). The import's publishes, each naming the seq before it, cannot
/// simply be sent again one by one, nor can an object's chunks. The probe names a last seq the
/// stream cannot have, so the stream refuses it without storing anything. Asked again for at
/// most `connect_timeout`, as every other wait for the cluster ([`until_ready`]).
async fn until_answering(context: &Context, config: &JetStreamConfig, subject: &str) -> Result<(), String> {
    let refused = until_ready(config, subject, || async {
        let probe = PublishMessage::build().payload(bytes::Bytes::new()).expected_last_sequence(u64::MAX);
        let answer = match context.send_publish(subject.to_owned(), probe).await {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| (e.kind(), e.to_string())),
            Err(e) => Err((e.kind(), e.to_string())),
        };
        match answer {
            Err((PublishErrorKind::WrongLastSequence, _)) => Ok(true),
            Ok(()) => Ok(false),
            Err((_, reason)) => Err(reason),
        }
    })
    .await
    .map_err(|reason| format!("the stream does not answer publishes after {:?}: {reason}", config.connect_timeout))?;
    if refused {
        Ok(())
    } else {
        Err("the stream stored a probe that named a seq it cannot have".to_owned())
    }
}

/// Moves a single node's log (`source`, its records as stored) into the cluster's stream, which
/// must be empty, every record under its own seq; then the file content under `blobs` (every
/// tier listed) into the shared bucket. The nodes of the cluster then start on empty data
/// folders and build everything from the stream.
pub async fn import(
    config: &JetStreamConfig,
    source: Arc<dyn Backend>,
    contents: Vec<(String, std::path::PathBuf, u64)>,
) -> Result<Imported, LogError> {
    let client = connect(config).await?;
    let context = async_nats::jetstream::ContextBuilder::new()
        .timeout(config.ack_timeout.max(Duration::from_secs(10)))
        .build(client);
    let mut stream = ensure_stream(&context, config).await?;
    let failed = |reason: String| LogError::from(ClusterError::Stream { stream: config.stream.clone(), reason });
    let state = stream.info().await.map_err(|e| failed(e.to_string()))?.state.clone();
    if state.last_sequence != 0 {
        return Err(failed(format!(
            "it is not empty (last seq {}): an import goes into a new stream only",
            state.last_sequence
        )));
    }
    until_answering(&context, config, GAP_SUBJECT).await.map_err(failed)?;
    let mut done = Imported { records: 0, head_seq: 0, gaps: 0, files: 0, file_bytes: 0 };
    let mut placeholders = Vec::new();
    let mut from = 1;
    loop {
        let reader = source.clone();
        let chunk = tokio::task::spawn_blocking(move || reader.read_raw(from, u64::MAX, 4096))
            .await
            .map_err(|e| LogError::Io(std::io::Error::other(e.to_string())))??;
        let Some(&(last, _)) = chunk.last() else { break };
        let mut acks = Vec::with_capacity(chunk.len());
        for (seq, bytes) in chunk {
            while done.head_seq + 1 < seq {
                let placeholder = done.head_seq + 1;
                let message =
                    PublishMessage::build().payload(bytes::Bytes::new()).expected_last_sequence(done.head_seq);
                let ack = context.send_publish(GAP_SUBJECT, message).await.map_err(|e| failed(e.to_string()))?;
                acks.push(ack);
                placeholders.push(placeholder);
                done.head_seq = placeholder;
                done.gaps += 1;
            }
            let envelope = decode(seq, &bytes)?;
            let message = PublishMessage::build()
                .payload(bytes::Bytes::from(bytes))
                .message_id(format!("import-{seq}"))
                .expected_last_sequence(seq - 1);
            acks.push(
                context.send_publish(subject(&envelope.stream), message).await.map_err(|e| failed(e.to_string()))?,
            );
            done.head_seq = seq;
            done.records += 1;
        }
        // Each publish names the seq before it: an ack out of place fails the import.
        for ack in acks {
            ack.await.map_err(|e| failed(format!("importing: {e}")))?;
        }
        from = last + 1;
    }
    for seq in placeholders {
        stream.delete_message(seq).await.map_err(|e| failed(format!("deleting placeholder {seq}: {e}")))?;
    }
    let files = SharedFiles::open(&context, config).await?;
    for (hash, path, bytes) in contents {
        files.put(&hash, &path).await?;
        done.files += 1;
        done.file_bytes += bytes;
    }
    Ok(done)
}

/// The KV bucket of what every node must share: the token secret.
pub const SECRET_BUCKET: &str = "roomlog_secrets";

/// The key of the token secret in [`SECRET_BUCKET`].
const SECRET_KEY: &str = "token-secret";

/// The cluster's token secret (in `token::SecretFiles::shared_form`): `local` if no node has
/// shared one yet (this node's becomes the cluster's), else the one shared last (by the first
/// node, or by `roomlog token rotate` on any node), so that a token issued by any node is
/// accepted by every node.
pub async fn share_secret(config: &JetStreamConfig, local: String) -> Result<String, LogError> {
    use async_nats::jetstream::kv::CreateErrorKind;
    let (store, failed) = secret_store(config).await?;
    let deadline = Instant::now() + config.connect_timeout;
    // Nodes starting together race to create the bucket and the key: a bucket just created
    // by another node may not answer for a moment.
    loop {
        let outcome = match store.create(SECRET_KEY, bytes::Bytes::from(local.clone())).await {
            Ok(_) => return Ok(local),
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => match store.get(SECRET_KEY).await {
                Ok(Some(shared)) => return String::from_utf8(shared.to_vec()).map_err(|e| failed(e.to_string())),
                Ok(None) => "the shared token secret is being replaced".to_owned(),
                Err(error) => error.to_string(),
            },
            Err(error) => error.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(failed(outcome));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Makes `shared` the cluster's token secret (after `roomlog token rotate`): every node adopts
/// it at its next start.
pub async fn publish_secret(config: &JetStreamConfig, shared: String) -> Result<(), LogError> {
    let (store, failed) = secret_store(config).await?;
    store.put(SECRET_KEY, bytes::Bytes::from(shared)).await.map_err(|e| failed(e.to_string()))?;
    Ok(())
}

/// The bucket of the token secret, waiting up to `connect_timeout` for a cluster just started,
/// and how to report its failures.
async fn secret_store(
    config: &JetStreamConfig,
) -> Result<(async_nats::jetstream::kv::Store, impl Fn(String) -> LogError), LogError> {
    let failed = |reason: String| LogError::from(ClusterError::Stream { stream: SECRET_BUCKET.into(), reason });
    let client = connect(config).await?;
    let context = async_nats::jetstream::ContextBuilder::new().timeout(config.ack_timeout).build(client);
    let store = until_ready(config, SECRET_BUCKET, || kv_bucket(&context, SECRET_BUCKET, Duration::ZERO, config))
        .await
        .map_err(&failed)?;
    Ok((store, failed))
}

/// Tries `attempt` until it succeeds, for at most `connect_timeout`, and returns its last error
/// after that: a cluster just started has no JetStream leader for a moment, and a busy one may
/// answer a request late (a node starting under CI's load saw its file bucket's creation time out).
/// Each attempt must be safe to repeat (get, else create).
async fn until_ready<T, F, Fut>(config: &JetStreamConfig, what: &str, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + config.connect_timeout;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if Instant::now() < deadline => {
                tracing::info!(%error, what, "waiting for JetStream");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// The key-value bucket `bucket` (one value per key, `replicas` copies, values kept for
/// `max_age`, zero for ever), created if absent.
async fn kv_bucket(
    context: &Context,
    bucket: &str,
    max_age: Duration,
    config: &JetStreamConfig,
) -> Result<async_nats::jetstream::kv::Store, String> {
    match context.get_key_value(bucket).await {
        Ok(store) => Ok(store),
        Err(_) => context
            .create_key_value(async_nats::jetstream::kv::Config {
                bucket: bucket.into(),
                history: 1,
                max_age,
                num_replicas: config.replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string()),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "node".into())
}

async fn watch_connection(client: async_nats::Client, connected: watch::Sender<bool>) {
    let mut was = true;
    loop {
        let now = client.connection_state() == async_nats::connection::State::Connected;
        if now != was {
            if now {
                tracing::info!("reconnected to NATS");
            } else {
                tracing::warn!("lost the connection to NATS: appends wait, then fail with storage_unavailable");
            }
            was = now;
        }
        connected.send_replace(now);
        if connected.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

type Reply = oneshot::Sender<Result<Envelope, Arc<LogError>>>;

/// A publish on its way: what to send again if its acknowledgement does not come.
struct InFlight {
    subject: String,
    id: String,
    payload: bytes::Bytes,
    ack: Option<PublishAckFuture>,
    reply: Reply,
    since: Instant,
    expect: Option<Expect>,
}

/// Takes appends in order, publishes them pipelined, and answers them in order.
struct Publisher {
    context: Context,
    stream: stream::Stream,
    replica: Arc<dyn Backend>,
    head: watch::Receiver<u64>,
    append_timeout: Duration,
    record_bytes_max: usize,
    last_at: u64,
}

impl Publisher {
    async fn run(mut self, mut rx: mpsc::Receiver<WriterMsg>, stop_tail: oneshot::Sender<()>) {
        self.record_bytes_max = self.replica.record_bytes_max().min(self.context.client().server_info().max_payload);
        let (inflight_tx, inflight_rx) = mpsc::channel::<InFlight>(8192);
        let answering = tokio::spawn(
            Answerer {
                context: self.context.clone(),
                replica: self.replica.clone(),
                head: self.head.clone(),
                append_timeout: self.append_timeout,
            }
            .run(inflight_rx),
        );
        while let Some(msg) = rx.recv().await {
            match msg {
                WriterMsg::Append { event, reply, expect } => {
                    if let Some(inflight) = self.publish(event, reply, expect).await {
                        if inflight_tx.send(inflight).await.is_err() {
                            break;
                        }
                    }
                }
                // Beside the appends, not behind them: a purge touches only records that a
                // durable removal already superseded.
                WriterMsg::Remove { seqs, reply } => {
                    let (stream, replica, head) = (self.stream.clone(), self.replica.clone(), *self.head.borrow());
                    tokio::spawn(async move {
                        let _ = reply.send(purge(&stream, &replica, seqs, head).await.map_err(Arc::new));
                    });
                }
                WriterMsg::Stop { done } => {
                    drop(inflight_tx);
                    let _ = answering.await;
                    let _ = stop_tail.send(());
                    rx.close();
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    /// Stamps and encodes the event and sends it; answers at once when it cannot be sent.
    async fn publish(&mut self, event: Event, reply: Reply, expect: Option<Expect>) -> Option<InFlight> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.last_at = self.last_at.max(now);
        let id = message_id(&event);
        // The seq is JetStream's: the replica stores the record under it (see `Tail::apply`).
        let envelope = Envelope { seq: 0, at_unix_ms: self.last_at, stream: event.stream(), event };
        let encoded = encode(&envelope);
        if encoded.len() > self.record_bytes_max {
            let error = LogError::RecordTooLarge { seq: 0, bytes: encoded.len(), max: self.record_bytes_max };
            let _ = reply.send(Err(Arc::new(error)));
            return None;
        }
        if envelope.stream.as_str().len() > StreamId::LEN_MAX {
            let error =
                LogError::StreamTooLong { seq: 0, bytes: envelope.stream.as_str().len(), max: StreamId::LEN_MAX };
            let _ = reply.send(Err(Arc::new(error)));
            return None;
        }
        let subject = subject_of(&envelope);
        let payload = bytes::Bytes::from(encoded);
        let ack = send(&self.context, &subject, &id, payload.clone(), expect.as_ref()).await.ok();
        Some(InFlight { subject, id, payload, ack, reply, since: Instant::now(), expect })
    }
}

async fn send(
    context: &Context,
    subject: &str,
    id: &str,
    payload: bytes::Bytes,
    expect: Option<&Expect>,
) -> Result<PublishAckFuture, async_nats::jetstream::context::PublishError> {
    let mut message = PublishMessage::build().payload(payload).message_id(id);
    if let Some(expect) = expect {
        message = message.expected_last_subject_sequence(expect.last_seq);
        if let Some(stream) = &expect.on {
            message = message.header(EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, self::subject(stream));
        }
    }
    context.send_publish(subject.to_owned(), message).await
}

/// The header that makes `Nats-Expected-Last-Subject-Sequence` check another subject than the
/// one published on (nats-server 2.11; the client has no constant for it).
const EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: &str = "Nats-Expected-Last-Subject-Sequence-Subject";

/// The subject a record is published on: its stream's ([`subject`]), except an edit or a
/// deletion, which goes on a subject of the message it amends (`rl.room.lobby.a42`), so that
/// a conditional amendment conflicts with another amendment of the same message only.
pub fn subject_of(envelope: &Envelope) -> String {
    match &envelope.event {
        Event::MessageEdited(e) => format!("{}.a{}", subject(&envelope.stream), e.seq),
        Event::MessageDeleted(e) => format!("{}.a{}", subject(&envelope.stream), e.seq),
        _ => subject(&envelope.stream),
    }
}

/// Awaits acknowledgements in submission order, sends again what JetStream did not take, and
/// answers each append once this node's replica holds it.
struct Answerer {
    context: Context,
    replica: Arc<dyn Backend>,
    head: watch::Receiver<u64>,
    append_timeout: Duration,
}

impl Answerer {
    async fn run(mut self, mut inflight: mpsc::Receiver<InFlight>) {
        while let Some(append) = inflight.recv().await {
            let InFlight { subject, id, payload, ack, reply, since, expect } = append;
            let result = self.stored(&subject, &id, payload, ack, since, expect).await;
            let _ = reply.send(result.map_err(Arc::new));
        }
    }

    async fn stored(
        &mut self,
        subject: &str,
        id: &str,
        payload: bytes::Bytes,
        mut ack: Option<PublishAckFuture>,
        since: Instant,
        expect: Option<Expect>,
    ) -> Result<Envelope, LogError> {
        let seq = loop {
            let outcome = match ack.take() {
                Some(ack) => ack.await.map_err(|e| (e.kind(), e.to_string())),
                None => Err((PublishErrorKind::BrokenPipe, "not sent".to_owned())),
            };
            match outcome {
                Ok(ack) => break ack.sequence,
                Err((PublishErrorKind::WrongLastSequence, reason)) => return Err(LogError::Conflict(reason)),
                Err((PublishErrorKind::WrongLastMessageId | PublishErrorKind::MaxPayloadExceeded, reason)) => {
                    return Err(ClusterError::Refused(reason).into());
                }
                Err((_, reason)) if since.elapsed() >= self.append_timeout => {
                    metrics::counter!(crate::metrics::APPEND_FAILURES_TOTAL).increment(1);
                    return Err(ClusterError::Unavailable(self.append_timeout, reason).into());
                }
                Err((kind, reason)) => {
                    tracing::debug!(?kind, reason, id, "publish not acknowledged: sending again with the same id");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    ack = send(&self.context, subject, id, payload.clone(), expect.as_ref()).await.ok();
                }
            }
        };
        let waited = self.append_timeout.max(Duration::from_secs(30));
        let reached = tokio::time::timeout(waited, self.head.wait_for(|&head| head >= seq)).await.map(|r| r.is_ok());
        if reached != Ok(true) {
            return Err(ClusterError::ReplicaBehind { seq, waited }.into());
        }
        let replica = self.replica.clone();
        let record = tokio::task::spawn_blocking(move || replica.read_raw(seq, seq, 1))
            .await
            .map_err(|e| LogError::Io(std::io::Error::other(e.to_string())))??;
        match record.first() {
            Some((stored, bytes)) if *stored == seq => Ok(decode(seq, bytes)?),
            _ => Err(ClusterError::NotInReplica(seq).into()),
        }
    }
}

/// Copies the stream into this node's replica, in seq order, and moves the head.
struct Tail {
    replica: Arc<dyn Backend>,
    stream: stream::Stream,
    pull_expiry: Duration,
    last_seq: u64,
    last_at: u64,
    head: watch::Sender<u64>,
    failure: watch::Sender<Option<Arc<LogError>>>,
    lag: watch::Sender<u64>,
    /// Whether the tail purges what removals superseded when it brings a janitor's run
    /// (`Some`), and whether such a purge is under way.
    purging: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// A janitor's run came that no purge has followed yet: one starts once the tail has
    /// caught up with the stream (a node filling its replica from the start brings every
    /// run ever recorded, and purges once, at the end).
    purge_due: bool,
}

/// Most records the tail writes to the replica in one group.
const TAIL_BATCH: usize = 4096;

/// Most records one purge step removes (one request per subject filter per stream, then one
/// removal from the replica).
const PURGE_STEP: usize = 4096;

/// Purges records that later removals superseded, `seqs` (found by `compact::superseded`):
/// from the stream by subject, for each of their streams every message below the first record
/// of it that is not among `seqs` (a purge by subject removes a prefix of a stream; what the
/// rule supersedes of one is one), then the same records from the replica. Returns how many
/// the replica held. Records at or above `head` stay, so that the newest never goes back.
async fn purge(
    stream: &stream::Stream,
    replica: &Arc<dyn Backend>,
    seqs: Vec<u64>,
    head: u64,
) -> Result<u64, LogError> {
    let (bounds, going) = {
        let replica = replica.clone();
        off_async(move || prefixes(replica.as_ref(), &seqs, head)).await?
    };
    for (of, below) in bounds {
        let base = subject(&of);
        // A room's edits and deletions are on subjects below its own (`subject_of`).
        for filter in [format!("{base}.>"), base] {
            if let Err(error) = stream.purge().filter(filter.clone()).sequence(below).await {
                return Err(ClusterError::Purge { subject: filter, below, reason: error.to_string() }.into());
            }
        }
    }
    let replica = replica.clone();
    off_async(move || {
        let removed = replica.remove(&going)?;
        replica.sync()?;
        Ok(removed)
    })
    .await
}

/// Of `seqs`, the ones below `head` that start their stream in the replica, ascending, and
/// for each of their streams the seq below which its records go: the first record of the
/// stream that is not among them, or one above its newest.
fn prefixes(replica: &dyn Backend, seqs: &[u64], head: u64) -> Result<(BTreeMap<StreamId, u64>, Vec<u64>), LogError> {
    let wanted: BTreeSet<u64> = seqs.iter().copied().filter(|&seq| seq < head).collect();
    let mut newest: BTreeMap<StreamId, u64> = BTreeMap::new();
    for &seq in &wanted {
        for (seq, bytes) in replica.read_raw(seq, seq, 1)? {
            newest.insert(decode(seq, &bytes)?.stream, seq);
        }
    }
    let (mut bounds, mut going) = (BTreeMap::new(), Vec::new());
    for (of, newest) in newest {
        let (mut after, mut below, before) = (0, newest + 1, going.len());
        'scan: loop {
            let page = replica.read_stream_raw(&of, after, newest, PURGE_STEP)?;
            let Some(&(last, _)) = page.last() else { break };
            for (seq, _) in page {
                if !wanted.contains(&seq) {
                    below = seq;
                    break 'scan;
                }
                going.push(seq);
            }
            after = last;
        }
        if going.len() > before {
            bounds.insert(of, below);
        }
    }
    going.sort_unstable();
    Ok((bounds, going))
}

/// What the tail's purge does after a janitor's run: finds what this node's replica holds
/// that removals supersede, through `through`, and purges it, [`PURGE_STEP`] at a time.
async fn purge_replica(stream: stream::Stream, replica: Arc<dyn Backend>, through: u64) -> Result<u64, LogError> {
    let (seqs, _) = {
        let replica = replica.clone();
        off_async(move || super::compact::superseded_in(replica.as_ref(), through)).await?
    };
    let mut removed = 0;
    for step in seqs.chunks(PURGE_STEP) {
        removed += purge(&stream, &replica, step.to_vec(), through).await?;
    }
    Ok(removed)
}

impl Tail {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        loop {
            let consumer = self
                .stream
                .create_consumer(OrderedConfig {
                    deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: self.last_seq + 1 },
                    max_expires: self.pull_expiry,
                    ..Default::default()
                })
                .await;
            let messages = match consumer {
                Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            let mut messages = match messages {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(error, "the log's tail could not follow the stream; trying again");
                    tokio::select! {
                        _ = &mut stop => return,
                        () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            };
            loop {
                let first = tokio::select! {
                    _ = &mut stop => return,
                    next = tokio::time::timeout(self.pull_expiry * 2, messages.next()) => next,
                };
                let first = match first {
                    Ok(first) => first,
                    // Quiet for two pull expiries: if the stream has records the tail has not
                    // delivered, the consumer is stuck (its own recovery after a leader loss
                    // can take tens of seconds): follow again from the replica's head.
                    Err(_) => match self.stream.get_info().await {
                        Ok(info) if info.state.last_sequence > self.last_seq => {
                            tracing::info!(
                                replica = self.last_seq,
                                stream = info.state.last_sequence,
                                "the log's tail stalled; following the stream again"
                            );
                            break;
                        }
                        _ => continue,
                    },
                };
                let Some(first) = first else { break };
                let mut batch = vec![first];
                while batch.len() < TAIL_BATCH {
                    match futures_util::FutureExt::now_or_never(messages.next()) {
                        Some(Some(next)) => batch.push(next),
                        _ => break,
                    }
                }
                if let Err(error) = self.apply(batch).await {
                    tracing::error!(error = %error, "this node's replica of the log failed: it follows no more until the server restarts");
                    self.failure.send_replace(Some(Arc::new(error)));
                    return;
                }
            }
        }
    }

    /// Writes a batch of delivered messages to the replica, durably, and moves the head.
    async fn apply(
        &mut self,
        batch: Vec<Result<async_nats::jetstream::Message, async_nats::jetstream::consumer::pull::OrderedError>>,
    ) -> Result<(), LogError> {
        let mut records: Vec<(u64, StreamId, Vec<u8>)> = Vec::with_capacity(batch.len());
        for item in batch {
            let message = match item {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(error = %error, "the log's tail: a pull failed; it goes on");
                    continue;
                }
            };
            let Ok(info) = message.info() else { continue };
            let seq = info.stream_sequence;
            self.lag.send_replace(info.pending);
            if message.subject.as_str() == GAP_SUBJECT {
                continue; // an import's placeholder for a seq the imported log did not have
            }
            // An ordered consumer recreated before its first delivery starts from the stream's
            // beginning: what the replica has is skipped.
            if seq <= self.last_seq {
                continue;
            }
            let mut envelope = match decode(seq, &message.payload) {
                Ok(envelope) => envelope,
                Err(error) => return Err(error.into()),
            };
            envelope.seq = seq;
            self.purge_due |= matches!(envelope.event, Event::JanitorRan(_));
            envelope.at_unix_ms = envelope.at_unix_ms.max(self.last_at);
            self.last_seq = seq;
            self.last_at = envelope.at_unix_ms;
            records.push((seq, envelope.stream.clone(), encode(&envelope)));
        }
        let Some(last) = records.last().map(|record| record.0) else { return Ok(()) };
        let replica = self.replica.clone();
        tokio::task::spawn_blocking(move || {
            let encoded: Vec<_> = records.iter().map(|(seq, stream, bytes)| (*seq, stream, bytes.as_slice())).collect();
            replica.write(&encoded)?;
            replica.sync()
        })
        .await
        .map_err(|e| LogError::Io(std::io::Error::other(e.to_string())))??;
        self.head.send_replace(last);
        if self.purge_due && *self.lag.borrow() == 0 {
            self.purge_superseded(last);
        }
        Ok(())
    }

    /// Starts a purge of what removals supersede through `through`, unless the tail does not
    /// purge or one is under way (then it stays due, for the next batch after it).
    fn purge_superseded(&mut self, through: u64) {
        let Some(purging) = self.purging.clone() else { return };
        if purging.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        self.purge_due = false;
        let (stream, replica) = (self.stream.clone(), self.replica.clone());
        tokio::spawn(async move {
            match purge_replica(stream, replica, through).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(
                    removed,
                    through,
                    reason = "superseded by later retention cuts and file deletions (log_purge)",
                    "purged superseded records from the stream and this node's replica"
                ),
                Err(error) => {
                    tracing::warn!(error = %error, "purging superseded records failed; the next janitor's run tries again")
                }
            }
            purging.store(false, std::sync::atomic::Ordering::SeqCst);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::RoomId;

    #[test]
    fn subjects_map_streams_one_to_one_into_valid_tokens() {
        let room = |name: &str| StreamId::room(&RoomId::parse(name).expect("room"));
        assert_eq!(subject(&room("lobby")), "rl.room.lobby");
        assert_eq!(subject(&room("a.b")), "rl.room.a~2eb");
        let file = |key: &str| StreamId::file(&crate::ids::FileKey::parse(key).expect("key"));
        assert_eq!(subject(&file("a/b.mp3")), "rl.file.a~2fb~2emp3");
        let names = ["a.b", "a/b", "a-2eb", "a_2eb", "a.b/c", "a/b.c", "ab"];
        let subjects: std::collections::HashSet<String> = names.iter().map(|n| subject(&file(n))).collect();
        assert_eq!(subjects.len(), names.len(), "distinct keys, distinct subjects: {subjects:?}");
        assert_eq!(subject(&StreamId::janitor()), "rl.janitor");
        for stream in [room("x.y-z_1"), StreamId::janitor(), StreamId::session_sweeps()] {
            let subject = subject(&stream);
            assert!(subject.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-~".contains(&b)), "{subject}");
            assert!(!subject.contains(".."), "{subject}");
        }
    }

    #[test]
    fn a_post_has_the_same_message_id_whichever_node_sends_it() {
        let post = |client_id: &str| {
            Event::MessagePosted(crate::event::MessagePosted {
                room: RoomId::parse("lobby").expect("room"),
                author: "ann".into(),
                client_id: client_id.into(),
                body: "hi".into(),
            })
        };
        assert_eq!(message_id(&post("c1")), message_id(&post("c1")));
        assert_ne!(message_id(&post("c1")), message_id(&post("c2")));
    }
}
