//! How the sled log stores records: many to a value (a *pack*), keyed by the pack's first seq.
//!
//! A value of the log tree is one of:
//! - a **bare record**: one encoded envelope, as the log stored every record before issue 19
//!   (and still stores a group of one, or a record too large to pack). Its key is its seq.
//! - a **pack**: [`MARK`], a kind byte, then records as `seq (u64 BE) · length (u32 BE) · bytes`,
//!   ascending, either as they are ([`PLAIN`], a group commit's own records) or compressed
//!   whole with zstd ([`SEALED_DENSE`], written once a run of small entries holds
//!   [`RECORDS_MAX`] records or [`BYTES_MAX`] bytes; [`SEALED`] for one sealed with LZ4, as
//!   packs were before, or if zstd fails). Its key is at most its first seq.
//!
//! [`MARK`] (0xc1, `durable::squeeze`) is the one byte MessagePack never uses, so no encoded envelope starts with
//! it: a value says by its first byte which it is, and logs written before packs read as they
//! are. Every record of an entry is below the next entry's key, so the entry holding a seq is
//! the last one whose key is at or below it.

use super::backend::Raw;
use crate::durable::squeeze::{self, MARK};
/// Kind byte of a pack whose records follow as they are.
const PLAIN: u8 = 0;
/// Kind byte of a pack whose records follow LZ4-compressed (with their length before them):
/// how packs were sealed until zstd; still read.
const SEALED: u8 = 1;
/// Kind byte of a pack whose records follow zstd-compressed (one frame, stating its size).
const SEALED_DENSE: u8 = 2;
/// Records per sealed pack: a hundredth of the keys sled would otherwise hold, and a pack a
/// reader decompresses whole stays small.
pub(super) const RECORDS_MAX: usize = 64;
/// Encoded bytes per sealed pack, before compression; a record larger than this stays bare.
pub(super) const BYTES_MAX: usize = 32 * 1024;
/// The most a sealed pack may state it decompresses to: a damaged length must not make the
/// reader allocate gigabytes.
const UNPACKED_MAX: usize = 4 * BYTES_MAX;
/// Bytes before each record inside a pack: its seq and its length.
const HEAD_BYTES: usize = 12;

/// A stored value that does not read as a bare record or a pack.
#[derive(Debug, thiserror::Error)]
#[error("log entry {key} is not a record or a pack of records: {why}")]
pub struct PackError {
    /// The key the entry is stored under.
    pub key: u64,
    why: &'static str,
}

/// Whether a value is a sealed pack (nothing is added to it any more).
pub(super) fn is_sealed(value: &[u8]) -> bool {
    value.len() > 1 && value[0] == MARK && (value[1] == SEALED || value[1] == SEALED_DENSE)
}

/// The records of the entry stored under `key`, ascending.
pub(super) fn records(key: u64, value: &[u8]) -> Result<Vec<Raw>, PackError> {
    Ok(unpack(key, value)?.into_records())
}

/// An entry read once: its bytes (decompressed if it is sealed) and where each record lies in
/// them, ascending, so that a reader wanting a few of its records copies only those.
pub(super) struct Unpacked {
    bytes: Vec<u8>,
    at: Vec<(u64, std::ops::Range<usize>)>,
}

/// The entry stored under `key`, read.
pub(super) fn unpack(key: u64, value: &[u8]) -> Result<Unpacked, PackError> {
    let error = |why| PackError { key, why };
    let (bytes, from) = match value {
        [MARK, PLAIN, ..] => (value.to_vec(), 2),
        [MARK, SEALED, body @ ..] => {
            (squeeze::decompress(body, UNPACKED_MAX).map_err(|_| error("it does not decompress"))?, 0)
        }
        [MARK, SEALED_DENSE, body @ ..] => {
            (squeeze::decompress_dense(body, UNPACKED_MAX).map_err(|_| error("it does not decompress"))?, 0)
        }
        [MARK, ..] => return Err(error("unknown pack kind")),
        bare => return Ok(Unpacked { bytes: bare.to_vec(), at: vec![(key, 0..bare.len())] }),
    };
    let at = locate(&bytes, from).ok_or_else(|| error("a record runs past the pack's end"))?;
    Ok(Unpacked { bytes, at })
}

impl Unpacked {
    /// Whether `seq` is within the entry's first and last record (held, or removed from it).
    pub(super) fn spans(&self, seq: u64) -> bool {
        matches!((self.at.first(), self.at.last()), (Some((first, _)), Some((last, _))) if *first <= seq && seq <= *last)
    }

    /// The record `seq`, if the entry holds it.
    pub(super) fn get(&self, seq: u64) -> Option<&[u8]> {
        let index = self.at.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
        self.bytes.get(self.at[index].1.clone())
    }

    /// The records held, ascending, as (seq, bytes) in the entry.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.at.iter().filter_map(|(seq, range)| Some((*seq, self.bytes.get(range.clone())?)))
    }

    fn into_records(self) -> Vec<Raw> {
        self.iter().map(|(seq, bytes)| (seq, bytes.to_vec())).collect()
    }
}

/// The records, packed as they are (a group commit's own records).
pub(super) fn plain(records: &[(u64, &[u8])]) -> Vec<u8> {
    let mut out = vec![MARK, PLAIN];
    join(records, &mut out);
    out
}

/// The records, packed and compressed.
pub(super) fn sealed(records: &[(u64, &[u8])]) -> Vec<u8> {
    let mut body = Vec::with_capacity(raw_bytes(records));
    join(records, &mut body);
    match squeeze::compress_dense(&body) {
        Some(dense) => [&[MARK, SEALED_DENSE][..], &dense].concat(),
        None => [&[MARK, SEALED][..], &squeeze::compress(&body)].concat(),
    }
}

/// A run of records (from [`runs`]) as one entry under its first seq: a lone record bare,
/// more as a sealed or a plain pack.
pub(super) fn entry(run: &[(u64, &[u8])], seal: bool) -> Vec<u8> {
    match run {
        [(_, bare)] => bare.to_vec(),
        _ if seal => sealed(run),
        _ => plain(run),
    }
}

/// The value storing `records` as an entry of the same kind as `was` (after a removal).
pub(super) fn like(was: &[u8], records: &[(u64, &[u8])]) -> Vec<u8> {
    match records {
        [(_, bare)] if was.first() != Some(&MARK) => bare.to_vec(),
        _ if is_sealed(was) => sealed(records),
        _ => plain(records),
    }
}

/// Bytes of records as a pack holds them, before compression.
pub(super) fn raw_bytes(records: &[(u64, &[u8])]) -> usize {
    records.iter().map(|(_, bytes)| HEAD_BYTES + bytes.len()).sum()
}

/// Splits `records` (ascending) into runs that each make one pack within [`RECORDS_MAX`] and
/// [`BYTES_MAX`]; a record too large for any pack is a run of its own, to be stored bare.
pub(super) fn runs<'a, 'b>(records: &'b [(u64, &'a [u8])]) -> Vec<&'b [(u64, &'a [u8])]> {
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (_, record)) in records.iter().enumerate() {
        let size = HEAD_BYTES + record.len();
        if i > start && (i - start >= RECORDS_MAX || bytes + size > BYTES_MAX) {
            runs.push(&records[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < records.len() {
        runs.push(&records[start..]);
    }
    runs
}

fn join(records: &[(u64, &[u8])], out: &mut Vec<u8>) {
    for (seq, bytes) in records {
        out.extend_from_slice(&seq.to_be_bytes());
        // A record is at most `VALUE_BYTES_MAX` (80 KiB): its length fits in a u32.
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
}

/// Where each record of a pack's records (from `bytes[from..]`) lies: its seq and its range.
fn locate(bytes: &[u8], mut from: usize) -> Option<Vec<(u64, std::ops::Range<usize>)>> {
    let mut out = Vec::new();
    while from < bytes.len() {
        let seq = u64::from_be_bytes(bytes.get(from..from + 8)?.try_into().ok()?);
        let len = u32::from_be_bytes(bytes.get(from + 8..from + HEAD_BYTES)?.try_into().ok()?) as usize;
        let start = from + HEAD_BYTES;
        let end = start.checked_add(len).filter(|&end| end <= bytes.len())?;
        out.push((seq, start..end));
        from = end;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_bare_record_reads_as_itself_under_its_key() {
        let event = crate::log::conformance::posted("a", 1);
        let envelope = crate::event::Envelope { seq: 7, at_unix_ms: 1, stream: event.stream(), event };
        let bare = crate::event::encode(&envelope);
        assert_ne!(bare[0], MARK, "an encoded envelope never starts with the pack mark");
        assert_eq!(records(7, &bare).expect("bare"), vec![(7, bare.clone())]);
    }

    #[test]
    fn a_pack_sealed_with_lz4_before_zstd_still_reads() {
        let records: Vec<(u64, Vec<u8>)> = (10..20).map(|s| (s, format!("record {s}").into_bytes())).collect();
        let borrowed: Vec<(u64, &[u8])> = records.iter().map(|(s, b)| (*s, b.as_slice())).collect();
        let mut body = Vec::new();
        join(&borrowed, &mut body);
        let lz4 = [&[MARK, SEALED][..], &squeeze::compress(&body)].concat();
        let dense = sealed(&borrowed);
        assert_eq!(dense[1], SEALED_DENSE, "sealed with zstd now");
        for value in [lz4, dense] {
            assert!(is_sealed(&value));
            assert_eq!(records_of(10, &value), records);
            assert_eq!(unpack(10, &value).expect("unpacks").get(15), Some(&b"record 15"[..]));
        }
    }

    #[test]
    fn a_damaged_pack_is_an_error_naming_its_key() {
        let records_in: Vec<(u64, &[u8])> = vec![(3, b"abc"), (5, b"defgh")];
        let mut damaged = plain(&records_in);
        damaged.truncate(damaged.len() - 2);
        let err = records(3, &damaged).expect_err("truncated");
        assert!(err.to_string().starts_with("log entry 3 is not a record"), "{err}");
        assert!(records(3, &[MARK, SEALED, 9, 9]).is_err());
        assert!(records(3, &[MARK, SEALED_DENSE, 9, 9]).is_err());
        assert!(records(3, &[MARK, 7]).is_err());
    }

    #[test]
    fn runs_respect_both_limits_and_leave_a_large_record_alone() {
        let big = vec![0u8; BYTES_MAX];
        let small = [1u8; 100];
        let mut records: Vec<(u64, &[u8])> = (1..=150).map(|seq| (seq, &small[..])).collect();
        records.insert(70, (1000, &big[..]));
        let runs = runs(&records);
        assert!(runs.iter().all(|run| run.len() <= RECORDS_MAX));
        assert!(runs.iter().all(|run| run.len() == 1 || raw_bytes(run) <= BYTES_MAX));
        assert!(runs.iter().any(|run| run.len() == 1 && run[0].1.len() == BYTES_MAX));
        assert_eq!(runs.iter().map(|run| run.len()).sum::<usize>(), 151);
    }

    proptest! {
        #[test]
        fn packs_give_back_their_records(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..80),
            first in 1u64..1_000_000,
        ) {
            let records: Vec<(u64, &[u8])> =
                bodies.iter().enumerate().map(|(i, b)| (first + 2 * i as u64, b.as_slice())).collect();
            let want: Vec<Raw> = records.iter().map(|(s, b)| (*s, b.to_vec())).collect();
            prop_assert_eq!(records_of(first, &plain(&records)), want.clone());
            let sealed = sealed(&records);
            prop_assert!(is_sealed(&sealed));
            prop_assert_eq!(records_of(first, &sealed), want);
        }

        #[test]
        fn arbitrary_packs_never_panic_the_reader(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut value = vec![MARK];
            value.extend_from_slice(&bytes);
            let _ = records(1, &value);
        }
    }

    fn records_of(key: u64, value: &[u8]) -> Vec<Raw> {
        records(key, value).expect("reads")
    }
}
