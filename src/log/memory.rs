//! A log backend in memory: for tests, and the second backend the conformance suite
//! (`log::conformance`) holds the sled one to. Nothing survives the process; within it, a
//! backend handed to a new [`EventLog`](super::EventLog) (a "restart") keeps its records and
//! floor, as a folder does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::backend::{Backend, Encoded, Raw};
use super::floor::Floor;
use super::LogError;
use crate::event::StreamId;

/// The largest record the memory backend takes: the sled backend's, so that the two refuse
/// the same appends.
const RECORD_BYTES_MAX: usize = crate::durable::VALUE_BYTES_MAX;

#[derive(Debug, Default)]
struct Records {
    by_seq: BTreeMap<u64, (StreamId, Vec<u8>)>,
    by_stream: BTreeMap<StreamId, BTreeSet<u64>>,
    /// Above every seq ever written: seqs are not reused after a removal.
    next_seq: u64,
    floor: Floor,
}

/// Records in a map, shared by clones.
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    records: Arc<Mutex<Records>>,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn records(&self) -> MutexGuard<'_, Records> {
        // Every change below is made whole under the lock: a panic elsewhere leaves it usable.
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn last(&self) -> Result<Option<Raw>, LogError> {
        Ok(self.records().by_seq.last_key_value().map(|(seq, (_, bytes))| (*seq, bytes.clone())))
    }

    fn next_seq_floor(&self) -> Result<u64, LogError> {
        Ok(self.records().next_seq.max(1))
    }

    fn floor(&self) -> Floor {
        self.records().floor
    }

    fn reserve(&self, through: u64, acked_through: u64) -> Result<(), LogError> {
        let mut records = self.records();
        if through > records.floor.reserved_through {
            let reserved_through = through.saturating_add(super::floor::SEQ_RESERVE).min(super::SEQ_MAX);
            records.floor = Floor { reserved_through, acked_through };
        }
        Ok(())
    }

    fn release(&self, head: u64) -> Result<(), LogError> {
        self.records().floor = Floor { reserved_through: head, acked_through: head };
        Ok(())
    }

    fn set_floor(&self, floor: Floor) -> Result<(), LogError> {
        self.records().floor = floor;
        Ok(())
    }

    fn write(&self, group: &[Encoded<'_>]) -> Result<(), LogError> {
        if let Some(&(seq, _, bytes)) = group.iter().find(|(_, _, bytes)| bytes.len() > RECORD_BYTES_MAX) {
            return Err(LogError::RecordTooLarge { seq, bytes: bytes.len(), max: RECORD_BYTES_MAX });
        }
        if let Some(&(seq, stream, _)) = group.iter().find(|(_, stream, _)| stream.as_str().len() > StreamId::LEN_MAX) {
            return Err(LogError::StreamTooLong { seq, bytes: stream.as_str().len(), max: StreamId::LEN_MAX });
        }
        let mut records = self.records();
        for &(seq, stream, bytes) in group {
            records.by_seq.insert(seq, (stream.clone(), bytes.to_vec()));
            records.by_stream.entry(stream.clone()).or_default().insert(seq);
            records.next_seq = records.next_seq.max(seq.saturating_add(1));
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), LogError> {
        Ok(())
    }

    fn read_raw(&self, from_seq: u64, through_seq: u64, limit: usize) -> Result<Vec<Raw>, LogError> {
        if from_seq > through_seq {
            return Ok(Vec::new());
        }
        let records = self.records();
        Ok(records
            .by_seq
            .range(from_seq..=through_seq)
            .take(limit)
            .map(|(seq, (_, bytes))| (*seq, bytes.clone()))
            .collect())
    }

    fn read_stream_raw(
        &self,
        stream: &StreamId,
        after_seq: u64,
        through_seq: u64,
        limit: usize,
    ) -> Result<Vec<Raw>, LogError> {
        let Some(from) = after_seq.checked_add(1).filter(|&from| from <= through_seq) else { return Ok(Vec::new()) };
        let records = self.records();
        let Some(seqs) = records.by_stream.get(stream) else { return Ok(Vec::new()) };
        Ok(seqs
            .range(from..=through_seq)
            .filter_map(|seq| records.by_seq.get(seq).map(|(_, bytes)| (*seq, bytes.clone())))
            .take(limit)
            .collect())
    }

    fn remove(&self, seqs: &[u64]) -> Result<u64, LogError> {
        let mut records = self.records();
        let mut removed = 0;
        for seq in seqs {
            let Some((stream, _)) = records.by_seq.remove(seq) else { continue };
            removed += 1;
            if let Some(of_stream) = records.by_stream.get_mut(&stream) {
                of_stream.remove(seq);
                if of_stream.is_empty() {
                    records.by_stream.remove(&stream);
                }
            }
        }
        Ok(removed)
    }

    fn record_bytes_max(&self) -> usize {
        RECORD_BYTES_MAX
    }

    fn available_bytes(&self) -> Option<u64> {
        None
    }
}
