//! The sled storage under the log: the trees, their keys, and the fsync that sled omits.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::LogError;
use crate::event::{decode, encode, Envelope, StreamId};

/// Tree of log records: key = seq as big-endian u64 (so byte order is seq order).
const LOG_TREE: &str = "log";
/// Stream index: key = stream length (1 byte) + stream + seq, value empty.
const STREAM_TREE: &str = "log.streams";
/// Log metadata: the next seq to assign, kept so that seqs are never reused even if the
/// newest records are ever removed (DESIGN.md, "Sequence numbers are never reused").
const META_TREE: &str = "log.meta";
const NEXT_SEQ_KEY: &[u8] = b"next_seq";

/// The sled database holding the log, and the handle used to fsync it.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    log: sled::Tree,
    streams: sled::Tree,
    meta: sled::Tree,
    /// sled's data file, opened once so that each group commit can fsync it.
    db_file: Arc<Mutex<File>>,
}

impl Store {
    /// Opens the database in `dir`, creating it if needed.
    pub fn open(dir: &Path, cache_bytes_max: u64) -> Result<Self, LogError> {
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new().path(dir).cache_capacity(cache_bytes_max).flush_every_ms(Some(1000)).open()?;
        let db_file = File::options().read(true).write(true).open(dir.join("db"))?;
        Ok(Self {
            log: db.open_tree(LOG_TREE)?,
            streams: db.open_tree(STREAM_TREE)?,
            meta: db.open_tree(META_TREE)?,
            db,
            db_file: Arc::new(Mutex::new(db_file)),
        })
    }

    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The newest record, decoded: a damaged tail is found before anything is served.
    pub fn last(&self) -> Result<Option<Envelope>, LogError> {
        match self.log.last()? {
            Some((key, value)) => Ok(Some(decode(seq_of(&key), &value)?)),
            None => Ok(None),
        }
    }

    /// The lowest seq the writer may assign next, as recorded by earlier commits.
    pub fn next_seq_floor(&self) -> Result<u64, LogError> {
        Ok(self.meta.get(NEXT_SEQ_KEY)?.map_or(1, |v| seq_of(&v)))
    }

    /// Writes one group of envelopes, their stream-index entries and the next seq in one
    /// transaction, so that a crash leaves either all of them or none.
    pub fn write(&self, envelopes: &[Envelope]) -> Result<(), LogError> {
        let mut log_batch = sled::Batch::default();
        let mut stream_batch = sled::Batch::default();
        for envelope in envelopes {
            log_batch.insert(&envelope.seq.to_be_bytes(), encode(envelope));
            stream_batch.insert(stream_key(&envelope.stream, envelope.seq), &[]);
        }
        let next_seq = envelopes.last().map_or(0, |e| e.seq + 1);
        (&self.log, &self.streams, &self.meta)
            .transaction(|(log, streams, meta)| {
                log.apply_batch(&log_batch)?;
                streams.apply_batch(&stream_batch)?;
                meta.insert(NEXT_SEQ_KEY, &next_seq.to_be_bytes())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e: TransactionError<()>| LogError::Transaction(format!("{e:?}")))
    }

    /// Makes everything written so far durable.
    ///
    /// sled's `flush` writes its buffers and, on Linux, calls `sync_file_range`, which starts
    /// write-back but neither waits for the disk's write cache nor syncs metadata (sled issue
    /// #1452). `fsync` on the data file afterwards is what makes "acknowledged" mean on disk.
    /// Records are far smaller than sled's blob threshold, so the `db` file is the only one
    /// that holds them.
    pub fn sync(&self) -> Result<(), LogError> {
        self.db.flush()?;
        let file = self.db_file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        file.sync_data()?;
        Ok(())
    }

    pub fn read_range(&self, from_seq: u64, limit: usize) -> Result<Vec<Envelope>, LogError> {
        self.log
            .range(from_seq.to_be_bytes()..)
            .take(limit)
            .map(|item| {
                let (key, value) = item?;
                Ok(decode(seq_of(&key), &value)?)
            })
            .collect()
    }

    pub fn read_stream(&self, stream: &StreamId, after_seq: u64, limit: usize) -> Result<Vec<Envelope>, LogError> {
        let Some(from) = after_seq.checked_add(1) else { return Ok(Vec::new()) };
        let start = stream_key(stream, from);
        let end = stream_key(stream, u64::MAX);
        let mut out = Vec::new();
        for item in self.streams.range(start..=end) {
            if out.len() >= limit {
                break;
            }
            let (key, _) = item?;
            let seq = seq_of(&key[key.len() - 8..]);
            // A purged stream's index entries go with its records; a missing record is skipped.
            if let Some(value) = self.log.get(seq.to_be_bytes())? {
                out.push(decode(seq, &value)?);
            }
        }
        Ok(out)
    }

    pub fn verify(&self) -> Result<u64, LogError> {
        let mut count = 0;
        for item in self.log.iter() {
            let (key, value) = item?;
            decode(seq_of(&key), &value)?;
            count += 1;
        }
        Ok(count)
    }

    /// Overwrites one record with bytes that do not decode, for tests of corruption handling.
    #[cfg(test)]
    pub fn corrupt_for_test(&self, seq: u64) -> Result<(), LogError> {
        self.log.insert(seq.to_be_bytes(), &b"\xc1not an event"[..])?;
        Ok(())
    }
}

fn stream_key(stream: &StreamId, seq: u64) -> Vec<u8> {
    let name = stream.as_str().as_bytes();
    let len = u8::try_from(name.len()).expect("stream names are bounded by RoomId::LEN_MAX and fit a byte");
    let mut key = Vec::with_capacity(1 + name.len() + 8);
    key.push(len);
    key.extend_from_slice(name);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Reads a big-endian seq key; a key of the wrong length reads as 0, which no record uses.
fn seq_of(key: &[u8]) -> u64 {
    key.try_into().map(u64::from_be_bytes).unwrap_or(0)
}
