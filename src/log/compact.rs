//! Compaction: the log without the events that later removals made history. Two ways, one rule:
//!
//! - online: while the server serves, [`superseded`] finds the records through the log's API
//!   and the janitor (rule `log_purge`) removes them through it (`EventLog::remove`), whatever
//!   the backend. sled reuses the space of removed keys for later writes, so the log stops
//!   growing by what retention and deletions remove; its files do not shrink (sled issue
//!   #1333).
//! - offline, [`compact`] (`roomlog compact`, or `log.compact_at_start`): the sled log is
//!   rewritten into a fresh database and swapped in, the way SQLite's VACUUM rewrites a file,
//!   which gives the space back to the filesystem.
//!
//! The rule ([`Removals`], backend-neutral) drops, keeping every seq as it was:
//! - every record of a room's stream at or below the room's last `MessagesExpired` cut: its
//!   messages, their edits and deletions, and earlier cuts the last one covers (the last cut
//!   itself, whose seq is above what it cuts, stays as the record);
//! - every record of a key's stream before its last `FileDeleted`: its uploads and earlier
//!   deletions (the last deletion stays).
//!
//! So what goes of one stream is always a prefix of it, up to a seq: what NATS JetStream's
//! purge by subject removes (`log::jetstream`), on a cluster's stream as on every replica.
//!
//! The projections, in their own store, stay as they are (they describe the same state:
//! dropped events are ones whose effect a kept removal already undid), so the server starts
//! without a rebuild; the seq floor is carried into the new log. The head record is always kept (a dropped event precedes the removal that
//! supersedes it), so seqs never go back.
//!
//! Steps, each safe to cut off by a crash (see [`recover`]): write `db.compact` and fsync it;
//! rename `db` to `db.old`; rename `db.compact` to `db`; fsync the data folder; delete
//! `db.old`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::backend::Backend;
use super::sled_store::SledBackend;
use super::{EventLog, LogError};
use crate::event::{decode, Event, RoomId};
use crate::ids::FileKey;

/// Records read per step.
const CHUNK: usize = 4096;

/// What a compaction did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Compacted {
    pub records_before: u64,
    pub records_after: u64,
    pub dropped_message_events: u64,
    pub dropped_file_events: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// The error of a step of a compaction or a rewrite that failed on the filesystem.
pub(super) fn failed(what: &str) -> impl FnOnce(std::io::Error) -> LogError {
    let what = what.to_owned();
    move |source| LogError::Compact { what, source }
}

pub(super) fn sibling(log_dir: &Path, suffix: &str) -> PathBuf {
    let mut name = log_dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    log_dir.with_file_name(name)
}

fn sync_parent(log_dir: &Path) -> std::io::Result<()> {
    match log_dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => std::fs::File::open(parent)?.sync_all(),
        _ => Ok(()),
    }
}

/// Finishes or undoes a compaction a crash cut off; called before the log is opened.
pub fn recover(log_dir: &Path) -> std::io::Result<()> {
    let (fresh, old) = (sibling(log_dir, ".compact"), sibling(log_dir, ".old"));
    if !log_dir.exists() && old.exists() {
        // Cut off between the two renames: `db.compact` was complete before the first.
        let back = if fresh.exists() { &fresh } else { &old };
        std::fs::rename(back, log_dir)?;
        sync_parent(log_dir)?;
        tracing::warn!(from = %back.display(), "a compaction cut off by a crash is settled");
    }
    for leftover in [fresh, old] {
        if leftover.exists() {
            std::fs::remove_dir_all(&leftover)?;
            tracing::warn!(removed = %leftover.display(), "a compaction's leftover is removed");
        }
    }
    Ok(())
}

/// Moves the log in `log_dir` to `old_dir` and the complete, synced one in `fresh_dir` to
/// `log_dir`, then syncs the data folder; [`recover`] settles a crash between any two steps.
pub(super) fn swap_in(log_dir: &Path, fresh_dir: &Path, old_dir: &Path) -> Result<(), LogError> {
    std::fs::rename(log_dir, old_dir).map_err(failed("moving the old log aside"))?;
    crate::fault::pause_blocking("log-swap:moved-aside");
    std::fs::rename(fresh_dir, log_dir).map_err(failed("moving the compacted log in"))?;
    sync_parent(log_dir).map_err(failed("syncing the data folder"))
}

/// What the first pass learns: each room's last cut and each key's last deletion.
#[derive(Default)]
struct Removals {
    cuts: HashMap<RoomId, u64>,
    deleted: HashMap<FileKey, u64>,
}

impl Removals {
    fn learn(&mut self, seq: u64, event: &Event) {
        match event {
            Event::MessagesExpired(e) => {
                let cut = self.cuts.entry(e.room.clone()).or_default();
                *cut = (*cut).max(e.through_seq);
            }
            Event::FileDeleted(e) => {
                self.deleted.insert(e.key.clone(), seq);
            }
            _ => {}
        }
    }

    /// `Some(true)` for a dropped event of a room, `Some(false)` for a dropped event of a key.
    fn drops(&self, seq: u64, event: &Event) -> Option<bool> {
        let cut = |room: &RoomId| self.cuts.get(room).is_some_and(|&through| seq <= through);
        let deleted_later = |key: &FileKey| self.deleted.get(key).is_some_and(|&at| at > seq);
        match event {
            Event::MessagePosted(e) if cut(&e.room) => Some(true),
            Event::MessageEdited(e) if cut(&e.room) => Some(true),
            Event::MessageDeleted(e) if cut(&e.room) => Some(true),
            Event::MessagesExpired(e) if cut(&e.room) => Some(true),
            Event::FileStored(e) if deleted_later(&e.key) => Some(false),
            Event::FileDeleted(e) if deleted_later(&e.key) => Some(false),
            _ => None,
        }
    }
}

/// What an online purge found and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Purged {
    pub records_read: u64,
    pub removed_message_events: u64,
    pub removed_file_events: u64,
    /// Encoded bytes of the removed records.
    pub removed_bytes: u64,
}

impl Purged {
    pub fn removed(&self) -> u64 {
        self.removed_message_events + self.removed_file_events
    }
}

/// The seqs of records that later removals superseded, read through the log (two passes over
/// it, [`CHUNK`] records at a time), with how many are message and file events. Blocking.
pub fn superseded(log: &EventLog) -> Result<(Vec<u64>, Purged), LogError> {
    superseded_in(log.backend.as_ref(), log.head())
}

/// [`superseded`] among the records of `backend` through seq `through`.
pub(super) fn superseded_in(backend: &dyn Backend, through: u64) -> Result<(Vec<u64>, Purged), LogError> {
    let mut removals = Removals::default();
    let mut done = Purged::default();
    for_each_record(backend, through, |seq, event, _| {
        removals.learn(seq, event);
        done.records_read += 1;
    })?;
    let mut seqs = Vec::new();
    for_each_record(backend, through, |seq, event, bytes| {
        match removals.drops(seq, event) {
            Some(true) => done.removed_message_events += 1,
            Some(false) => done.removed_file_events += 1,
            None => return,
        }
        seqs.push(seq);
        done.removed_bytes += bytes as u64;
    })?;
    Ok((seqs, done))
}

fn for_each_record(
    backend: &dyn Backend,
    through: u64,
    mut each: impl FnMut(u64, &Event, usize),
) -> Result<(), LogError> {
    let mut from = 1;
    loop {
        let started = std::time::Instant::now();
        let chunk = backend.read_raw(from, through, CHUNK)?;
        let Some(&(last, _)) = chunk.last() else { return Ok(()) };
        for (seq, bytes) in &chunk {
            each(*seq, &decode(*seq, bytes)?.event, bytes.len());
        }
        from = last + 1;
        // Half a core at most: the janitor plans a purge beside the chat, on the same cores,
        // and reads and decodes the whole log twice to do it.
        std::thread::sleep(started.elapsed());
    }
}

/// Rewrites the (closed) log in `log_dir` without what removals superseded, and swaps it in.
pub fn compact(log_dir: &Path, cache_bytes_max: u64) -> Result<Compacted, LogError> {
    recover(log_dir).map_err(failed("settling an earlier compaction"))?;
    let bytes_before = crate::metrics::disk_bytes(log_dir);
    let (fresh_dir, old_dir) = (sibling(log_dir, ".compact"), sibling(log_dir, ".old"));
    let mut done = Compacted {
        records_before: 0,
        records_after: 0,
        dropped_message_events: 0,
        dropped_file_events: 0,
        bytes_before,
        bytes_after: 0,
    };
    {
        let old = SledBackend::open(log_dir, cache_bytes_max)?;
        let mut removals = Removals::default();
        let mut from = 1;
        loop {
            let chunk = old.read_raw(from, u64::MAX, CHUNK)?;
            let Some(&(last, _)) = chunk.last() else { break };
            for (seq, bytes) in &chunk {
                removals.learn(*seq, &decode(*seq, bytes)?.event);
            }
            from = last + 1;
        }
        let fresh = SledBackend::open(&fresh_dir, cache_bytes_max)?;
        let mut from = 1;
        loop {
            let chunk = old.read_raw(from, u64::MAX, CHUNK)?;
            let Some(&(last, _)) = chunk.last() else { break };
            let mut kept = Vec::with_capacity(chunk.len());
            for (seq, bytes) in &chunk {
                let envelope = decode(*seq, bytes)?;
                done.records_before += 1;
                match removals.drops(*seq, &envelope.event) {
                    Some(true) => done.dropped_message_events += 1,
                    Some(false) => done.dropped_file_events += 1,
                    None => kept.push((*seq, envelope.stream, bytes.as_slice())),
                }
            }
            let encoded: Vec<_> = kept.iter().map(|(seq, stream, bytes)| (*seq, stream, *bytes)).collect();
            fresh.write(&encoded)?;
            done.records_after += encoded.len() as u64;
            from = last + 1;
        }
        fresh.sync()?;
        // The seq floor goes with the log: no seq handed out before is handed out again.
        fresh.set_floor(old.floor())?;
    }
    swap_in(log_dir, &fresh_dir, &old_dir)?;
    std::fs::remove_dir_all(&old_dir).map_err(failed("deleting the old log"))?;
    done.bytes_after = crate::metrics::disk_bytes(log_dir);
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{FileDeleted, FileStored, MessagePosted, MessagesExpired, StreamId};
    use crate::ids::ContentHash;

    fn post(room: &str, n: u64) -> Event {
        Event::MessagePosted(MessagePosted {
            room: RoomId::parse(room).expect("room"),
            author: "ann".into(),
            client_id: format!("c{n}"),
            body: format!("message {n}"),
        })
    }

    fn cut(room: &str, through_seq: u64) -> Event {
        let room = RoomId::parse(room).expect("room");
        Event::MessagesExpired(MessagesExpired { room, through_seq, policy: "max_messages 1".into() })
    }

    fn file(stored: bool) -> Event {
        let (key, hash) = (FileKey::parse("a/b.mp3").expect("key"), ContentHash::of(&blake3::hash(b"x")));
        if stored {
            Event::FileStored(FileStored { key, hash, size: 1, content_type: "audio/mpeg".into(), owner: None })
        } else {
            Event::FileDeleted(FileDeleted { key, hash, reason: "deleted by the app".into() })
        }
    }

    /// What goes of a stream is a prefix of it (what a purge by subject removes): an earlier
    /// cut under a later one's reach and an earlier deletion go with what they removed.
    #[tokio::test]
    async fn what_removals_supersede_is_a_prefix_of_each_stream() {
        let log = EventLog::in_memory(&crate::log::LogConfig::default()).expect("log");
        let events = [
            post("a", 1), // 1
            post("a", 2), // 2
            cut("a", 1),  // 3
            post("a", 3), // 4
            post("b", 1), // 5
            file(true),   // 6
            file(false),  // 7
            file(true),   // 8
            file(false),  // 9
            cut("a", 4),  // 10: covers the cut at 3
            post("a", 4), // 11
            cut("b", 0),  // 12: cuts nothing
            file(true),   // 13
        ];
        for event in events {
            log.append(event).await.expect("append");
        }
        let (seqs, purged) = superseded(&log).expect("superseded");
        assert_eq!(seqs, vec![1, 2, 3, 4, 6, 7, 8]);
        assert_eq!((purged.removed_message_events, purged.removed_file_events), (4, 3));
        log.remove(seqs).await.expect("remove");
        let room_a = log.read_stream(&StreamId::room(&RoomId::parse("a").expect("room")), 0, 100).await.expect("a");
        assert_eq!(room_a.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![10, 11]);
        assert_eq!(superseded(&log).expect("again").0, Vec::<u64>::new(), "nothing more once removed");
        log.close().await;
    }

    /// A folder standing for a database, marked with its name.
    fn make(dir: &Path, name: &str) {
        std::fs::create_dir_all(dir.join(name)).expect("mkdir");
        std::fs::write(dir.join(name).join("mark"), name).expect("mark");
    }

    fn mark(dir: &Path) -> Option<String> {
        std::fs::read_to_string(dir.join("db").join("mark")).ok()
    }

    #[test]
    fn a_crash_between_the_renames_finishes_the_swap() {
        let dir = tempfile::tempdir().expect("tempdir");
        make(dir.path(), "db.old");
        make(dir.path(), "db.compact");
        recover(&dir.path().join("db")).expect("recover");
        assert_eq!(mark(dir.path()).as_deref(), Some("db.compact"));
        assert!(!dir.path().join("db.old").exists() && !dir.path().join("db.compact").exists());
    }

    #[test]
    fn a_crash_while_writing_keeps_the_old_log_and_drops_the_partial_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        make(dir.path(), "db");
        make(dir.path(), "db.compact");
        recover(&dir.path().join("db")).expect("recover");
        assert_eq!(mark(dir.path()).as_deref(), Some("db"));
        assert!(!dir.path().join("db.compact").exists());
    }

    #[test]
    fn a_crash_after_the_swap_deletes_the_old_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        make(dir.path(), "db");
        make(dir.path(), "db.old");
        recover(&dir.path().join("db")).expect("recover");
        assert_eq!(mark(dir.path()).as_deref(), Some("db"));
        assert!(!dir.path().join("db.old").exists());
    }
}
