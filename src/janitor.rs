//! The janitor: one actor that applies every clean-up rule, on a schedule (`janitor.every` or
//! `janitor.at`) or when asked, and never two runs at once (the actor takes one message at a
//! time). A plan is what a run would do now; a run computes the same plan and applies it,
//! item by item, so that the dry run lists exactly what the run removes. Each run ends in a
//! `JanitorRan` event with what each rule removed, or the error that stopped it; the next run
//! finds what is left and does it.
//!
//! What it applies, in order:
//! - `sessions.purge_after`: unpaid sessions whose purge is due (the sweeper applies them within
//!   a second of their time; the janitor catches what a stopped server left);
//! - `files.on_pay`: a paid session's `temp_` keys still to be renamed (a crash half way);
//! - each lifecycle rule: keys to expire, then content to move to the cold tier (content moves
//!   only once every key naming it is due to move);
//! - `orphans`: content files no key references, older than `janitor.orphan_min_age`;
//! - room retention (`retention.default`, `retention.rooms.<room>`): one `MessagesExpired` per
//!   room cutting its oldest messages, which history and search remove alike (the single
//!   removal mechanism);
//! - the server's own log files (`logging.dir`): every day's file but the current one is
//!   gzipped, and the oldest beyond `logging.keep_files` are deleted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tokio::sync::watch;

use crate::actor::sessions::SessionsHandle;
use crate::blob::lifecycle::Action;
use crate::blob::service::{FileError, FileService, Orphan};
use crate::blob::{ContentHash, FileKey, Tier};
use crate::clock::Clock;
use crate::config::{JanitorConfig, PrefixMove, RetentionConfig, RoomRetention};
use crate::event::{Event, ItemFailure, JanitorRan, MessagesExpired, RoomId, RuleTally, SessionId, StreamId};
use crate::log::{EventLog, Fence, LogError};
use crate::projection::history::History;
use crate::projection::Runner;
use crate::session::SessionState;

/// Keys and sessions read per page while planning.
const PAGE: usize = 1000;
/// Most session purges one run applies (the rest wait for the next run).
const PURGES_MAX: usize = 100_000;

/// Why a plan or a run could not be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JanitorError {
    #[error("the janitor cannot read what to do: {0}")]
    Read(String),
    #[error("the janitor is stopping")]
    Stopped,
    /// On a cluster's log: another node recorded a janitor run after this one began (this
    /// node held the lease and was paused past it, or two runs were asked of two nodes); this
    /// run stopped there and recorded nothing more (HTTP 409, code `conflict`).
    #[error("another node ran the janitor since this run began: this run stopped and recorded nothing more")]
    Fenced,
}

impl JanitorError {
    /// How the edges report this error (HTTP 503 either way).
    pub fn code(&self) -> crate::error_code::ErrorCode {
        use crate::error_code::ErrorCode;
        match self {
            JanitorError::Read(_) => ErrorCode::StorageUnavailable,
            JanitorError::Stopped => ErrorCode::ShuttingDown,
            JanitorError::Fenced => ErrorCode::Conflict,
        }
    }
}

impl From<FileError> for JanitorError {
    fn from(error: FileError) -> Self {
        JanitorError::Read(error.to_string())
    }
}

/// One thing a run would do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanItem {
    /// The rule that asks for it.
    pub rule: String,
    /// `purge_session`, `rename`, `expire`, `move_to_cold`, `delete_orphan` or
    /// `expire_messages`.
    pub action: &'static str,
    /// The session id, key (`from -> to` for a rename), content hash, or room (`lobby through
    /// seq 812`).
    pub target: String,
    /// What it stands for: 1, or the messages a retention cut removes.
    pub count: u64,
    /// The key's size, or the content's; 0 for a session (its keys count under their rules);
    /// the messages' stored text (author, client id and body) for a retention cut.
    pub bytes: u64,
    /// For a move of content: the keys that name it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// What else a reader needs to know (a lifecycle move: its storage class, and that every
    /// S3 class but `STANDARD` is roomlog's one cold tier).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    #[serde(skip)]
    op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Purge {
        id: SessionId,
        at: u64,
    },
    Rename {
        owner: SessionId,
        from: FileKey,
        to: FileKey,
    },
    Expire {
        key: FileKey,
    },
    Move {
        hash: ContentHash,
        reason: String,
    },
    Orphan(Orphan),
    ExpireMessages {
        room: RoomId,
        through_seq: u64,
        policy: String,
    },
    CompressLog(std::path::PathBuf),
    DeleteLog(std::path::PathBuf),
    /// Remove these superseded records from the log (see `JanitorContext::plan_log_purge`),
    /// then, with `rewrite`, rewrite its files to give their space back.
    PurgeLog {
        seqs: Vec<u64>,
        rewrite: bool,
    },
}

/// Records removed per turn of an online purge: between turns the writer takes the appends
/// queued behind it, so chat goes on while a large purge runs.
const PURGE_GROUP: usize = 4096;

/// A purge removing at least one record in this many rewrites the log's files afterwards
/// (`janitor.rewrite_log`): a smaller one leaves space that sled reuses for later appends.
const REWRITE_SHARE: u64 = 8;

/// What a run would do now, item by item and per rule, and the parts of the plan that could
/// not be read (a broken cold tier does not hide what the other rules would do).
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub at_unix_ms: u64,
    pub rules: Vec<RuleTally>,
    pub items: Vec<PlanItem>,
    pub unreadable: Vec<ItemFailure>,
}

fn tally(items: &[PlanItem]) -> Vec<RuleTally> {
    let mut rules: Vec<RuleTally> = Vec::new();
    for item in items {
        match rules.iter_mut().find(|r| r.rule == item.rule) {
            Some(rule) => {
                rule.items += item.count;
                rule.bytes += item.bytes;
            }
            None => rules.push(RuleTally { rule: item.rule.clone(), items: item.count, bytes: item.bytes }),
        }
    }
    rules
}

/// What the janitor works with.
#[derive(Debug, Clone)]
pub struct JanitorContext {
    pub log: EventLog,
    pub files: FileService,
    pub sessions: SessionsHandle,
    pub clock: Arc<dyn Clock>,
    pub config: JanitorConfig,
    pub on_pay: Vec<PrefixMove>,
    pub history: History,
    pub history_runner: Runner,
    pub retention: RetentionConfig,
    /// `logging.dir` and `logging.keep_files`.
    pub log_files: Option<(std::path::PathBuf, usize)>,
    /// The data folder's reserve file: released when a run must work below the log's floor of
    /// free space, so that its removals can be appended and its deletions done (`space`).
    pub reserve: crate::space::Reserve,
    /// The data folder, for its free space.
    pub data: std::path::PathBuf,
}

impl JanitorContext {
    /// What a run would do now. Each part of the plan is read on its own: one that cannot be
    /// read is listed under `unreadable` and the others are planned all the same.
    pub async fn plan(&self) -> Result<Plan, JanitorError> {
        let now = self.clock.now_ms();
        let mut items = Vec::new();
        let mut unreadable = Vec::new();
        let mut part = |rule: &str, result: Result<Vec<PlanItem>, JanitorError>| match result {
            Ok(planned) => items.extend(planned),
            Err(error) => unreadable.push(ItemFailure {
                rule: rule.to_owned(),
                action: "plan".into(),
                target: String::new(),
                error: error.to_string(),
            }),
        };
        part("sessions.purge_after", self.plan_purges(now));
        part("files.on_pay", self.plan_renames().await);
        part("lifecycle", self.plan_lifecycle(now).await);
        part("orphans", self.plan_orphans().await);
        part("retention", self.plan_retention(now).await);
        part("logging.keep_files", self.plan_log_files().await);
        let parts = if self.config.purge_log {
            part(PURGE_RULE, self.plan_log_purge().await);
            7
        } else {
            6
        };
        if unreadable.len() == parts {
            return Err(JanitorError::Read(
                unreadable.iter().map(|u| format!("{}: {}", u.rule, u.error)).collect::<Vec<_>>().join("; "),
            ));
        }
        Ok(Plan { at_unix_ms: now, rules: tally(&items), items, unreadable })
    }

    /// The log's records that retention cuts and key deletions superseded (`log::compact`):
    /// one item, removed while the server serves. Finding them reads the whole log, off the
    /// async threads. What this run's own cuts and deletions supersede is planned by the next.
    async fn plan_log_purge(&self) -> Result<Vec<PlanItem>, JanitorError> {
        let log = self.log.clone();
        let (seqs, purged) = tokio::task::spawn_blocking(move || crate::log::compact::superseded(&log))
            .await
            .map_err(|e| JanitorError::Read(e.to_string()))?
            .map_err(|e| JanitorError::Read(e.to_string()))?;
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        // sled zero-fills the rest of its last segment whenever it opens a database, so a log
        // of under two segments would come out of a rewrite no smaller.
        let rewrite = self.config.rewrite_log
            && purged.removed().saturating_mul(REWRITE_SHARE) >= purged.records_read
            && crate::metrics::allocated_bytes(&crate::layout::log_dir(&self.data))
                >= 2 * crate::durable::SEGMENT_BYTES as u64;
        let then = if rewrite {
            "; then the log's files are rewritten while serving, giving their space back to the filesystem"
        } else {
            ""
        };
        Ok(vec![PlanItem {
            rule: PURGE_RULE.into(),
            action: "purge_log",
            target: "the log".into(),
            count: purged.removed(),
            bytes: purged.removed_bytes,
            keys: Vec::new(),
            detail: format!(
                "{} events of rooms at or below a later retention cut and {} events of keys deleted later: superseded, their effect already undone",
                purged.removed_message_events, purged.removed_file_events
            ) + then,
            op: Op::PurgeLog { seqs, rewrite },
        }])
    }

    /// Unpaid sessions whose purge is due.
    fn plan_purges(&self, now: u64) -> Result<Vec<PlanItem>, JanitorError> {
        let due = self.sessions.purges_due(now, PURGES_MAX).map_err(|e| JanitorError::Read(e.to_string()))?;
        Ok(due
            .into_iter()
            .map(|(at, id)| PlanItem {
                rule: "sessions.purge_after".into(),
                action: "purge_session",
                target: id.to_string(),
                count: 1,
                bytes: 0,
                keys: Vec::new(),
                detail: String::new(),
                op: Op::Purge { id, at },
            })
            .collect())
    }

    /// Content no key references, old enough not to be an upload being committed.
    async fn plan_orphans(&self) -> Result<Vec<PlanItem>, JanitorError> {
        Ok(self
            .files
            .orphans(self.config.orphan_min_age)
            .await?
            .into_iter()
            .map(|orphan| PlanItem {
                rule: "orphans".into(),
                action: "delete_orphan",
                target: orphan.hash.to_string(),
                count: 1,
                bytes: orphan.bytes,
                keys: Vec::new(),
                detail: String::new(),
                op: Op::Orphan(orphan),
            })
            .collect())
    }

    /// The server's own daily log files to compress or delete.
    async fn plan_log_files(&self) -> Result<Vec<PlanItem>, JanitorError> {
        let Some((dir, keep)) = &self.log_files else { return Ok(Vec::new()) };
        let (dir, keep) = (dir.clone(), *keep);
        tokio::task::spawn_blocking(move || plan_log_files(&dir, keep))
            .await
            .map_err(|e| JanitorError::Read(e.to_string()))?
            .map_err(|e| JanitorError::Read(format!("listing the log files: {e}")))
    }

    /// Paid sessions' keys that `files.on_pay` still has to rename.
    async fn plan_renames(&self) -> Result<Vec<PlanItem>, JanitorError> {
        let mut items = Vec::new();
        if self.on_pay.is_empty() {
            return Ok(items);
        }
        self.files.caught_up().await;
        let sessions = &self.files.sessions;
        let mut after: Option<SessionId> = None;
        loop {
            let page = sessions
                .list(Some(SessionState::Paid), None, after.as_ref(), PAGE)
                .map_err(|e| JanitorError::Read(e.to_string()))?;
            for session in &page {
                for (key, to) in self.files.paid_renames(&session.id, &self.on_pay)? {
                    let bytes = self.files.files.get(&key).ok().flatten().map_or(0, |e| e.size);
                    items.push(PlanItem {
                        rule: "files.on_pay".into(),
                        action: "rename",
                        target: format!("{key} -> {to}"),
                        count: 1,
                        bytes,
                        keys: Vec::new(),
                        detail: String::new(),
                        op: Op::Rename { owner: session.id.clone(), from: key, to },
                    });
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE => after = Some(last.id.clone()),
                _ => return Ok(items),
            }
        }
    }

    /// Keys the lifecycle rules expire, and content they move to the cold tier.
    async fn plan_lifecycle(&self, now: u64) -> Result<Vec<PlanItem>, JanitorError> {
        let mut items = Vec::new();
        if self.files.lifecycle.rules.is_empty() {
            return Ok(items);
        }
        // Per content: whether every key that stays wants it cold, the rule that says so, and
        // the keys naming it.
        struct Want {
            cold: bool,
            rule: Option<(String, String)>,
            bytes: u64,
            keys: Vec<String>,
        }
        let mut wants: HashMap<ContentHash, Want> = HashMap::new();
        let mut after: Option<String> = None;
        self.files.caught_up().await;
        loop {
            let page =
                self.files.files.list("", after.as_deref(), PAGE).map_err(|e| JanitorError::Read(e.to_string()))?;
            let planned: HashMap<String, _> =
                self.files.lifecycle.plan(&page, now).into_iter().map(|p| (p.key.clone(), p)).collect();
            for entry in &page {
                let want = wants.entry(entry.hash.clone()).or_insert(Want {
                    cold: true,
                    rule: None,
                    bytes: entry.size,
                    keys: Vec::new(),
                });
                want.keys.push(entry.key.to_string());
                match planned.get(entry.key.as_str()) {
                    Some(p) if p.action == Action::Expire => items.push(PlanItem {
                        rule: p.rule.clone(),
                        action: "expire",
                        target: entry.key.to_string(),
                        count: 1,
                        bytes: entry.size,
                        keys: Vec::new(),
                        detail: String::new(),
                        op: Op::Expire { key: entry.key.clone() },
                    }),
                    Some(p) => match &p.action {
                        Action::Transition { tier: Tier::Cold, storage_class } => {
                            want.rule.get_or_insert((p.rule.clone(), storage_class.clone()));
                        }
                        _ => want.cold = false,
                    },
                    None => want.cold = false,
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE => after = Some(last.key.to_string()),
                _ => break,
            }
        }
        if !self.files.store.has_cold() {
            return Ok(items); // said at start-up: transitions to a cold tier are skipped
        }
        let mut moves: Vec<(ContentHash, Want)> =
            wants.into_iter().filter(|(_, w)| w.cold && w.rule.is_some()).collect();
        moves.sort_by(|a, b| a.0.cmp(&b.0));
        for (hash, want) in moves {
            if self.files.files.tier(&hash).map_err(|e| JanitorError::Read(e.to_string()))? == Tier::Cold {
                continue;
            }
            let (rule, class) = want.rule.unwrap_or_default();
            items.push(PlanItem {
                rule: rule.clone(),
                action: "move_to_cold",
                target: hash.to_string(),
                count: 1,
                bytes: want.bytes,
                keys: want.keys,
                detail: format!(
                    "{class}: the cold tier (STANDARD_IA, ONEZONE_IA, GLACIER_IR, GLACIER and DEEP_ARCHIVE are all roomlog's one cold tier)"
                ),
                op: Op::Move {
                    hash,
                    reason: format!(
                        "lifecycle rule {rule}: {class} (every S3 class but STANDARD is roomlog's one cold tier)"
                    ),
                },
            });
        }
        Ok(items)
    }

    /// Per room whose rule asks for it, the cut that removes its oldest messages: those beyond
    /// `max_messages`, and those older than `max_age`.
    async fn plan_retention(&self, now: u64) -> Result<Vec<PlanItem>, JanitorError> {
        let read = |e: &dyn std::fmt::Display| JanitorError::Read(e.to_string());
        let mut items = Vec::new();
        let unlimited = RoomRetention::default();
        if self.retention.default == unlimited && self.retention.rooms.values().all(|r| *r == unlimited) {
            return Ok(items);
        }
        self.history_runner.wait_applied(self.log.head()).await;
        for (room, summary) in self.history.rooms().map_err(|e| read(&e))? {
            let (rule, retention) = self.retention.for_room(room.as_str());
            let excess = retention.max_messages.map_or(0, |max| summary.message_count.saturating_sub(max));
            let older_than = retention.max_age.map(|age| now.saturating_sub(crate::clock::millis(age)));
            if excess == 0 && older_than.is_none() {
                continue;
            }
            // Walk from the oldest kept message while either rule still wants it gone.
            let (mut count, mut bytes, mut through, mut by_age) = (0u64, 0u64, 0u64, false);
            let mut after = summary.removed_through_seq;
            'pages: loop {
                let page = self.history.kept_after(&room, after, PAGE).map_err(|e| read(&e))?;
                for message in &page {
                    let old = older_than.is_some_and(|cutoff| message.at_unix_ms < cutoff);
                    if count >= excess && !old {
                        break 'pages;
                    }
                    by_age |= count >= excess;
                    count += 1;
                    bytes += message.stored_bytes();
                    through = message.seq;
                }
                match page.last() {
                    Some(last) if page.len() == PAGE => after = last.seq,
                    _ => break,
                }
            }
            if count == 0 {
                continue;
            }
            let why = match (by_age, retention.max_age) {
                (true, Some(age)) => format!("max_age {}", humantime::format_duration(age)),
                _ => format!("max_messages {}", retention.max_messages.unwrap_or_default()),
            };
            let rule = format!("{rule}.{}", why.split(' ').next().unwrap_or_default());
            items.push(PlanItem {
                rule: rule.clone(),
                action: "expire_messages",
                target: format!("{room} through seq {through}"),
                count,
                bytes,
                keys: Vec::new(),
                detail: String::new(),
                op: Op::ExpireMessages { room, through_seq: through, policy: format!("{rule}: {why}") },
            });
        }
        Ok(items)
    }

    /// Applies one item; `Ok(false)` if there was nothing left to do (done meanwhile). The
    /// events that delete go under `fence` (a cluster's run, see [`JanitorState::fence`]).
    async fn apply(&self, item: &PlanItem, fence: Option<&Fence>) -> Result<bool, ItemError> {
        crate::fault::fail("janitor:item").map_err(|e| e.to_string())?;
        let fenced = |error: &Arc<LogError>| match error.as_ref() {
            LogError::Conflict(_) => ItemError::Fenced,
            _ => ItemError::Failed(error.to_string()),
        };
        Ok(match &item.op {
            // Fenced per session: the purge is conditional on the session's stream.
            Op::Purge { id, at } => self.sessions.apply_purge(id, *at).await.map(|()| true).map_err(|e| e.to_string()),
            Op::Rename { owner, from, to } => match self.files.rename_paid(owner, from, to.clone()).await {
                Err(FileError::NotFound(_)) => Ok(false),
                other => other.map(|_| true).map_err(|e| e.to_string()),
            },
            Op::Expire { key } => {
                let reason = format!("lifecycle rule {}: expired", item.rule);
                match self.files.delete_fenced(key, &reason, fence).await {
                    Err(FileError::NotFound(_)) => Ok(false),
                    Err(FileError::Storage(source))
                        if source
                            .downcast_ref::<Arc<LogError>>()
                            .is_some_and(|e| matches!(**e, LogError::Conflict(_))) =>
                    {
                        return Err(ItemError::Fenced);
                    }
                    other => other.map(|_| true).map_err(|e| e.to_string()),
                }
            }
            Op::Move { hash, reason } => {
                self.files.move_content(hash, Tier::Cold, reason.clone()).await.map_err(|e| e.to_string())
            }
            Op::Orphan(orphan) => self.files.delete_orphan(orphan).await.map_err(|e| e.to_string()),
            Op::CompressLog(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || gzip_file(&path)).await.map_err(|e| e.to_string())?
            }
            Op::PurgeLog { seqs, rewrite } => {
                let mut removed = 0;
                for group in seqs.chunks(PURGE_GROUP) {
                    removed += self.log.remove(group.to_vec()).await.map_err(|e| e.to_string())?;
                }
                if *rewrite && removed > 0 {
                    match self.log.rewrite().await {
                        Ok(Some(done)) => tracing::info!(
                            records = done.records,
                            bytes_before = done.bytes_before,
                            bytes_after = done.bytes_after,
                            paused_ms = done.paused_ms,
                            "the log's files were rewritten after the purge"
                        ),
                        Ok(None) => {}
                        Err(error) => {
                            return Err(ItemError::Failed(format!("rewriting the log after the purge: {error}")))
                        }
                    }
                }
                Ok(removed > 0)
            }
            Op::DeleteLog(path) => match tokio::fs::remove_file(path).await {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                other => other.map(|()| true).map_err(|e| format!("deleting {}: {e}", path.display())),
            },
            Op::ExpireMessages { room, through_seq, policy } => {
                let removed =
                    self.history.summary(room).map_err(|e| e.to_string())?.map_or(0, |s| s.removed_through_seq);
                if removed >= *through_seq {
                    return Ok(false);
                }
                let event = Event::MessagesExpired(MessagesExpired {
                    room: room.clone(),
                    through_seq: *through_seq,
                    policy: policy.clone(),
                });
                let appended = self.log.append_fenced(event, fence).await.map_err(|e| fenced(&e))?;
                self.history_runner.wait_applied(appended.seq).await;
                Ok(true)
            }
        }?)
    }
}

/// Why a janitor item was not applied.
#[derive(Debug)]
enum ItemError {
    Failed(String),
    /// The run's fence was refused: another node recorded a run since this one began.
    Fenced,
}

impl From<String> for ItemError {
    fn from(error: String) -> Self {
        ItemError::Failed(error)
    }
}

/// The daily log files in `dir` (`roomlog.YYYY-MM-DD.log`, and `.log.gz` once compressed):
/// every one but the newest `.log` (the file being written) is compressed, and the oldest
/// beyond `keep` (counting the current one) are deleted.
fn plan_log_files(dir: &std::path::Path, keep: usize) -> std::io::Result<Vec<PlanItem>> {
    let mut days: Vec<(String, std::path::PathBuf, u64)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("roomlog.") && (name.ends_with(".log") || name.ends_with(".log.gz")) {
            days.push((name, entry.path(), entry.metadata()?.len()));
        }
    }
    days.sort();
    let current = days.iter().rposition(|(name, _, _)| name.ends_with(".log"));
    let excess = days.len().saturating_sub(keep.max(1));
    let mut items = Vec::new();
    for (i, (name, path, bytes)) in days.into_iter().enumerate() {
        let (action, op) = if i < excess {
            ("delete_log", Op::DeleteLog(path))
        } else if Some(i) != current && name.ends_with(".log") {
            ("compress_log", Op::CompressLog(path))
        } else {
            continue;
        };
        items.push(PlanItem {
            rule: "logging.keep_files".into(),
            action,
            target: name,
            count: 1,
            bytes,
            keys: Vec::new(),
            detail: String::new(),
            op,
        });
    }
    Ok(items)
}

/// Gzips `path` into `path.gz` (through a temporary name, synced), then removes `path`.
/// `Ok(false)` if the file is gone already.
fn gzip_file(path: &std::path::Path) -> Result<bool, String> {
    let fail = |what: &str, e: std::io::Error| format!("{what} {}: {e}", path.display());
    let mut input = match std::fs::File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        other => other.map_err(|e| fail("opening", e))?,
    };
    let mut name = path.as_os_str().to_os_string();
    name.push(".gz");
    let target = std::path::PathBuf::from(name);
    let tmp = target.with_extension("gz.partial");
    let output = std::fs::File::create(&tmp).map_err(|e| fail("creating the .gz of", e))?;
    let mut encoder = flate2::write::GzEncoder::new(output, flate2::Compression::default());
    std::io::copy(&mut input, &mut encoder).map_err(|e| fail("compressing", e))?;
    let output = encoder.finish().map_err(|e| fail("compressing", e))?;
    output.sync_all().map_err(|e| fail("syncing the .gz of", e))?;
    std::fs::rename(&tmp, &target).map_err(|e| fail("renaming the .gz of", e))?;
    std::fs::remove_file(path).map_err(|e| fail("removing", e))?;
    Ok(true)
}

/// Messages the janitor takes, one at a time.
#[derive(Debug)]
pub enum JanitorMsg {
    Run { trigger: String, reply: Option<RpcReplyPort<Result<JanitorRan, JanitorError>>> },
    Plan { reply: RpcReplyPort<Result<Plan, JanitorError>> },
}

#[derive(Debug)]
pub struct Janitor;

#[derive(Debug)]
pub struct JanitorState {
    ctx: JanitorContext,
    runs: u64,
}

impl Actor for Janitor {
    type Msg = JanitorMsg;
    type State = JanitorState;
    type Arguments = JanitorContext;

    async fn pre_start(
        &self,
        _: ActorRef<JanitorMsg>,
        ctx: JanitorContext,
    ) -> Result<JanitorState, ActorProcessingErr> {
        let runs = ctx.log.read_stream(&StreamId::janitor(), 0, usize::MAX).await?.len() as u64;
        Ok(JanitorState { ctx, runs })
    }

    async fn handle(
        &self,
        _: ActorRef<JanitorMsg>,
        msg: JanitorMsg,
        s: &mut JanitorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            JanitorMsg::Plan { reply } => {
                let _ = reply.send(s.ctx.plan().await);
            }
            JanitorMsg::Run { trigger, reply } => {
                let result = s.run(trigger).await;
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
        }
        Ok(())
    }
}

/// The rule under which the log's superseded records are removed.
const PURGE_RULE: &str = "log_purge";

impl JanitorState {
    /// On a cluster's log, the guard of this run's events: the newest run recorded in the
    /// cluster when it begins (`JanitorRan` on the janitor's stream). Once another node records
    /// a run, every later append of this one is refused, so a node paused past its lease (or
    /// asked for a run while another node ran one) does not delete or record twice. `None` on
    /// a local log, whose one janitor is this actor.
    ///
    /// The runs recorded so far are counted again from the janitor's stream then, other nodes'
    /// among them, so that runs are numbered across the cluster.
    async fn fence(&mut self) -> Result<Option<Fence>, JanitorError> {
        if !self.ctx.log.is_shared() {
            return Ok(None);
        }
        let read = |e: LogError| JanitorError::Read(e.to_string());
        let stream = StreamId::janitor();
        let last_seq = self.ctx.log.newest_of(&stream).await.map_err(read)?;
        self.runs = self.ctx.log.read_stream(&stream, 0, usize::MAX).await.map_err(read)?.len() as u64;
        Ok(Some(Fence { stream, last_seq }))
    }

    /// A run refused by its fence: said, counted, nothing more stored.
    fn fenced(&self, trigger: &str, fence: Option<&Fence>, items: usize) -> JanitorError {
        tracing::warn!(
            trigger,
            fence = fence.map_or(0, |f| f.last_seq),
            items_before = items,
            "janitor run refused by the log: another node ran the janitor since this run began; it records nothing more"
        );
        metrics::counter!(crate::metrics::JANITOR_RUNS_TOTAL, "outcome" => "fenced").increment(1);
        JanitorError::Fenced
    }

    async fn run(&mut self, trigger: String) -> Result<JanitorRan, JanitorError> {
        let started_at = self.ctx.clock.now_ms();
        let started = Instant::now();
        let fence = self.fence().await?;
        let floor = self.ctx.log.floors().log;
        if crate::space::available(&self.ctx.data).is_some_and(|free| free < floor) {
            let reserve = self.ctx.reserve.clone();
            let released =
                tokio::task::spawn_blocking(move || reserve.release("the janitor runs below the log floor")).await;
            if let Ok(Err(error)) = released {
                tracing::warn!(error = %error, "the reserve file could not be released");
            }
        }
        let mut done: Vec<PlanItem> = Vec::new();
        let mut failed: Vec<PlanItem> = Vec::new();
        let mut failures: Vec<ItemFailure> = Vec::new();
        match self.ctx.plan().await {
            Err(error) => failures.push(ItemFailure {
                rule: "all".into(),
                action: "plan".into(),
                target: String::new(),
                error: error.to_string(),
            }),
            Ok(plan) => {
                failures.extend(plan.unreadable);
                crate::fault::hold("janitor:planned").await;
                // Each item on its own: one that fails is recorded with its reason and the
                // rest of the run goes on; the next run plans it again.
                for item in plan.items {
                    match self.ctx.apply(&item, fence.as_ref()).await {
                        Ok(true) => done.push(item),
                        Ok(false) => {}
                        Err(ItemError::Fenced) => return Err(self.fenced(&trigger, fence.as_ref(), done.len())),
                        Err(ItemError::Failed(error)) => {
                            tracing::warn!(rule = %item.rule, action = item.action, target = %item.target, error = %error, "janitor item failed; the run goes on");
                            failures.push(ItemFailure {
                                rule: item.rule.clone(),
                                action: item.action.into(),
                                target: item.target.clone(),
                                error: error.chars().take(500).collect(),
                            });
                            failed.push(item);
                        }
                    }
                }
            }
        }
        let outcome = match (failures.is_empty(), done.is_empty()) {
            (true, _) => "succeeded",
            (false, false) => "partial",
            (false, true) => "failed",
        };
        let error = failures.first().map(|first| {
            let target = if first.target.is_empty() { String::new() } else { format!(" {}", first.target) };
            format!(
                "{} failure(s), the first: {}{target} ({}): {}",
                failures.len(),
                first.action,
                first.rule,
                first.error
            )
        });
        let kept = failures.len().min(JanitorRan::FAILURES_KEPT);
        let ran = JanitorRan {
            run: self.runs + 1,
            trigger,
            started_at_unix_ms: started_at,
            finished_at_unix_ms: self.ctx.clock.now_ms(),
            outcome: outcome.into(),
            error,
            rules: tally(&done),
            failed: tally(&failed),
            failures: failures.into_iter().take(kept).collect(),
        };
        let recorded = self.ctx.log.append_fenced(Event::JanitorRan(ran.clone()), fence.as_ref()).await;
        match recorded.as_ref().map_err(|e| e.as_ref()) {
            Err(LogError::Conflict(_)) => return Err(self.fenced(&ran.trigger, fence.as_ref(), done.len())),
            Err(error) => return Err(JanitorError::Read(error.to_string())),
            Ok(_) => self.runs += 1,
        }
        let seconds = started.elapsed().as_secs_f64();
        metrics::counter!(crate::metrics::JANITOR_RUNS_TOTAL, "outcome" => outcome).increment(1);
        metrics::histogram!(crate::metrics::JANITOR_RUN_SECONDS).record(seconds);
        // A compressed log file frees most of its bytes; it counts with its size before.
        let freed: u64 =
            done.iter().filter(|i| i.action != "move_to_cold" && i.action != "rename").map(|i| i.bytes).sum();
        metrics::counter!(crate::metrics::JANITOR_FREED_BYTES_TOTAL).increment(freed);
        match &ran.error {
            None => {
                tracing::info!(run = ran.run, trigger = %ran.trigger, items = done.len(), seconds, "janitor run succeeded")
            }
            Some(e) => {
                tracing::error!(run = ran.run, trigger = %ran.trigger, outcome, items = done.len(), error = %e, "janitor run did not finish everything; the next run retries what failed")
            }
        }
        Ok(ran)
    }
}

/// The janitor as the rest of the server uses it; cheap to clone.
#[derive(Debug, Clone)]
pub struct JanitorHandle {
    actor: ActorRef<JanitorMsg>,
    log: EventLog,
}

impl JanitorHandle {
    /// Starts the janitor and its schedule; the schedule stops when `stopping` turns true.
    pub async fn start(ctx: JanitorContext, stopping: watch::Receiver<bool>) -> Result<Self, ActorProcessingErr> {
        let (clock, config, log) = (ctx.clock.clone(), ctx.config.clone(), ctx.log.clone());
        // Spawned on a task of its own: ractor runs `pre_start` on the caller's stack, under
        // the server's whole start-up, and the janitor's futures are large in a debug build
        // (a test thread's 2 MiB stack overflowed there).
        let (actor, _) = tokio::spawn(Actor::spawn(None, Janitor, ctx)).await??;
        let handle = Self { actor, log };
        tokio::spawn(handle.clone().schedule(clock, config, stopping));
        Ok(handle)
    }

    /// Runs now (after any run under way) and answers with the run's record.
    pub async fn run(&self, trigger: &str) -> Result<JanitorRan, JanitorError> {
        let trigger = trigger.to_owned();
        match self.actor.call(|reply| JanitorMsg::Run { trigger, reply: Some(reply) }, None).await {
            Ok(ractor::rpc::CallResult::Success(result)) => result,
            _ => Err(JanitorError::Stopped),
        }
    }

    /// What a run would do now.
    pub async fn plan(&self) -> Result<Plan, JanitorError> {
        match self.actor.call(|reply| JanitorMsg::Plan { reply }, None).await {
            Ok(ractor::rpc::CallResult::Success(result)) => result,
            _ => Err(JanitorError::Stopped),
        }
    }

    /// The last `limit` runs, newest first.
    pub async fn runs(&self, limit: usize) -> Result<Vec<(u64, JanitorRan)>, JanitorError> {
        let all = self
            .log
            .read_stream(&StreamId::janitor(), 0, usize::MAX)
            .await
            .map_err(|e| JanitorError::Read(e.to_string()))?;
        Ok(all
            .into_iter()
            .rev()
            .filter_map(|e| match e.event {
                Event::JanitorRan(ran) => Some((e.seq, ran)),
                _ => None,
            })
            .take(limit)
            .collect())
    }

    /// Stops the actor.
    pub async fn stop(&self) {
        let _ = self.actor.stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(30))).await;
    }

    /// Runs at each slot of the schedule; a run still going when a slot comes is waited for.
    async fn schedule(self, clock: Arc<dyn Clock>, config: JanitorConfig, mut stopping: watch::Receiver<bool>) {
        let at = match config.at_seconds() {
            Ok(at) => at,
            Err(error) => {
                tracing::error!(%error, "janitor schedule not started");
                return;
            }
        };
        let mut unfinished = false;
        // On a cluster's log, only the node holding the lease runs the schedule.
        let lease = self.log.lease("janitor.schedule");
        loop {
            let now = clock.now_ms();
            let slot = match (at, config.every) {
                (Some(at), _) => Some(next_daily(now, at)),
                (None, Some(every)) => Some(now.saturating_add(crate::clock::millis(every))),
                (None, None) => None,
            };
            // A run that did not finish everything is tried again soon, not at the next slot
            // (with `at = "02:00"` that was a day later).
            let retry = unfinished.then(|| now.saturating_add(crate::clock::millis(config.retry_after)));
            let (next, trigger) = match (slot, retry) {
                (Some(slot), Some(retry)) if retry < slot => (retry, "retry"),
                (Some(slot), _) => (slot, "schedule"),
                (None, Some(retry)) => (retry, "retry"),
                (None, None) => return,
            };
            tokio::select! {
                _ = clock.sleep_until(next) => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
            if lease.as_ref().is_some_and(|lease| !*lease.borrow()) || !self.log.confirm_lease("janitor.schedule").await
            {
                continue;
            }
            unfinished = !matches!(self.run(trigger).await, Ok(ran) if ran.outcome == "succeeded");
        }
    }
}

/// The next time (Unix ms) after `now` that is `at` seconds past midnight UTC.
fn next_daily(now_ms: u64, at_seconds: u64) -> u64 {
    const DAY: u64 = 24 * 3600 * 1000;
    let today = now_ms - now_ms % DAY + at_seconds * 1000;
    if today > now_ms {
        today
    } else {
        today + DAY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_log_files_are_compressed_and_the_oldest_beyond_keep_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let day = |d: u32| format!("roomlog.2026-11-{d}.log");
        std::fs::write(dir.path().join("roomlog.2026-11-19.log.gz"), b"old").expect("write");
        for d in 20..=24 {
            std::fs::write(dir.path().join(day(d)), format!("lines of day {d}\n").repeat(1000)).expect("write");
        }
        std::fs::write(dir.path().join("unrelated.txt"), b"kept").expect("write");
        let items = plan_log_files(dir.path(), 4).expect("plan");
        let planned: Vec<(&str, &str)> = items.iter().map(|i| (i.action, i.target.as_str())).collect();
        assert_eq!(
            planned,
            vec![
                ("delete_log", "roomlog.2026-11-19.log.gz"),
                ("delete_log", "roomlog.2026-11-20.log"),
                ("compress_log", "roomlog.2026-11-21.log"),
                ("compress_log", "roomlog.2026-11-22.log"),
                ("compress_log", "roomlog.2026-11-23.log"),
            ],
            "the current day's file (24) stays as it is"
        );
        for item in &items {
            match &item.op {
                Op::CompressLog(path) => assert_eq!(gzip_file(path), Ok(true)),
                Op::DeleteLog(path) => std::fs::remove_file(path).expect("delete"),
                _ => unreachable!("only log items"),
            }
        }
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                format!("{}.gz", day(21)),
                format!("{}.gz", day(22)),
                format!("{}.gz", day(23)),
                day(24),
                "unrelated.txt".into()
            ]
        );
        let mut text = String::new();
        let gz = std::fs::File::open(dir.path().join(format!("{}.gz", day(22)))).expect("open gz");
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(gz), &mut text).expect("gunzip");
        assert_eq!(text, "lines of day 22\n".repeat(1000));
        assert!(plan_log_files(dir.path(), 4).expect("plan").is_empty(), "nothing left to do");
    }

    #[test]
    fn a_daily_slot_is_the_next_one_after_now() {
        let midnight = 1_800_000_000_000 - 1_800_000_000_000 % 86_400_000;
        let two = 2 * 3600;
        assert_eq!(next_daily(midnight, two), midnight + two * 1000);
        assert_eq!(next_daily(midnight + two * 1000, two), midnight + 86_400_000 + two * 1000);
        assert_eq!(next_daily(midnight + 3 * 3600 * 1000, two), midnight + 86_400_000 + two * 1000);
    }
}
