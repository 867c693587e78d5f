//! The chat-history projection: room → messages by seq, and per-room summaries.
//!
//! Messages are stored in pages of up to [`PAGE_MESSAGES_MAX`] per room, not one sled key each:
//! sled 0.34 costs about 5 µs per key written on these machines, which would cap a rebuild
//! near 200,000 messages/s; a page amortises that over many messages. Everything lives in one
//! sled tree so that one `apply_batch` writes the state and the checkpoint together. Keys:
//!
//! | key | value |
//! |---|---|
//! | `c` | checkpoint: last applied seq (u64 BE) |
//! | `v` | the format of the pages: [`FORMAT`] |
//! | `m` room-len room first-seq | a page: up to 64 [`KeptMessage`]s and 6 KiB of their authors and client ids, ascending |
//! | `r` room | a [`RoomSummary`] |
//! | `a` room-len room seq | an edit or deletion (an [`Amendment`] without the edit's text, which stays in the log), kept so that a client resuming from an older seq is told |
//!
//! A page's key is at most the seq of each of its messages, and every message of a page is
//! below the next page's key. A page keeps no message's text: the text stays in the log, in the
//! post or its newest edit, and reads take it from the room's stream ([`RoomRecords`]), so that
//! a message's text is on disk once, not once in the log and again in the history (issue 19).
//! The state depends only on the events, not on how they were batched, so a rebuild gives
//! byte-equal state (DESIGN.md invariant 3).

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::tree::{self, CHECKPOINT_KEY};
use super::{Projection, ProjectionError};
use crate::durable::squeeze;
use crate::event::Removal;
use crate::event::{Envelope, Event, MessagePosted, RoomId};
use crate::log::EventLog;
use crate::message::{Amendment, KeptMessage, StoredMessage};

const TREE: &str = "proj.history";
/// Messages per page: large enough to amortise sled's per-key cost, small enough that
/// appending to a page at low traffic rewrites only a few KiB.
pub const PAGE_MESSAGES_MAX: usize = 64;
/// Bytes of what a page keeps of its messages (authors and client ids): a page closes before it
/// would pass this, so that a page, even of long client ids, stays under the state database's
/// value bound (`durable::STATE`, 10 KiB) and never becomes one of sled's unsynced blob files
/// (issue 18). 64 messages with client ids of the default limit (128 bytes) pass it: such a
/// room's pages close at about 45 messages.
pub const PAGE_BYTES_MAX: u64 = 6 * 1024;
/// The format of the pages this build writes. A tree of another format (1: pages that held
/// each message's text, before issue 19 moved it out; 2: pages in LZ4, amendments with the
/// edit's text) is rebuilt from the log at start.
pub const FORMAT: u8 = 3;
/// The key under which the tree records its [`FORMAT`].
pub use super::tree::FORMAT_KEY;

pub use super::Entry;

/// What the room list shows of a room.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSummary {
    /// Messages currently kept.
    pub message_count: u64,
    /// Seq of the newest message (0 if none yet).
    pub last_seq: u64,
    /// Time of the newest message, ms since the Unix epoch.
    pub last_at_unix_ms: u64,
    /// Retention removed every message up to and including this seq (0: nothing removed).
    pub removed_through_seq: u64,
    /// The text the kept messages store ([`StoredMessage::stored_bytes`]), summed.
    #[serde(default)]
    pub message_bytes: u64,
}

/// Read access to the history; cheap to clone. Reads see what the projection has applied so
/// far, which trails the log head by the time one group commit takes to apply.
#[derive(Debug, Clone)]
pub struct History {
    tree: sled::Tree,
    records: Arc<dyn RoomRecords>,
}

/// Where the history reads the texts its pages point to: a room's records in the log.
pub trait RoomRecords: Send + Sync + std::fmt::Debug {
    /// Up to `limit` records of `room`'s stream with a seq above `after`, ascending.
    fn room_records(&self, room: &RoomId, after: u64, limit: usize) -> Result<Vec<Envelope>, ProjectionError>;
}

impl RoomRecords for EventLog {
    fn room_records(&self, room: &RoomId, after: u64, limit: usize) -> Result<Vec<Envelope>, ProjectionError> {
        Ok(self.read_stream_blocking(&crate::event::StreamId::room(room), after, limit)?)
    }
}

/// The writing side, owned by the projection runner.
#[derive(Debug)]
pub struct HistoryProjection {
    tree: sled::Tree,
    /// Why the tree cannot be read, when it was written in another format (read once, at
    /// open); cleared by a reset.
    outdated: Option<String>,
}

/// Opens the history tree in `db`: the reading handle, which reads texts from `records` (the
/// log), and the projection that writes it.
pub fn open(
    db: &crate::state::StateDb,
    records: Arc<dyn RoomRecords>,
) -> Result<(History, HistoryProjection), ProjectionError> {
    let projection = projection(db)?;
    Ok((History { tree: projection.tree.clone(), records }, projection))
}

/// Opens the history tree in `db` for writing only (a rebuild, a check of its checkpoint).
pub fn projection(db: &crate::state::StateDb) -> Result<HistoryProjection, ProjectionError> {
    let tree = db.open_tree(TREE)?;
    let outdated = tree::outdated(&tree, "history pages", FORMAT, "1 (each message's text kept)")?;
    Ok(HistoryProjection { tree, outdated })
}

type Page = Vec<KeptMessage>;

/// An edit or deletion as the tree keeps it: an edit's new text stays in its record in the log
/// (up to 64 KiB, over the state database's value bound) and is read from there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct KeptAmendment {
    seq: u64,
    at_unix_ms: u64,
    target: u64,
    by: String,
    /// An edit (its text in the record at `seq`); `false`: a deletion.
    edited: bool,
}

/// Texts read per call from a room's stream, at most.
const TEXTS_READ_MAX: usize = 4_096;

impl History {
    /// The newest `limit` messages of a room, oldest first.
    pub fn recent(&self, room: &RoomId, limit: usize) -> Result<Vec<StoredMessage>, ProjectionError> {
        self.before(room, u64::MAX, limit)
    }

    /// The newest `limit` messages of a room without their texts, oldest first.
    pub fn recent_kept(&self, room: &RoomId, limit: usize) -> Result<Vec<KeptMessage>, ProjectionError> {
        self.kept_before(room, u64::MAX, limit)
    }

    /// Up to `limit` messages with seq < `before_seq`, oldest first.
    pub fn before(&self, room: &RoomId, before_seq: u64, limit: usize) -> Result<Vec<StoredMessage>, ProjectionError> {
        let kept = self.kept_before(room, before_seq, limit)?;
        self.with_texts(room, kept)
    }

    /// Up to `limit` messages with seq > `after_seq`, oldest first.
    pub fn after(&self, room: &RoomId, after_seq: u64, limit: usize) -> Result<Vec<StoredMessage>, ProjectionError> {
        let kept = self.kept_after(room, after_seq, limit)?;
        self.with_texts(room, kept)
    }

    /// One message by seq, if the room still has it.
    pub fn get(&self, room: &RoomId, seq: u64) -> Result<Option<StoredMessage>, ProjectionError> {
        let kept = page_holding(&self.tree, room, seq)?.and_then(|(_, page)| page.into_iter().find(|m| m.seq == seq));
        Ok(self.with_texts(room, kept.into_iter().collect())?.pop())
    }

    /// Runs `read` on a blocking thread, for the async callers: a read that takes texts from the
    /// log decompresses the packs that hold them (a scrollback of 200 messages, a room's ring of
    /// 1,000), which is no work for the threads that serve connections.
    pub async fn off_async<T: Send + 'static>(
        &self,
        read: impl FnOnce(&History) -> Result<T, ProjectionError> + Send + 'static,
    ) -> Result<T, ProjectionError> {
        let history = self.clone();
        tokio::task::spawn_blocking(move || read(&history))
            .await
            .map_err(|e| ProjectionError::Task(format!("reading the history: {e}")))?
    }

    /// `kept` (messages of `room`, ascending) with their texts, read from the room's records in
    /// the log. A message whose record is gone is left out: the log removes records only once
    /// a retention cut supersedes them, and this history then drops them too when it applies it.
    pub fn with_texts(&self, room: &RoomId, kept: Vec<KeptMessage>) -> Result<Vec<StoredMessage>, ProjectionError> {
        let texts = self.room_records_at(room, kept.iter().map(KeptMessage::text_seq).collect())?;
        Ok(kept
            .into_iter()
            .filter_map(|message| {
                let record = texts.get(&message.text_seq())?;
                message.with_text(record)
            })
            .collect())
    }

    /// The room's records with the seqs `wanted` (in any order), read from the room's stream
    /// in the log; a seq the log no longer holds is missing from the map.
    fn room_records_at(&self, room: &RoomId, mut wanted: Vec<u64>) -> Result<HashMap<u64, Envelope>, ProjectionError> {
        wanted.sort_unstable();
        wanted.dedup();
        let (Some(&first), Some(&last)) = (wanted.first(), wanted.last()) else { return Ok(HashMap::new()) };
        let mut records: HashMap<u64, Envelope> = HashMap::with_capacity(wanted.len());
        let mut after = first.saturating_sub(1);
        while after < last {
            let left = wanted.len() - records.len();
            let read = self.records.room_records(room, after, left.clamp(64, TEXTS_READ_MAX))?;
            let Some(end) = read.last().map(|record| record.seq) else { break };
            records.extend(read.into_iter().filter(|r| wanted.binary_search(&r.seq).is_ok()).map(|r| (r.seq, r)));
            after = end;
        }
        Ok(records)
    }

    /// Up to `limit` messages with seq < `before_seq` without their texts, oldest first.
    pub fn kept_before(
        &self,
        room: &RoomId,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<KeptMessage>, ProjectionError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for item in self.tree.range(page_key(room, 0)..page_key(room, before_seq)).rev() {
            let page: Page = decode_page(&item?.1)?;
            for message in page.into_iter().rev().filter(|m| m.seq < before_seq) {
                out.push(message);
                if out.len() == limit {
                    out.reverse();
                    return Ok(out);
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Up to `limit` messages with seq > `after_seq` without their texts, oldest first: what
    /// retention walks.
    pub fn kept_after(&self, room: &RoomId, after_seq: u64, limit: usize) -> Result<Vec<KeptMessage>, ProjectionError> {
        let mut out = Vec::new();
        let Some(from) = after_seq.checked_add(1) else { return Ok(out) };
        // The page holding `from` may start before it: begin at the last page at or below.
        let start = match self.tree.range(page_key(room, 0)..=page_key(room, from)).next_back() {
            Some(item) => item?.0.to_vec(),
            None => page_key(room, from),
        };
        for item in self.tree.range(start..=page_key(room, u64::MAX)) {
            let page: Page = decode_page(&item?.1)?;
            for message in page.into_iter().filter(|m| m.seq >= from) {
                if out.len() == limit {
                    return Ok(out);
                }
                out.push(message);
            }
        }
        Ok(out)
    }

    /// Edits and deletions of a room with a seq in `after < seq <= through`, oldest first.
    pub fn amendments(&self, room: &RoomId, after: u64, through: u64) -> Result<Vec<Amendment>, ProjectionError> {
        let Some(from) = after.checked_add(1) else { return Ok(Vec::new()) };
        if from > through {
            return Ok(Vec::new());
        }
        let kept: Vec<KeptAmendment> = self
            .tree
            .range(amendment_key(room, from)..=amendment_key(room, through))
            .map(|item| decode_value(&item?.1))
            .collect::<Result<_, _>>()?;
        let edits = self.room_records_at(room, kept.iter().filter(|a| a.edited).map(|a| a.seq).collect())?;
        Ok(kept
            .into_iter()
            .filter_map(|a| {
                let body = match edits.get(&a.seq).map(|record| &record.event) {
                    _ if !a.edited => None,
                    Some(Event::MessageEdited(edit)) => Some(edit.body.clone()),
                    // The edit's record is gone (a retention cut this projection has not
                    // applied yet): the amendment goes with it, not as a deletion.
                    _ => return None,
                };
                Some(Amendment { seq: a.seq, at_unix_ms: a.at_unix_ms, target: a.target, by: a.by, body })
            })
            .collect())
    }

    /// A room's summary; `None` for a room that never had a message.
    pub fn summary(&self, room: &RoomId) -> Result<Option<RoomSummary>, ProjectionError> {
        summary_in(&self.tree, room)
    }

    /// Every room with its summary, in name order.
    pub fn rooms(&self) -> Result<Vec<(RoomId, RoomSummary)>, ProjectionError> {
        self.tree
            .scan_prefix(b"r")
            .map(|item| {
                let (key, value) = item?;
                let name = String::from_utf8_lossy(&key[1..]).into_owned();
                // Keys are written only from checked room names.
                let room = RoomId::parse(&name).map_err(|e| ProjectionError::Task(e.to_string()))?;
                Ok((room, decode_value(&value)?))
            })
            .collect()
    }

    /// The seq of the last event applied.
    pub fn checkpoint(&self) -> Result<u64, ProjectionError> {
        tree::checkpoint(&self.tree)
    }

    /// Every entry of the tree except the checkpoint, for comparing a rebuilt projection with
    /// the live one.
    pub fn dump(&self) -> Result<Vec<Entry>, ProjectionError> {
        tree::dump(&self.tree)
    }
}

/// The page of `room` that holds `seq` if the room has it: the last page whose key is at or
/// below it (with `u64::MAX`, the room's newest page), with its key.
fn page_holding(tree: &sled::Tree, room: &RoomId, seq: u64) -> Result<Option<(Vec<u8>, Page)>, ProjectionError> {
    match tree.range(page_key(room, 0)..=page_key(room, seq)).next_back() {
        Some(item) => {
            let (key, value) = item?;
            Ok(Some((key.to_vec(), decode_page(&value)?)))
        }
        None => Ok(None),
    }
}

fn summary_in(tree: &sled::Tree, room: &RoomId) -> Result<Option<RoomSummary>, ProjectionError> {
    tree.get(summary_key(room))?.map(|v| decode_value(&v)).transpose()
}

impl Projection for HistoryProjection {
    fn name(&self) -> &'static str {
        crate::projection::Kind::History.name()
    }

    /// The checkpoint, or an error for pages of another format, which start-up answers by
    /// rebuilding the history from the log.
    fn checkpoint(&self) -> Result<u64, ProjectionError> {
        if let Some(why) = &self.outdated {
            return Err(ProjectionError::Outdated(why.clone()));
        }
        tree::checkpoint(&self.tree)
    }

    fn apply(&mut self, batch: &[Envelope]) -> Result<(), ProjectionError> {
        let mut write = Pending::default();
        for envelope in batch {
            match &envelope.event {
                Event::MessagePosted(posted) => self.posted(&mut write, envelope, posted)?,
                other if other.removal().is_some() => {
                    // A removal reads and rewrites pages, so it must see what this batch posted,
                    // and what comes after it must see its effect: it is written on its own,
                    // between what precedes and what follows it.
                    self.commit(std::mem::take(&mut write), envelope.seq - 1)?;
                    let mut change = Pending::default();
                    match other.removal() {
                        Some(Removal::Through { room, through_seq }) => self.expired(&mut change, room, through_seq)?,
                        Some(Removal::Message { room, seq }) => self.amended(&mut change, envelope, room, seq)?,
                        None => {}
                    }
                    self.commit(change, envelope.seq)?;
                }
                _ => {} // not about messages
            }
        }
        match batch.last() {
            Some(last) => self.commit(write, last.seq),
            None => Ok(()),
        }
    }

    fn reset(&mut self) -> Result<(), ProjectionError> {
        tree::reset_to(&self.tree, FORMAT)?;
        self.outdated = None;
        Ok(())
    }
}

/// Writes of one batch, gathered before the atomic apply. The open (newest) page and the
/// summary of each room are read once per batch and written once.
#[derive(Default)]
struct Pending {
    batch: sled::Batch,
    open_pages: HashMap<RoomId, (Vec<u8>, Page)>,
    summaries: HashMap<RoomId, RoomSummary>,
}

impl HistoryProjection {
    fn summary<'a>(&self, write: &'a mut Pending, room: &RoomId) -> Result<&'a mut RoomSummary, ProjectionError> {
        if !write.summaries.contains_key(room) {
            let stored = summary_in(&self.tree, room)?.unwrap_or_default();
            write.summaries.insert(room.clone(), stored);
        }
        Ok(write.summaries.get_mut(room).expect("inserted just above"))
    }

    fn posted(&self, write: &mut Pending, envelope: &Envelope, posted: &MessagePosted) -> Result<(), ProjectionError> {
        let message = KeptMessage::posted(envelope.seq, envelope.at_unix_ms, posted);
        if !write.open_pages.contains_key(&posted.room) {
            let last = page_holding(&self.tree, &posted.room, u64::MAX)?;
            let page = last.unwrap_or_else(|| (page_key(&posted.room, envelope.seq), Vec::new()));
            write.open_pages.insert(posted.room.clone(), page);
        }
        let (bytes, kept_bytes) = (message.stored_bytes(), page_bytes_of(&message));
        let (key, page) = write.open_pages.get_mut(&posted.room).expect("inserted just above");
        if !page.is_empty() && (page.len() >= PAGE_MESSAGES_MAX || page_bytes(page) + kept_bytes > PAGE_BYTES_MAX) {
            let full = std::mem::take(page);
            let full_key = std::mem::replace(key, page_key(&posted.room, envelope.seq));
            write.batch.insert(full_key, encode_page(&full));
        }
        page.push(message);
        let summary = self.summary(write, &posted.room)?;
        summary.message_count += 1;
        summary.message_bytes += bytes;
        summary.last_seq = envelope.seq;
        summary.last_at_unix_ms = envelope.at_unix_ms;
        Ok(())
    }

    /// Applies an edit or a deletion (`envelope`) of message `seq`, and keeps the amendment.
    fn amended(
        &self,
        write: &mut Pending,
        envelope: &Envelope,
        room: &RoomId,
        seq: u64,
    ) -> Result<(), ProjectionError> {
        let Some(amendment) = Amendment::of(envelope) else { return Ok(()) };
        let Some((key, mut page)) = page_holding(&self.tree, room, seq)? else { return Ok(()) };
        let Some(index) = page.iter().position(|m| m.seq == seq) else { return Ok(()) };
        let bytes_before = page[index].stored_bytes();
        match &amendment.body {
            Some(body) => {
                page[index].body_bytes = body.len() as u64;
                page[index].edit = Some((envelope.seq, envelope.at_unix_ms));
                let bytes_after = page[index].stored_bytes();
                write.batch.insert(key, encode_page(&page));
                let summary = self.summary(write, room)?;
                summary.message_bytes = (summary.message_bytes + bytes_after).saturating_sub(bytes_before);
            }
            None => {
                page.remove(index);
                if page.is_empty() {
                    write.batch.remove(key);
                } else {
                    write.batch.insert(key, encode_page(&page));
                }
                let summary = self.summary(write, room)?;
                summary.message_count = summary.message_count.saturating_sub(1);
                summary.message_bytes = summary.message_bytes.saturating_sub(bytes_before);
            }
        }
        let kept = KeptAmendment {
            seq: amendment.seq,
            at_unix_ms: amendment.at_unix_ms,
            target: amendment.target,
            by: amendment.by,
            edited: amendment.body.is_some(),
        };
        write.batch.insert(amendment_key(room, envelope.seq), encode_value(&kept));
        Ok(())
    }

    fn expired(&self, write: &mut Pending, room: &RoomId, through_seq: u64) -> Result<(), ProjectionError> {
        let (mut removed, mut removed_bytes) = (0u64, 0u64);
        for item in self.tree.range(amendment_key(room, 0)..=amendment_key(room, through_seq)) {
            write.batch.remove(item?.0);
        }
        for item in self.tree.range(page_key(room, 0)..=page_key(room, through_seq)) {
            let (key, value) = item?;
            let mut page: Page = decode_page(&value)?;
            let before = page.len();
            removed_bytes += page.iter().filter(|m| m.seq <= through_seq).map(KeptMessage::stored_bytes).sum::<u64>();
            page.retain(|m| m.seq > through_seq);
            removed += (before - page.len()) as u64;
            if page.is_empty() {
                write.batch.remove(key);
            } else if page.len() < before {
                // The key stays: it is still at most the seq of every message left.
                write.batch.insert(key, encode_page(&page));
            }
        }
        let summary = self.summary(write, room)?;
        summary.message_count = summary.message_count.saturating_sub(removed);
        summary.message_bytes = summary.message_bytes.saturating_sub(removed_bytes);
        summary.removed_through_seq = summary.removed_through_seq.max(through_seq);
        if summary.message_count == 0 {
            // Nothing is left to be the newest message: the room reads as a log compacted
            // without the removed messages' events would make it.
            (summary.last_seq, summary.last_at_unix_ms) = (0, 0);
        }
        Ok(())
    }

    fn commit(&self, mut write: Pending, checkpoint: u64) -> Result<(), ProjectionError> {
        if write.open_pages.is_empty() && write.summaries.is_empty() {
            // Nothing about messages (every change of a page goes with its room's summary).
            return tree::advance(&self.tree, Some(checkpoint));
        }
        for (key, page) in write.open_pages.values() {
            write.batch.insert(key.as_slice(), encode_page(page));
        }
        for (room, summary) in &write.summaries {
            write.batch.insert(summary_key(room), encode_value(summary));
        }
        write.batch.insert(CHECKPOINT_KEY, &checkpoint.to_be_bytes());
        self.tree.apply_batch(write.batch)?;
        Ok(())
    }
}

/// What a page keeps of its messages, in bytes: their authors and client ids.
fn page_bytes(page: &Page) -> u64 {
    page.iter().map(page_bytes_of).sum()
}

fn page_bytes_of(message: &KeptMessage) -> u64 {
    (message.author.len() + message.client_id.len()) as u64
}

fn page_key(room: &RoomId, seq: u64) -> Vec<u8> {
    let name = room.as_str().as_bytes();
    let mut key = Vec::with_capacity(2 + name.len() + 8);
    key.push(b'm');
    key.push(name.len() as u8);
    key.extend_from_slice(name);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn amendment_key(room: &RoomId, seq: u64) -> Vec<u8> {
    let mut key = page_key(room, seq);
    key[0] = b'a';
    key
}

fn summary_key(room: &RoomId) -> Vec<u8> {
    let mut key = vec![b'r'];
    key.extend_from_slice(room.as_str().as_bytes());
    key
}

/// Kind byte (after [`squeeze::MARK`]) of a page compressed with zstd: 8.9 MB for the 1M
/// corpus's pages where LZ4 took 15.1 MB, for 2.8 times LZ4's time (0.17 s a million
/// messages; a history rebuild of the corpus was as fast, 1.24-1.31M events/s against
/// 1.19-1.33M, three runs each).
const PAGE_DENSE: u8 = 2;
/// Kind byte of a page compressed with LZ4, if zstd failed.
const PAGE_LZ4: u8 = 1;

/// A page as stored: what it keeps of its messages in MessagePack, compressed
/// (`durable::squeeze`): the fields every message repeats (the high bytes of seqs and times, an
/// author's name) compress well, and a page is a few KiB, so compressing it costs little.
fn encode_page(page: &Page) -> Vec<u8> {
    let plain = encode_value(page);
    match squeeze::compress_dense(&plain) {
        Some(dense) => [&[squeeze::MARK, PAGE_DENSE][..], &dense].concat(),
        None => [&[squeeze::MARK, PAGE_LZ4][..], &squeeze::compress(&plain)].concat(),
    }
}

/// A page as [`encode_page`] stored it (a tree of [`FORMAT`]: older ones are rebuilt first).
fn decode_page(bytes: &[u8]) -> Result<Page, ProjectionError> {
    let max = 2 * crate::durable::STATE.value_bytes_max;
    let plain = match bytes {
        [squeeze::MARK, PAGE_DENSE, compressed @ ..] => squeeze::decompress_dense(compressed, max),
        [squeeze::MARK, PAGE_LZ4, compressed @ ..] => squeeze::decompress(compressed, max),
        _ => return Err(ProjectionError::Task("history page of an unknown kind: written by an earlier format".into())),
    }
    .map_err(|e| ProjectionError::Task(format!("history page does not decompress: {e}")))?;
    decode_value(&plain)
}

fn encode_value<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec(value).expect("projection values are plain structs and always encode")
}

fn decode_value<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ProjectionError> {
    rmp_serde::from_slice(bytes).map_err(|e| ProjectionError::Task(format!("history value does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{MessageDeleted, MessageEdited, MessagesExpired, StreamId};

    fn room(name: &str) -> RoomId {
        RoomId::parse(name).expect("valid test room")
    }

    fn posted(seq: u64, room_name: &str, client_id: &str) -> Envelope {
        let room = room(room_name);
        Envelope {
            seq,
            at_unix_ms: 1_000 + seq,
            stream: StreamId::room(&room),
            event: Event::MessagePosted(MessagePosted {
                room,
                author: "ann".into(),
                client_id: client_id.into(),
                body: format!("hello {seq}"),
            }),
        }
    }

    /// The largest page the projection can write: 64 messages whose authors and client ids
    /// (random, so they do not compress) fill the page's byte bound, every number at its
    /// widest. It must fit the state database's value bound (`durable::STATE`), or sled could
    /// write it to an unsynced blob file.
    #[test]
    fn the_largest_page_fits_the_state_databases_value_bound() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut random_text = |len: usize| -> String {
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"[(x % 64) as usize])
                })
                .collect()
        };
        let each = (PAGE_BYTES_MAX as usize) / PAGE_MESSAGES_MAX;
        let page: Page = (0..PAGE_MESSAGES_MAX as u64)
            .map(|n| KeptMessage {
                seq: u64::MAX - 2 * n,
                at_unix_ms: u64::MAX - n,
                author: random_text(64),
                client_id: random_text(each - 64),
                body_bytes: u64::MAX,
                edit: Some((u64::MAX - 2 * n - 1, u64::MAX)),
            })
            .collect();
        assert_eq!(page_bytes(&page), PAGE_BYTES_MAX, "the page is at its byte bound");
        let stored = encode_page(&page).len();
        assert!(
            stored <= crate::durable::STATE.value_bytes_max,
            "{stored} bytes, over {}",
            crate::durable::STATE.value_bytes_max
        );
    }

    fn expired(seq: u64, room_name: &str, through_seq: u64) -> Envelope {
        let room = room(room_name);
        Envelope {
            seq,
            at_unix_ms: 1_000 + seq,
            stream: StreamId::room(&room),
            event: Event::MessagesExpired(MessagesExpired { room, through_seq, policy: "max_count=2".into() }),
        }
    }

    fn amended(seq: u64, room_name: &str, target: u64, edit: bool) -> Envelope {
        let room = room(room_name);
        let event = if edit {
            Event::MessageEdited(MessageEdited {
                room: room.clone(),
                seq: target,
                author: "ann".into(),
                client_id: format!("c{target}"),
                posted_at_unix_ms: 1_000 + target,
                edited_by: "ann".into(),
                body: format!("edited by {seq}"),
            })
        } else {
            Event::MessageDeleted(MessageDeleted {
                room: room.clone(),
                seq: target,
                deleted_by: "ann".into(),
                reason: "deleted by its author".into(),
            })
        };
        Envelope { seq, at_unix_ms: 1_000 + seq, stream: StreamId::room(&room), event }
    }

    #[test]
    fn given_an_edit_and_a_deletion_then_history_reads_the_new_text_and_keeps_both_amendments() {
        let (history, mut projection) = fresh();
        let batch = vec![posted(1, "a", "x"), posted(2, "a", "y"), amended(3, "a", 1, true), amended(4, "a", 2, false)];
        projection.apply(&batch).expect("apply");
        let left = history.recent(&room("a"), 10).expect("recent");
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].body.as_str(), left[0].edited_at_unix_ms), ("edited by 3", Some(1_003)));
        assert_eq!(history.get(&room("a"), 2).expect("get"), None);
        assert_eq!(history.summary(&room("a")).expect("summary").expect("room").message_count, 1);
        let amendments = history.amendments(&room("a"), 0, u64::MAX).expect("amendments");
        let targets: Vec<_> = amendments.iter().map(|a| (a.seq, a.target, a.body.as_deref())).collect();
        assert_eq!(targets, vec![(3, 1, Some("edited by 3")), (4, 2, None)]);
        projection.apply(&[expired(5, "a", 4)]).expect("expire");
        assert!(history.amendments(&room("a"), 0, u64::MAX).expect("amendments").is_empty(), "cut with them");
    }

    /// The records a test applied, as the log would give them to the history.
    #[derive(Debug, Default)]
    struct Applied(std::sync::Mutex<Vec<Envelope>>);

    impl RoomRecords for Applied {
        fn room_records(&self, room: &RoomId, after: u64, limit: usize) -> Result<Vec<Envelope>, ProjectionError> {
            let applied = self.0.lock().map_err(|e| ProjectionError::Task(e.to_string()))?;
            let stream = StreamId::room(room);
            Ok(applied.iter().filter(|e| e.stream == stream && e.seq > after).take(limit).cloned().collect())
        }
    }

    /// The projection of a test, keeping what it applies for the history's reads.
    struct Tested {
        projection: HistoryProjection,
        applied: Arc<Applied>,
    }

    impl Tested {
        fn apply(&mut self, batch: &[Envelope]) -> Result<(), ProjectionError> {
            self.applied.0.lock().expect("not poisoned").extend_from_slice(batch);
            self.projection.apply(batch)
        }
    }

    fn fresh() -> (History, Tested) {
        let db = crate::state::StateDb::temporary().expect("temporary store");
        let applied = Arc::new(Applied::default());
        let (history, projection) = open(&db, applied.clone()).expect("open history");
        (history, Tested { projection, applied })
    }

    #[test]
    fn given_a_long_message_then_the_history_keeps_no_copy_of_its_text_and_reads_it_from_the_log() {
        let (history, mut projection) = fresh();
        // 4,000 characters that do not compress: a copy of them could not hide in a page.
        let text: String = (0..200u32).map(|n| blake3::hash(&n.to_le_bytes()).to_hex()[..20].to_owned()).collect();
        let mut post = posted(1, "a", "x");
        if let Event::MessagePosted(p) = &mut post.event {
            p.body = text.clone();
        }
        projection.apply(&[post, posted(2, "a", "y")]).expect("apply");
        let kept: usize = history.dump().expect("dump").iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(kept < 400, "the history holds {kept} bytes for a {}-byte text", text.len());
        let read = history.recent(&room("a"), 10).expect("recent");
        assert_eq!(read.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), vec![text.as_str(), "hello 2"]);
        let summary = history.summary(&room("a")).expect("summary").expect("room");
        assert_eq!(summary.message_bytes, read.iter().map(StoredMessage::stored_bytes).sum::<u64>());
    }

    /// An edit to the longest text keeps its text in the log only: the amendment the history
    /// keeps stays far under the state database's value bound, and reads give the whole text.
    /// An edit whose record the log removed (a cut not yet applied here) is left out, never
    /// reported as a deletion.
    #[test]
    fn given_an_edit_to_the_longest_text_then_its_amendment_keeps_no_copy_and_reads_it_from_the_log() {
        let (history, mut projection) = fresh();
        let text = "e".repeat(crate::config::BODY_BYTES_LIMIT);
        let mut edit = amended(2, "a", 1, true);
        if let Event::MessageEdited(e) = &mut edit.event {
            e.body = text.clone();
        }
        projection.apply(&[posted(1, "a", "x"), edit, posted(3, "a", "y"), amended(4, "a", 3, true)]).expect("apply");
        let largest = history.dump().expect("dump").iter().map(|(_, v)| v.len()).max().unwrap_or(0);
        assert!(largest < 200, "the largest value is {largest} bytes");
        let amendments = history.amendments(&room("a"), 0, u64::MAX).expect("amendments");
        let read: Vec<_> = amendments.iter().map(|a| (a.seq, a.body.as_deref())).collect();
        assert_eq!(read, vec![(2, Some(text.as_str())), (4, Some("edited by 4"))]);

        projection.applied.0.lock().expect("not poisoned").retain(|e| e.seq != 2);
        let amendments = history.amendments(&room("a"), 0, u64::MAX).expect("amendments");
        let read: Vec<_> = amendments.iter().map(|a| (a.seq, a.body.as_deref())).collect();
        assert_eq!(read, vec![(4, Some("edited by 4"))], "not a deletion");
    }

    #[test]
    fn given_a_record_the_log_removed_before_the_cut_was_applied_then_reads_leave_its_message_out() {
        let (history, mut projection) = fresh();
        projection.apply(&[posted(1, "a", "x"), posted(2, "a", "y"), posted(3, "a", "z")]).expect("apply");
        // The janitor removes records once a cut supersedes them; the history may not have
        // applied that cut yet.
        projection.applied.0.lock().expect("not poisoned").retain(|e| e.seq != 2);
        let seqs = |v: Vec<StoredMessage>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(seqs(history.recent(&room("a"), 10).expect("recent")), vec![1, 3]);
        assert_eq!(history.get(&room("a"), 2).expect("get"), None);
        assert_eq!(history.kept_after(&room("a"), 0, 10).expect("kept").len(), 3, "retention still counts it");
    }

    #[test]
    fn given_posts_in_two_rooms_then_each_room_pages_its_own_messages() {
        let (history, mut projection) = fresh();
        let batch: Vec<_> = (1..=6).map(|s| posted(s, if s % 2 == 0 { "b" } else { "a" }, &format!("c{s}"))).collect();
        projection.apply(&batch).expect("apply");

        let seqs = |v: Vec<StoredMessage>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(seqs(history.recent(&room("a"), 2).expect("recent")), vec![3, 5]);
        assert_eq!(seqs(history.after(&room("b"), 2, 10).expect("after")), vec![4, 6]);
        assert_eq!(seqs(history.before(&room("b"), 6, 10).expect("before")), vec![2, 4]);
        let summary = history.summary(&room("a")).expect("summary").expect("room a exists");
        assert_eq!((summary.message_count, summary.last_seq, summary.last_at_unix_ms), (3, 5, 1_005));
        assert_eq!(history.checkpoint().expect("checkpoint"), 6);
    }

    #[test]
    fn given_an_expiry_in_the_same_batch_then_it_removes_what_the_batch_posted() {
        let (history, mut projection) = fresh();
        let batch = vec![posted(1, "a", "x"), posted(2, "a", "y"), posted(3, "a", "z"), expired(4, "a", 2)];
        projection.apply(&batch).expect("apply");

        let left: Vec<u64> = history.recent(&room("a"), 10).expect("recent").into_iter().map(|m| m.seq).collect();
        assert_eq!(left, vec![3]);
        let summary = history.summary(&room("a")).expect("summary").expect("exists");
        assert_eq!((summary.message_count, summary.removed_through_seq), (1, 2));
        assert_eq!(history.checkpoint().expect("checkpoint"), 4);
    }

    #[test]
    fn given_more_messages_than_a_page_then_paging_crosses_page_boundaries() {
        let (history, mut projection) = fresh();
        let n = PAGE_MESSAGES_MAX as u64 * 3 + 5;
        let batch: Vec<_> = (1..=n).map(|s| posted(s, "a", &format!("c{s}"))).collect();
        projection.apply(&batch).expect("apply");
        let seqs = |v: Vec<StoredMessage>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(seqs(history.after(&room("a"), 60, 10).expect("after")), (61..=70).collect::<Vec<_>>());
        assert_eq!(seqs(history.before(&room("a"), 130, 5).expect("before")), (125..=129).collect::<Vec<_>>());
        assert_eq!(seqs(history.recent(&room("a"), 3).expect("recent")), vec![n - 2, n - 1, n]);
        assert_eq!(history.after(&room("a"), 0, 1000).expect("all").len() as u64, n);
        projection.apply(&[expired(n + 1, "a", 100)]).expect("expire");
        assert_eq!(seqs(history.after(&room("a"), 0, 3).expect("after cut")), vec![101, 102, 103]);
        assert_eq!(history.summary(&room("a")).expect("summary").expect("room").message_count, n - 100);
    }

    proptest::proptest! {
        /// Replay equals live: the state depends on the events only, not on how the runner
        /// happened to batch them (live: a group commit at a time; rebuild: 4096 at a time).
        #[test]
        fn applying_in_one_batch_or_many_gives_the_same_state(
            kinds in proptest::collection::vec((0u8..3, 0u8..20, 0u64..1000), 1..600),
            chunk in 1usize..200,
        ) {
            let events: Vec<_> = kinds
                .iter()
                .enumerate()
                .map(|(i, &(room_n, action, pick))| {
                    let seq = i as u64 + 1;
                    let name = ["a", "b", "c"][room_n as usize];
                    // Edits and deletions aim at any earlier seq: some hit, some miss.
                    match action {
                        0 => expired(seq, name, seq / 2),
                        1 | 2 if seq > 1 => amended(seq, name, 1 + pick % (seq - 1), action == 1),
                        _ => posted(seq, name, &format!("c{seq}")),
                    }
                })
                .collect();
            let (one, mut one_p) = fresh();
            one_p.apply(&events).expect("apply all");
            let (many, mut many_p) = fresh();
            for part in events.chunks(chunk) {
                many_p.apply(part).expect("apply chunk");
            }
            proptest::prop_assert_eq!(one.dump().expect("dump"), many.dump().expect("dump"));
            proptest::prop_assert_eq!(one.checkpoint().expect("c"), many.checkpoint().expect("c"));
        }
    }
}

/// The same projection fed from the memory log by a runner, a rebuild and a reopened store.
#[cfg(test)]
mod log_tests;
