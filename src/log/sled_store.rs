//! The log's embedded default backend: a sled database with the records (many to a value:
//! `log::pack`), a stream index, the fsync that sled omits, and the seq floor file beside it
//! (`log::floor`).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use super::backend::{Backend, Encoded, Raw, Rewritten};
use super::compact;
use super::floor::{Floor, SeqFloor};
use super::{pack, LogError};
use crate::durable::{Entry, SledDb, SledOpenError, SledSyncError, VALUE_BYTES_MAX};
use crate::event::{decode, StreamId};
#[cfg(test)]
use crate::event::{encode, Envelope};

/// Tree of log records: key = a bare record's seq or a pack's first seq, as big-endian u64 (so
/// byte order is seq order); value = the record or the pack (`log::pack`).
pub(super) const LOG_TREE: &str = "log";
/// Stream index: one entry per stream per group commit. Its key is the stream's length
/// (2 bytes, big-endian: a file key's stream is up to 517 bytes; one byte once panicked the
/// writer on a 256-byte key), the stream, and the first seq of that stream in the group; its
/// value is the group's seqs of that stream. One entry per group instead of one per event keeps sled's
/// per-key cost off the append path. The same tree holds [`INDEXED_KEY`] (the last seq
/// indexed, with the next seq to assign), written after the entries.
pub(super) const STREAM_TREE: &str = "log.streams";
/// Key of the stream index's checkpoint: last indexed seq and next seq, 16 bytes. Its first
/// byte (0xff) is above the first length byte of every stream (names are at most
/// `StreamId::LEN_MAX` long), so it never falls inside a stream's range.
const INDEXED_KEY: &[u8] = b"\xffindexed";

impl From<sled::Error> for LogError {
    fn from(error: sled::Error) -> Self {
        LogError::Storage(Box::new(error))
    }
}

impl From<SledOpenError> for LogError {
    fn from(error: SledOpenError) -> Self {
        LogError::Storage(Box::new(error))
    }
}

impl From<SledSyncError> for LogError {
    fn from(error: SledSyncError) -> Self {
        LogError::Storage(Box::new(error))
    }
}

/// The sled database holding the log, and its seq floor, as one [`SledBackend`] has it open.
#[derive(Debug)]
struct Store {
    db: SledDb,
    log: sled::Tree,
    streams: sled::Tree,
    floor: Arc<Mutex<SeqFloor>>,
    /// The entries written after the last sealed pack, to be sealed into packs together.
    tail: Arc<Mutex<Tail>>,
    /// Held to read across entries, and exclusively to seal: sealing replaces many keys by
    /// one, and a range read that met the old keys on one side of it and the pack on the
    /// other would miss records.
    layout: Arc<RwLock<()>>,
}

/// The log's newest entries that are not sealed packs (bare records and plain packs of
/// group commits), consecutive in the tree: once they hold a pack's worth of records or
/// bytes, they are replaced by sealed packs in one atomic batch.
#[derive(Debug, Default)]
struct Tail {
    keys: Vec<u64>,
    records: usize,
    bytes: usize,
}

impl Tail {
    fn add(&mut self, key: u64, records: &[(u64, &[u8])]) {
        self.keys.push(key);
        self.records += records.len();
        self.bytes += pack::raw_bytes(records);
    }

    fn is_full(&self) -> bool {
        self.records >= pack::RECORDS_MAX || self.bytes >= pack::BYTES_MAX
    }
}

impl Store {
    /// Opens the database in `dir`, creating it if needed, and completes the stream index if a
    /// crash came between writing a group's records and its index entries.
    pub fn open(dir: &Path, cache_bytes_max: u64) -> Result<Self, LogError> {
        let db = SledDb::open(dir, crate::durable::LOG, cache_bytes_max)?;
        let floor = Arc::new(Mutex::new(SeqFloor::open(dir)?));
        let store = Self {
            log: db.db().open_tree(LOG_TREE)?,
            streams: db.db().open_tree(STREAM_TREE)?,
            db,
            floor,
            tail: Arc::default(),
            layout: Arc::default(),
        };
        store.repair_index()?;
        *store.lock_tail() = store.find_tail()?;
        Ok(store)
    }

    fn lock_tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        // A writer that panicked while holding it left the tail as it was: at worst a part
        // stays unsealed.
        self.tail.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn reading(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.layout.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn rearranging(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.layout.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The unsealed entries at the end of the log, newest first found, at most a pack's
    /// worth (a log written before packs has only bare records: its older ones stay bare
    /// until `roomlog compact` rewrites it).
    fn find_tail(&self) -> Result<Tail, LogError> {
        let mut tail = Tail::default();
        for item in self.log.iter().rev() {
            let (key, value) = item?;
            if pack::is_sealed(&value) {
                break;
            }
            let held = pack::records(seq_of(&key), &value)?;
            let held: Vec<(u64, &[u8])> = held.iter().map(|(seq, bytes)| (*seq, bytes.as_slice())).collect();
            if pack::raw_bytes(&held) > pack::BYTES_MAX {
                break; // a record too large for any pack, bare as `write` left it
            }
            tail.add(seq_of(&key), &held);
            if tail.is_full() {
                break;
            }
        }
        tail.keys.reverse();
        Ok(tail)
    }

    /// Replaces the tail's entries by sealed packs in one atomic batch (sled recovers a batch
    /// whole or not at all), so that a crash leaves every record in exactly one entry.
    fn seal(&self, tail: &mut Tail) -> Result<(), LogError> {
        if tail.keys.is_empty() {
            return Ok(());
        }
        let _rearranging = self.rearranging();
        let mut held: Vec<Raw> = Vec::with_capacity(tail.records);
        for &key in &tail.keys {
            if let Some(value) = self.log.get(key.to_be_bytes())? {
                held.extend(pack::records(key, &value)?);
            }
        }
        let held: Vec<(u64, &[u8])> = held.iter().map(|(seq, bytes)| (*seq, bytes.as_slice())).collect();
        let mut batch = sled::Batch::default();
        for key in &tail.keys {
            batch.remove(&key.to_be_bytes());
        }
        for run in pack::runs(&held) {
            batch.insert(&run[0].0.to_be_bytes(), pack::entry(run, true));
        }
        self.log.apply_batch(batch)?;
        *tail = Tail::default();
        Ok(())
    }

    /// The entry holding `seq`, if any: the last one whose key is at or below it.
    fn holding(&self, seq: u64) -> Result<Option<(u64, sled::IVec)>, LogError> {
        Ok(self.log.range(..=seq.to_be_bytes()).next_back().transpose()?.map(|(key, value)| (seq_of(&key), value)))
    }

    fn with_floor<T>(&self, f: impl FnOnce(&mut SeqFloor) -> std::io::Result<T>) -> Result<T, LogError> {
        // A writer that panicked while holding it left the floor as it was: still correct.
        let mut floor = self.floor.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(f(&mut floor)?)
    }

    /// (last indexed seq, next seq to assign) as recorded by the last complete group commit.
    fn indexed(&self) -> Result<(u64, u64), LogError> {
        Ok(match self.streams.get(INDEXED_KEY)? {
            Some(v) if v.len() == 16 => (seq_of(&v[..8]), seq_of(&v[8..])),
            _ => (0, 1),
        })
    }

    /// Raises the next seq the index checkpoint records to at least `next` (a rewrite carries
    /// the old database's, which removed newest records may have left above its last record).
    fn carry_next_seq(&self, next: u64) -> Result<(), LogError> {
        let (indexed, next_now) = self.indexed()?;
        if next > next_now {
            let mut checkpoint = indexed.to_be_bytes().to_vec();
            checkpoint.extend_from_slice(&next.to_be_bytes());
            self.streams.insert(INDEXED_KEY, checkpoint)?;
        }
        Ok(())
    }

    /// Writes the stream-index entries of one group of (stream, seq), ascending by seq: an
    /// entry per stream, of at most [`STREAM_ENTRY_SEQS_MAX`] seqs (a group of `log.batch_max`
    /// events of one stream could otherwise pass `VALUE_BYTES_MAX`).
    fn index<'a>(&self, group: impl Iterator<Item = (&'a StreamId, u64)>, last_seq: u64) -> Result<(), LogError> {
        let mut by_stream: BTreeMap<&StreamId, Vec<u64>> = BTreeMap::new();
        for (stream, seq) in group {
            by_stream.entry(stream).or_default().push(seq);
        }
        // Plain inserts, the checkpoint last, rather than one batch: sled recovers a prefix of
        // its writes, so a checkpoint that survived has its entries before it, and entries
        // without their checkpoint are written again, under the same keys, by `repair_index`.
        // A batch makes sled write what came before it on its own, which cost each commit a
        // second write and wait of the data file (seen with strace: 308 µs a lone append).
        for (stream, seqs) in by_stream {
            for entry in seqs.chunks(STREAM_ENTRY_SEQS_MAX) {
                let Some(&first) = entry.first() else { continue };
                self.streams.insert(stream_key(stream, first), stream_entry(entry)?)?;
            }
        }
        let next_seq = last_seq.max(self.indexed()?.1.saturating_sub(1)) + 1;
        let mut checkpoint = last_seq.to_be_bytes().to_vec();
        checkpoint.extend_from_slice(&next_seq.to_be_bytes());
        self.streams.insert(INDEXED_KEY, checkpoint)?;
        Ok(())
    }

    /// Indexes records written after the index checkpoint (a crash between the two writes of
    /// a group commit), reading them in groups as the writer would have.
    fn repair_index(&self) -> Result<(), LogError> {
        let (indexed, _) = self.indexed()?;
        loop {
            let (checkpoint, _) = self.indexed()?;
            let group = self.read_raw(checkpoint + 1, u64::MAX, 4096)?;
            let Some(&(last, _)) = group.last() else { break };
            let decoded =
                group.iter().map(|(seq, bytes)| Ok(decode(*seq, bytes)?)).collect::<Result<Vec<_>, LogError>>()?;
            self.index(decoded.iter().map(|e| (&e.stream, e.seq)), last)?;
        }
        let (now, _) = self.indexed()?;
        if now > indexed {
            tracing::warn!(
                from_seq = indexed + 1,
                through_seq = now,
                "stream index completed after an interrupted commit"
            );
        }
        Ok(())
    }

    /// Overwrites one record with bytes that do not decode, for tests of corruption handling.
    #[cfg(test)]
    pub fn corrupt_for_test(&self, seq: u64) -> Result<(), LogError> {
        self.log.insert(seq.to_be_bytes(), &b"\x93not an event"[..])?;
        Ok(())
    }

    /// Writes records without their stream-index entries, as a crash between the two writes
    /// of a group commit leaves them, for the test of `repair_index`.
    #[cfg(test)]
    pub fn write_records_only_for_test(&self, envelopes: &[Envelope]) -> Result<(), LogError> {
        let mut records = sled::Batch::default();
        for envelope in envelopes {
            records.insert(&envelope.seq.to_be_bytes(), encode(envelope));
        }
        self.log.apply_batch(records)?;
        Ok(())
    }
}

impl Backend for Store {
    fn name(&self) -> &'static str {
        "sled"
    }

    fn last(&self) -> Result<Option<Raw>, LogError> {
        let _reading = self.reading();
        match self.log.last()? {
            Some((key, value)) => Ok(pack::records(seq_of(&key), &value)?.pop()),
            None => Ok(None),
        }
    }

    fn next_seq_floor(&self) -> Result<u64, LogError> {
        Ok(self.indexed()?.1)
    }

    fn floor(&self) -> Floor {
        self.floor.lock().unwrap_or_else(std::sync::PoisonError::into_inner).floor()
    }

    fn reserve(&self, through: u64, acked_through: u64) -> Result<(), LogError> {
        self.with_floor(|floor| floor.reserve(through, acked_through))
    }

    fn release(&self, head: u64) -> Result<(), LogError> {
        self.with_floor(|floor| floor.release(head))
    }

    fn set_floor(&self, to: Floor) -> Result<(), LogError> {
        self.with_floor(|floor| floor.write(to))
    }

    /// Writes the records as they are encoded (a restore keeps the bytes of old event versions
    /// as they were written: DESIGN.md, "never rewritten"), then their stream-index entries
    /// with the index checkpoint. The records are plain inserts, not one atomic batch: nothing
    /// of the group is acknowledged before the sync that follows, sled recovers a prefix of its
    /// writes after a crash, and `repair_index` indexes whatever prefix survived. (Measured
    /// here, a sled `apply_batch` costs 6.3 µs a key against 4.5 µs for an insert, and a
    /// transaction over the trees 16 µs an event.)
    fn write(&self, records: &[Encoded<'_>]) -> Result<(), LogError> {
        let Some(&(last_seq, _, _)) = records.last() else { return Ok(()) };
        if let Some(&(seq, _, bytes)) = records.iter().find(|(_, _, bytes)| bytes.len() > VALUE_BYTES_MAX) {
            return Err(LogError::RecordTooLarge { seq, bytes: bytes.len(), max: VALUE_BYTES_MAX });
        }
        if let Some(&(seq, stream, _)) = records.iter().find(|(_, stream, _)| stream.as_str().len() > StreamId::LEN_MAX)
        {
            return Err(LogError::StreamTooLong { seq, bytes: stream.as_str().len(), max: StreamId::LEN_MAX });
        }
        let pairs: Vec<(u64, &[u8])> = records.iter().map(|&(seq, _, bytes)| (seq, bytes)).collect();
        let runs = pack::runs(&pairs);
        let mut tail = self.lock_tail();
        for (i, run) in runs.iter().enumerate() {
            // A run cut short by the next record is a full pack: sealed at once, after the
            // tail before it, so that sealed packs never span another entry.
            let complete =
                i + 1 < runs.len() || run.len() >= pack::RECORDS_MAX || pack::raw_bytes(run) > pack::BYTES_MAX;
            if complete {
                self.seal(&mut tail)?;
            }
            self.log.insert(run[0].0.to_be_bytes(), pack::entry(run, complete))?;
            if !complete {
                tail.add(run[0].0, run);
            }
        }
        self.index(records.iter().map(|&(seq, stream, _)| (stream, seq)), last_seq)?;
        if tail.is_full() {
            self.seal(&mut tail)?;
        }
        Ok(())
    }

    /// See [`SledDb::sync`] for why an fsync of sled's data file is what makes "acknowledged"
    /// mean on disk, and why that one file is all there is to sync.
    fn sync(&self) -> Result<(), LogError> {
        Ok(self.db.sync()?)
    }

    fn read_raw(&self, from_seq: u64, through_seq: u64, limit: usize) -> Result<Vec<Raw>, LogError> {
        if from_seq > through_seq || limit == 0 {
            return Ok(Vec::new());
        }
        let _reading = self.reading();
        // The entry holding `from_seq` may start before it: begin at the last entry at or
        // below, read once here, then the entries after it (not looked up when the first
        // serves the read: a search's hit wants one record).
        let first = self.holding(from_seq)?;
        let after = match &first {
            Some((key, _)) => Bound::Excluded(key.to_be_bytes()),
            None => Bound::Included(from_seq.to_be_bytes()),
        };
        let rest = self.log.range((after, Bound::Included(through_seq.to_be_bytes())));
        let entries = first.map(Ok).into_iter().chain(rest.map(|item| item.map(|(key, value)| (seq_of(&key), value))));
        let mut out = Vec::new();
        for item in entries {
            let (key, value) = item?;
            // Only the records wanted are copied out of the entry.
            for (seq, record) in pack::unpack(key, &value)?.iter() {
                if seq > through_seq {
                    return Ok(out);
                }
                if seq >= from_seq {
                    out.push((seq, record.to_vec()));
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    fn read_stream_raw(
        &self,
        stream: &StreamId,
        after_seq: u64,
        through_seq: u64,
        limit: usize,
    ) -> Result<Vec<Raw>, LogError> {
        let Some(from) = after_seq.checked_add(1) else { return Ok(Vec::new()) };
        // The entry holding `from` may start before it: begin at the last entry at or below.
        let start = match self.streams.range(stream_key(stream, 0)..=stream_key(stream, from)).next_back() {
            Some(item) => item?.0.to_vec(),
            None => stream_key(stream, from),
        };
        let _reading = self.reading();
        // The entry read last, for the stream's next seqs that are likely in it too; only the
        // stream's own records are copied out of it.
        let mut entry: Option<pack::Unpacked> = None;
        let mut out: Vec<Raw> = Vec::new();
        for item in self.streams.range(start..=stream_key(stream, u64::MAX)) {
            let (key, seqs) = item?;
            for seq in stream_entry_seqs(&key, &seqs)?.into_iter().filter(|&s| s >= from) {
                if out.len() >= limit || seq > through_seq {
                    return Ok(out);
                }
                if out.last().is_some_and(|(last, _)| *last >= seq) {
                    continue; // entries never overlap; if they did, each seq still comes once
                }
                if !entry.as_ref().is_some_and(|held| held.spans(seq)) {
                    entry = match self.holding(seq)? {
                        Some((key, value)) => Some(pack::unpack(key, &value)?),
                        None => None,
                    };
                }
                // A removed record's index entry may remain: a missing record is skipped.
                if let Some(record) = entry.as_ref().and_then(|held| held.get(seq)) {
                    out.push((seq, record.to_vec()));
                }
            }
        }
        Ok(out)
    }

    /// Removes the records: each entry holding some is rewritten without them, or removed
    /// when none of its records is left. Their stream-index entries stay (a read skips a
    /// missing record). sled reuses the space of what it no longer holds for later writes;
    /// its files do not shrink (only `roomlog compact` rewrites them).
    fn remove(&self, seqs: &[u64]) -> Result<u64, LogError> {
        let mut tail = self.lock_tail();
        let _rearranging = self.rearranging();
        let mut removed = 0;
        let mut at = 0;
        while let Some(&seq) = seqs.get(at) {
            let Some((key, value)) = self.holding(seq)? else {
                at += 1;
                continue;
            };
            let held = pack::records(key, &value)?;
            let end = held.last().map_or(seq, |(last, _)| *last);
            if seq > end {
                at += 1; // not held by any entry: already gone
                continue;
            }
            let mut gone: Vec<u64> = Vec::new();
            while let Some(&seq) = seqs.get(at).filter(|&&s| s <= end) {
                gone.push(seq);
                at += 1;
            }
            let kept: Vec<(u64, &[u8])> =
                held.iter().filter(|(s, _)| gone.binary_search(s).is_err()).map(|(s, b)| (*s, b.as_slice())).collect();
            if kept.len() == held.len() {
                continue;
            }
            removed += (held.len() - kept.len()) as u64;
            if kept.is_empty() {
                self.log.remove(key.to_be_bytes())?;
                tail.keys.retain(|&k| k != key);
            } else {
                self.log.insert(key.to_be_bytes(), pack::like(&value, &kept))?;
            }
        }
        Ok(removed)
    }

    fn record_bytes_max(&self) -> usize {
        VALUE_BYTES_MAX
    }

    fn available_bytes(&self) -> Option<u64> {
        fs2::available_space(self.db.dir()).ok()
    }

    fn unsafe_files(&self) -> usize {
        self.db.blob_files()
    }
}

/// The log's embedded default backend: the sled database in the log folder, which
/// [`SledBackend::rewrite`] swaps for a fresh copy of itself while the log serves.
#[derive(Debug)]
pub struct SledBackend {
    /// The database open now; an error once a swap closed it and could not open it again.
    /// Every call holds it shared; a swap holds it alone while it closes, renames and reopens.
    store: RwLock<Result<Store, String>>,
    /// Held by the one rewrite under way.
    rewriting: Mutex<()>,
    dir: PathBuf,
    cache_bytes_max: u64,
}

/// A call on a log whose database a swap closed and could not open again.
#[derive(Debug, thiserror::Error)]
#[error("the log's database was closed to swap in its rewritten copy and did not open again ({0}); restart the server")]
pub struct NotReopened(String);

/// Records read and copied per step of a rewrite.
const REWRITE_CHUNK: usize = 4096;

impl SledBackend {
    /// Opens the database in `dir`, creating it if needed: first settles a compaction or a
    /// rewrite a crash cut off (`compact::recover`), then completes the stream index if a crash
    /// came between writing a group's records and its index entries.
    pub fn open(dir: &Path, cache_bytes_max: u64) -> Result<Self, LogError> {
        compact::recover(dir).map_err(compact::failed("settling an earlier compaction or rewrite"))?;
        let store = Store::open(dir, cache_bytes_max)?;
        Ok(Self { store: RwLock::new(Ok(store)), rewriting: Mutex::default(), dir: dir.to_path_buf(), cache_bytes_max })
    }

    fn current(&self) -> std::sync::RwLockReadGuard<'_, Result<Store, String>> {
        // A call that panicked holding it shared changed nothing of it; a swap that panicked
        // left either store or the error, each whole.
        self.store.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn with<T>(&self, call: impl FnOnce(&Store) -> Result<T, LogError>) -> Result<T, LogError> {
        match &*self.current() {
            Ok(store) => call(store),
            Err(why) => Err(LogError::Storage(Box::new(NotReopened(why.clone())))),
        }
    }

    /// Writes the log's records into a fresh database beside it and swaps that in, while the
    /// log serves: what `roomlog compact` does offline, minus the choice of what to drop (the
    /// janitor's purge has removed that already). sled reuses the space of removed records and
    /// gives it back only when segments at the end of its file come free; this gives it back
    /// at once. The copy is made under shared access
    /// (appends go on into the old database meanwhile); then, with every call held off, the
    /// records written since are copied, the fresh database is synced, both are closed, the
    /// folders are renamed as `log::compact` renames them (a crash at any step is settled by
    /// `compact::recover` at the next open) and the fresh one is opened in place. Records
    /// removed from the old database during the copy may come back; a later purge removes them.
    pub fn rewrite(&self) -> Result<Rewritten, LogError> {
        let _rewriting = match self.rewriting.try_lock() {
            Ok(held) => held,
            // A rewrite that panicked left the folders for `compact::recover` or the leftover
            // removal below; nothing of the lock's own is wrong.
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                return Err(LogError::Compact {
                    what: "another rewrite of the log is under way".into(),
                    source: std::io::Error::from(std::io::ErrorKind::ResourceBusy),
                })
            }
        };
        let (fresh_dir, old_dir) = (compact::sibling(&self.dir, ".compact"), compact::sibling(&self.dir, ".old"));
        // With the log in place, what an earlier rewrite left beside it is only removed.
        compact::recover(&self.dir).map_err(compact::failed("removing an earlier rewrite's leftover"))?;
        let bytes_before = crate::metrics::allocated_bytes(&self.dir);
        if let Some(available) = self.available_bytes().filter(|&free| free < bytes_before) {
            return Err(LogError::Compact {
                what: format!("rewriting the log online needs up to {bytes_before} bytes free, {available} are"),
                source: std::io::Error::from(std::io::ErrorKind::StorageFull),
            });
        }
        let mut fresh = Store::open(&fresh_dir, self.cache_bytes_max)?;
        let mut records = 0;
        let mut from = 1;
        // Copies through `through`: an end that moved with the appends would never be reached
        // while they come faster than the copy.
        let mut catch_up = |fresh: &Store, through: u64| loop {
            let started = std::time::Instant::now();
            let chunk = self.with(|store| store.read_raw(from, through, REWRITE_CHUNK))?;
            match copy(&chunk, fresh, &mut records)? {
                Some(next) => from = next,
                None => return fresh.sync(),
            }
            // Synced a chunk at a time, and a third of one core at most: the server's own
            // commits wait on the same disk, behind whatever the copy left for it to write (a
            // chat p99 of 2.8 times its own while sled's flusher wrote the copy a second at a
            // time; `benches/run-purge.sh`).
            fresh.sync()?;
            std::thread::sleep(started.elapsed() * 2);
        };
        let head = || self.with(|store| Ok(store.last()?.map_or(0, |(seq, _)| seq)));
        // The log as it was; then, after opening the copy once more, what came meanwhile, so
        // that what is left for the hold is little (both gently: at full speed, the second
        // pass alone took chat p99 from 1.5-1.8 times its own to 2.0-2.1 in `run-purge.sh`).
        let copied = head().and_then(|through| catch_up(&fresh, through));
        if let Err(error) = copied {
            return Err(abandon(fresh, &fresh_dir, error));
        }
        // Opened once more before the hold, so that the opening in place under it is short:
        // sled scans on opening what came after its last snapshot and fills the rest of the
        // last segment with zeros, and it writes a snapshot once it has opened.
        drop(fresh);
        fresh = Store::open(&fresh_dir, self.cache_bytes_max)?;
        let copied = head().and_then(|through| catch_up(&fresh, through));
        if let Err(error) = copied {
            return Err(abandon(fresh, &fresh_dir, error));
        }
        let mut slot = self.store.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let held_since = std::time::Instant::now();
        let old = match &*slot {
            Ok(store) => store,
            Err(why) => return Err(abandon(fresh, &fresh_dir, LogError::Storage(Box::new(NotReopened(why.clone()))))),
        };
        let finished = (|| {
            let mut from = from;
            while let Some(next) = copy(&old.read_raw(from, u64::MAX, REWRITE_CHUNK)?, &fresh, &mut records)? {
                from = next;
            }
            fresh.carry_next_seq(old.next_seq_floor()?)?;
            fresh.set_floor(old.floor())?;
            fresh.sync()
        })();
        if let Err(error) = finished {
            return Err(abandon(fresh, &fresh_dir, error));
        }
        crate::fault::pause_blocking("log-rewrite:copied");
        drop(fresh);
        // Both closed before the renames: sled writes its snapshots into the folder it opened.
        *slot = Err("closed for the swap".into());
        let reopened = compact::swap_in(&self.dir, &fresh_dir, &old_dir).and_then(|()| {
            crate::fault::pause_blocking("log-rewrite:swapped");
            Store::open(&self.dir, self.cache_bytes_max)
        });
        let paused = held_since.elapsed();
        match reopened {
            Ok(store) => *slot = Ok(store),
            Err(error) => {
                tracing::error!(%error, "the log did not open again after its online rewrite; its calls fail until a restart");
                *slot = Err(error.to_string());
                return Err(error);
            }
        }
        drop(slot);
        crate::fault::pause_blocking("log-rewrite:reopened");
        std::fs::remove_dir_all(&old_dir).map_err(compact::failed("deleting the log's old files"))?;
        Ok(Rewritten {
            records,
            bytes_before,
            bytes_after: crate::metrics::allocated_bytes(&self.dir),
            paused_ms: paused.as_millis() as u64,
        })
    }

    /// The log folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    #[cfg(test)]
    pub fn corrupt_for_test(&self, seq: u64) -> Result<(), LogError> {
        self.with(|store| store.corrupt_for_test(seq))
    }

    #[cfg(test)]
    pub fn write_records_only_for_test(&self, envelopes: &[Envelope]) -> Result<(), LogError> {
        self.with(|store| store.write_records_only_for_test(envelopes))
    }

    /// Every stored value of the log tree, for tests of how records are packed.
    #[cfg(test)]
    fn values_for_test(&self) -> Result<Vec<sled::IVec>, LogError> {
        self.with(|store| Ok(store.log.iter().values().collect::<Result<_, _>>()?))
    }
}

/// Copies `chunk` into `to`, counting its records into `copied`, and returns the seq after it,
/// or `None` for an empty chunk.
fn copy(chunk: &[Raw], to: &Store, copied: &mut u64) -> Result<Option<u64>, LogError> {
    let Some(&(last, _)) = chunk.last() else { return Ok(None) };
    let streams =
        chunk.iter().map(|(seq, bytes)| Ok(decode(*seq, bytes)?.stream)).collect::<Result<Vec<_>, LogError>>()?;
    let records: Vec<Encoded<'_>> =
        chunk.iter().zip(&streams).map(|((seq, bytes), stream)| (*seq, stream, bytes.as_slice())).collect();
    to.write(&records)?;
    *copied += records.len() as u64;
    Ok(Some(last + 1))
}

/// Closes and deletes an unfinished rewrite's database, and hands back why it stopped.
fn abandon(fresh: Store, fresh_dir: &Path, error: LogError) -> LogError {
    drop(fresh);
    if let Err(cleanup) = std::fs::remove_dir_all(fresh_dir) {
        tracing::warn!(dir = %fresh_dir.display(), %cleanup, "an unfinished rewrite of the log is left; the next open removes it");
    }
    error
}

impl Backend for SledBackend {
    fn name(&self) -> &'static str {
        "sled"
    }

    fn last(&self) -> Result<Option<Raw>, LogError> {
        self.with(Store::last)
    }

    fn next_seq_floor(&self) -> Result<u64, LogError> {
        self.with(Store::next_seq_floor)
    }

    fn floor(&self) -> Floor {
        self.current().as_ref().map_or_else(|_| Floor::default(), Store::floor)
    }

    fn reserve(&self, through: u64, acked_through: u64) -> Result<(), LogError> {
        self.with(|store| store.reserve(through, acked_through))
    }

    fn release(&self, head: u64) -> Result<(), LogError> {
        self.with(|store| store.release(head))
    }

    fn set_floor(&self, floor: Floor) -> Result<(), LogError> {
        self.with(|store| store.set_floor(floor))
    }

    fn write(&self, records: &[Encoded<'_>]) -> Result<(), LogError> {
        self.with(|store| store.write(records))
    }

    fn sync(&self) -> Result<(), LogError> {
        self.with(Store::sync)
    }

    fn read_raw(&self, from_seq: u64, through_seq: u64, limit: usize) -> Result<Vec<Raw>, LogError> {
        self.with(|store| store.read_raw(from_seq, through_seq, limit))
    }

    fn read_stream_raw(
        &self,
        stream: &StreamId,
        after_seq: u64,
        through_seq: u64,
        limit: usize,
    ) -> Result<Vec<Raw>, LogError> {
        self.with(|store| store.read_stream_raw(stream, after_seq, through_seq, limit))
    }

    fn remove(&self, seqs: &[u64]) -> Result<u64, LogError> {
        self.with(|store| store.remove(seqs))
    }

    fn record_bytes_max(&self) -> usize {
        VALUE_BYTES_MAX
    }

    fn available_bytes(&self) -> Option<u64> {
        fs2::available_space(&self.dir).ok()
    }

    fn unsafe_files(&self) -> usize {
        self.current().as_ref().map_or(0, Store::unsafe_files)
    }

    fn rewrite(&self) -> Result<Option<Rewritten>, LogError> {
        SledBackend::rewrite(self).map(Some)
    }
}

fn stream_key(stream: &StreamId, seq: u64) -> Vec<u8> {
    let name = stream.as_str().as_bytes();
    // Records of longer streams are refused before they are written (`write_encoded`).
    let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
    let mut key = Vec::with_capacity(2 + name.len() + 8);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(name);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Seqs one stream-index entry holds at most: at most 9 bytes each, 36 KiB, under
/// `VALUE_BYTES_MAX` (a group commit may hold up to `log.batch_max` events of one stream).
const STREAM_ENTRY_SEQS_MAX: usize = 4096;

/// A stream-index entry's value: its seqs (ascending) as a MessagePack array of the first seq
/// and then each seq's distance from the one before: a byte a seq while fewer than 128 other
/// records come between two of a stream's, where 8 bytes each held them before (a fifth of
/// the log's values for the 1M corpus). Entries written before hold the seqs as 8-byte
/// big-endian numbers; they read as they are (their first byte is 0, which no MessagePack
/// array starts with).
fn stream_entry(seqs: &[u64]) -> Result<Vec<u8>, LogError> {
    let mut before = 0;
    let steps: Vec<u64> = seqs
        .iter()
        .map(|&seq| {
            let step = seq.saturating_sub(before);
            before = seq;
            step
        })
        .collect();
    rmp_serde::to_vec(&steps).map_err(|e| LogError::Storage(Box::new(e)))
}

/// The seqs of the stream-index entry `entry` stored under `key`, ascending.
fn stream_entry_seqs(key: &[u8], entry: &[u8]) -> Result<Vec<u64>, LogError> {
    if entry.first() == Some(&0) {
        return Ok(entry.chunks_exact(8).map(seq_of).collect());
    }
    let damaged = || LogError::Storage(Box::new(DamagedStreamEntry { key: String::from_utf8_lossy(key).into_owned() }));
    let steps: Vec<u64> = rmp_serde::from_slice(entry).map_err(|_| damaged())?;
    let mut seq = 0u64;
    steps
        .into_iter()
        .map(|step| {
            seq = seq.checked_add(step).ok_or_else(damaged)?;
            Ok(seq)
        })
        .collect()
}

/// A stream-index entry that does not read as seqs.
#[derive(Debug, thiserror::Error)]
#[error("the stream-index entry {key:?} does not read as seqs")]
struct DamagedStreamEntry {
    key: String,
}

/// Reads a big-endian seq key; a key of the wrong length reads as 0, which no record uses.
fn seq_of(key: &[u8]) -> u64 {
    key.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

/// A database of the layout before issue 18 (`<data>/db`: the log's trees and the
/// projections' in one sled database), read by the migration (`layout::migrate`).
#[derive(Debug)]
pub struct LegacyDb {
    db: sled::Db,
}

impl LegacyDb {
    /// Opens it, whatever its segment size.
    pub fn open(dir: &Path, cache_bytes_max: u64) -> Result<Self, SledOpenError> {
        Ok(Self { db: SledDb::open_old(dir, cache_bytes_max)? })
    }

    /// Every record of its log, as written, by ascending seq.
    pub fn records(&self) -> Result<impl Iterator<Item = Result<(u64, Vec<u8>), LogError>>, LogError> {
        let tree = self.db.open_tree(LOG_TREE)?;
        Ok(tree.iter().map(|item| {
            let (key, bytes) = item?;
            let seq = key.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
            Ok((seq, bytes.to_vec()))
        }))
    }

    /// The next seq its log would have handed out (1 when it never recorded one).
    pub fn next_seq(&self) -> Result<u64, LogError> {
        let streams = self.db.open_tree(STREAM_TREE)?;
        // 16 bytes under the stream index's checkpoint key: last indexed, next.
        let next = streams.get(INDEXED_KEY)?.and_then(|v| v.get(8..16).and_then(|b| b.try_into().ok()));
        Ok(next.map_or(1, u64::from_be_bytes))
    }

    /// Every entry of one of its other trees (key, value), by ascending key.
    pub fn entries(&self, tree: &str) -> Result<Vec<Entry>, LogError> {
        let tree = self.db.open_tree(tree)?;
        tree.iter().map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(LogError::from)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::conformance::posted;
    use crate::log::{EventLog, LogConfig};

    #[tokio::test]
    async fn records_whose_index_write_was_lost_are_indexed_at_the_next_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let room_a = posted("a", 0).stream();
        {
            let log = EventLog::open(dir.path(), &LogConfig::default()).expect("open");
            for n in 0..3 {
                log.append(posted("a", n)).await.expect("append");
            }
            log.close().await;
            drop(log);
            // A crash after the records of seqs 4..=6 were written, before their index entries.
            let backend = SledBackend::open(dir.path(), 1 << 20).expect("backend");
            let lost: Vec<Envelope> = (4..=6)
                .map(|seq| Envelope { seq, at_unix_ms: seq, stream: room_a.clone(), event: posted("a", seq as usize) })
                .collect();
            backend.write_records_only_for_test(&lost).expect("records only");
            backend.sync().expect("sync");
        }
        let log = EventLog::open(dir.path(), &LogConfig::default()).expect("reopen");
        let seqs: Vec<u64> = log.read_stream(&room_a, 0, 100).await.expect("stream").iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(log.append(posted("a", 7)).await.expect("append").seq, 7, "seqs continue after the repaired ones");
        let after: Vec<u64> = log.read_stream(&room_a, 5, 100).await.expect("stream").iter().map(|e| e.seq).collect();
        assert_eq!(after, vec![6, 7]);
    }

    #[tokio::test]
    async fn appends_one_at_a_time_end_up_sealed_many_to_a_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EventLog::open(dir.path(), &LogConfig::default()).expect("open");
        for n in 0..1000 {
            log.append(posted(["a", "b"][n % 2], n)).await.expect("append");
        }
        log.close().await;
        drop(log);
        let backend = SledBackend::open(dir.path(), 1 << 20).expect("backend");
        let values = backend.values_for_test().expect("values");
        let sealed = values.iter().filter(|v| pack::is_sealed(v)).count();
        assert_eq!(sealed, 1000 / pack::RECORDS_MAX, "every full pack's worth is sealed");
        assert_eq!(values.len(), sealed + 1000 % pack::RECORDS_MAX, "the newest records wait bare");
        let packed: usize = values.iter().map(|v| v.len()).sum();
        let bare: usize = backend.read_raw(1, u64::MAX, usize::MAX).expect("read").iter().map(|r| r.1.len()).sum();
        assert!(packed * 2 < bare, "sealed packs are compressed: {packed} bytes stored for {bare}");
    }

    #[test]
    fn stream_index_entries_hold_a_byte_a_seq_for_near_neighbours_and_read_back_any_distance() {
        let near: Vec<u64> = (0..1000).map(|n| 5 + 20 * n).collect();
        let entry = stream_entry(&near).expect("encode");
        assert!(entry.len() < near.len() + 8, "{} bytes for {} seqs", entry.len(), near.len());
        assert_eq!(stream_entry_seqs(b"k", &entry).expect("decode"), near);
        let far = vec![1, 2, 300, 70_000, 1 << 33, (1 << 55) + 7];
        assert_eq!(stream_entry_seqs(b"k", &stream_entry(&far).expect("encode")).expect("decode"), far);
        let damaged = stream_entry_seqs(b"k", &[0x93, 0x01]).expect_err("a cut entry");
        assert!(damaged.to_string().contains("does not read as seqs"), "{damaged}");
        let overflowing = stream_entry(&[u64::MAX]).expect("encode");
        let twice = [&[0x92][..], &overflowing[1..], &overflowing[1..]].concat();
        assert!(stream_entry_seqs(b"k", &twice).is_err(), "a sum past u64 is damage, not a panic");
    }

    /// A log written before the compact entries holds its stream index as 8-byte seqs: it
    /// reads as it is, and the entries written after it in the new form read with it.
    #[test]
    fn stream_index_entries_written_before_read_with_the_new_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = SledBackend::open(&dir.path().join("log"), 1 << 20).expect("backend");
        let stream = posted("a", 0).stream();
        let records: Vec<(u64, Vec<u8>)> = (1..=6)
            .map(|seq| (seq, encode(&Envelope { seq, at_unix_ms: seq, stream: stream.clone(), event: posted("a", 1) })))
            .collect();
        let encoded: Vec<Encoded<'_>> = records.iter().map(|(seq, bytes)| (*seq, &stream, bytes.as_slice())).collect();
        backend.write(&encoded[..3]).expect("first group");
        backend
            .with(|store| {
                let old: Vec<u8> = (1..=3u64).flat_map(u64::to_be_bytes).collect();
                store.streams.insert(stream_key(&stream, 1), old)?;
                Ok(())
            })
            .expect("the entry as releases before wrote it");
        backend.write(&encoded[3..]).expect("second group");
        let seqs: Vec<u64> =
            backend.read_stream_raw(&stream, 0, 6, usize::MAX).expect("read").iter().map(|r| r.0).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
        let after_two: Vec<u64> =
            backend.read_stream_raw(&stream, 2, 6, usize::MAX).expect("read").iter().map(|r| r.0).collect();
        assert_eq!(after_two, vec![3, 4, 5, 6]);
    }

    /// What a rewrite keeps: every record left, byte for byte, under its seq, read by range
    /// and by stream; the seq floor and the next seq; and nothing of what was removed.
    #[test]
    fn a_group_of_one_stream_larger_than_an_index_entry_reads_back_whole_from_anywhere() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = SledBackend::open(&dir.path().join("log"), 1 << 20).expect("backend");
        let stream = posted("a", 0).stream();
        let n = 2 * STREAM_ENTRY_SEQS_MAX as u64 + 100;
        let records: Vec<(u64, Vec<u8>)> = (1..=n)
            .map(|seq| (seq, encode(&Envelope { seq, at_unix_ms: seq, stream: stream.clone(), event: posted("a", 1) })))
            .collect();
        let encoded: Vec<Encoded<'_>> = records.iter().map(|(seq, bytes)| (*seq, &stream, bytes.as_slice())).collect();
        backend.write(&encoded).expect("one group of every record");
        backend.sync().expect("sync");
        for after in [0, STREAM_ENTRY_SEQS_MAX as u64 - 1, STREAM_ENTRY_SEQS_MAX as u64, n - 1] {
            let read = backend.read_stream_raw(&stream, after, n, usize::MAX).expect("read the stream");
            let seqs: Vec<u64> = read.iter().map(|(seq, _)| *seq).collect();
            assert_eq!(seqs, (after + 1..=n).collect::<Vec<_>>(), "after {after}");
        }
        let entries = backend.with(|store| {
            store
                .streams
                .range(stream_key(&stream, 0)..=stream_key(&stream, u64::MAX))
                .map(|item| Ok(item?))
                .collect::<Result<Vec<_>, LogError>>()
        });
        for (key, entry) in entries.expect("index") {
            let seqs = stream_entry_seqs(&key, &entry).expect("an entry reads");
            assert!(seqs.len() <= STREAM_ENTRY_SEQS_MAX, "an entry holds {} seqs", seqs.len());
        }
    }

    #[test]
    fn a_rewrite_keeps_every_record_left_and_the_seq_bookkeeping() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_dir = dir.path().join("log");
        let backend = SledBackend::open(&log_dir, 1 << 20).expect("backend");
        let streams = [posted("a", 0).stream(), posted("b", 0).stream()];
        let records: Vec<(u64, Vec<u8>)> = (1..=300u64)
            .map(|seq| {
                let at_unix_ms = seq;
                let stream = streams[seq as usize % 2].clone();
                (seq, encode(&Envelope { seq, at_unix_ms, stream, event: posted("x", seq as usize) }))
            })
            .collect();
        for group in records.chunks(7) {
            let encoded: Vec<Encoded<'_>> =
                group.iter().map(|(seq, bytes)| (*seq, &streams[*seq as usize % 2], bytes.as_slice())).collect();
            backend.write(&encoded).expect("write");
        }
        let removed: Vec<u64> = (1..=150).collect();
        assert_eq!(backend.remove(&removed).expect("remove"), 150);
        backend.reserve(400, 300).expect("reserve");
        backend.sync().expect("sync");
        let (floor, next_seq) = (backend.floor(), backend.next_seq_floor().expect("next"));

        let done = backend.rewrite().expect("rewrite");
        assert_eq!(done.records, 150);
        let left = backend.read_raw(1, u64::MAX, usize::MAX).expect("read");
        assert_eq!(left, records[150..].to_vec(), "the records left, byte for byte, under their seqs");
        for (i, stream) in streams.iter().enumerate() {
            let read = backend.read_stream_raw(stream, 0, u64::MAX, usize::MAX).expect("stream");
            let expected: Vec<Raw> = records[150..].iter().filter(|(seq, _)| *seq as usize % 2 == i).cloned().collect();
            assert_eq!(read, expected);
        }
        assert_eq!((backend.floor(), backend.next_seq_floor().expect("next")), (floor, next_seq));
        assert!(!log_dir.with_file_name("log.compact").exists() && !log_dir.with_file_name("log.old").exists());
        drop(backend);
        let reopened = SledBackend::open(&log_dir, 1 << 20).expect("reopen");
        assert_eq!(reopened.read_raw(1, u64::MAX, usize::MAX).expect("read"), records[150..].to_vec());
    }

    #[tokio::test]
    async fn a_corrupt_record_stops_opening_with_its_seq() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = EventLog::open(dir.path(), &LogConfig::default()).expect("open");
            log.append(posted("a", 1)).await.expect("append");
            log.append(posted("a", 2)).await.expect("append");
            log.close().await;
            drop(log);
            let backend = SledBackend::open(dir.path(), 1 << 20).expect("backend");
            backend.corrupt_for_test(2).expect("corrupt");
            backend.sync().expect("sync");
        }
        let err = EventLog::open(dir.path(), &LogConfig::default()).expect_err("must refuse");
        assert!(err.to_string().contains("log record 2 does not decode"), "{err}");
    }
}
