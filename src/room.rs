//! What a room decides, as plain state: the ring of recent messages, de-duplication by client
//! message id, and which messages a joining or resuming member must be sent.
//!
//! [`crate::actor::room::RoomActor`] is the thin shell that does the I/O around it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::event::RoomId;
use crate::message::{Amendment, KeptMessage, StoredMessage};
use crate::wire::{amendment_frame, message_frame, WireMessage};

pub use crate::presence::MemberId;

/// A client message id is unique per author within a room.
pub type DedupKey = (String, String);

/// A committed item of a room, with its frame rendered once for every recipient: a message,
/// or the notice of an edit or deletion (an amendment) of an earlier one.
#[derive(Debug)]
pub struct ChatMessage {
    pub seq: u64,
    pub author: String,
    pub client_id: String,
    pub at_unix_ms: u64,
    /// True for an amendment notice, false for a message.
    pub notice: bool,
    /// The JSON `message`, `edited` or `deleted` frame.
    pub frame: Arc<str>,
}

impl ChatMessage {
    /// Renders a stored message of `room`.
    pub fn new(room: &RoomId, stored: &StoredMessage) -> Self {
        Self {
            seq: stored.seq,
            author: stored.author.clone(),
            client_id: stored.client_id.clone(),
            at_unix_ms: stored.at_unix_ms,
            notice: false,
            frame: message_frame(WireMessage::of(room.as_str(), stored)).into(),
        }
    }

    /// Renders the notice of an edit or deletion.
    pub fn notice(room: &RoomId, amendment: &Amendment) -> Self {
        Self {
            seq: amendment.seq,
            author: amendment.by.clone(),
            client_id: String::new(),
            at_unix_ms: amendment.at_unix_ms,
            notice: true,
            frame: amendment_frame(room.as_str(), amendment).into(),
        }
    }
}

/// Where a posted client message stands.
#[derive(Debug, PartialEq, Eq)]
pub enum PostDecision {
    /// Stored already under this seq: acknowledge it again, store nothing.
    AlreadyStored(u64),
    /// An earlier copy is being stored: acknowledge this sender too when it is durable.
    AlreadyInFlight,
    /// New: append it.
    Append,
}

/// The in-memory state of one room.
#[derive(Debug)]
pub struct RoomState {
    room: RoomId,
    ring: VecDeque<Arc<ChatMessage>>,
    capacity: usize,
    /// Every message of the room with a seq above this one is in the ring. Below or at it,
    /// messages are read from the history projection.
    floor_seq: u64,
    /// Client ids of the newest `window` messages: the duplicate window. A retry whose
    /// original is older than the window is stored again (as with NATS JetStream's
    /// `duplicate_window`); the window is loaded from the history when the room starts.
    stored: HashMap<DedupKey, u64>,
    /// The same ids, oldest first, to bound `stored`.
    stored_order: VecDeque<(DedupKey, u64)>,
    window: usize,
    /// Client ids being appended, with every member waiting for their acknowledgement.
    inflight: HashMap<DedupKey, Vec<MemberId>>,
}

impl RoomState {
    /// State of a room whose newest messages (oldest first) were loaded from the history:
    /// the last `capacity` go to the ring, the ids of the last `window` to the duplicate window.
    /// `removed_through_seq` is what retention already removed. `amendments` are the edits and
    /// deletions after the first message loaded: the ring keeps their notices too.
    /// `known`: the room's newest messages as the history keeps them (the deduplication
    /// window's and the ring's); `in_ring`: the newest `capacity` of them with their texts.
    pub fn new(
        room: RoomId,
        capacity: usize,
        window: usize,
        known: &[KeptMessage],
        in_ring: &[StoredMessage],
        amendments: &[Amendment],
        removed_through_seq: u64,
    ) -> Self {
        let capacity = capacity.max(1);
        let window = window.max(capacity);
        let in_ring = &in_ring[in_ring.len().saturating_sub(capacity)..];
        let floor_seq = match known.len().checked_sub(capacity) {
            // A full ring may have older messages behind it.
            Some(first) => known[first].seq.saturating_sub(1),
            None => removed_through_seq,
        };
        let mut state = Self {
            room,
            ring: VecDeque::with_capacity(capacity),
            capacity,
            floor_seq,
            stored: HashMap::new(),
            stored_order: VecDeque::new(),
            window,
            inflight: HashMap::new(),
        };
        for message in &known[known.len().saturating_sub(window)..] {
            state.remember((message.author.clone(), message.client_id.clone()), message.seq);
        }
        let mut items: Vec<ChatMessage> = in_ring.iter().map(|m| ChatMessage::new(&state.room, m)).collect();
        items.extend(amendments.iter().filter(|a| a.seq > floor_seq).map(|a| ChatMessage::notice(&state.room, a)));
        items.sort_by_key(|item| item.seq);
        for item in items {
            state.push(Arc::new(item));
        }
        state
    }

    /// Adds a committed item to the ring, evicting the oldest when it is full.
    fn push(&mut self, item: Arc<ChatMessage>) {
        if self.ring.len() == self.capacity {
            if let Some(evicted) = self.ring.pop_front() {
                self.floor_seq = evicted.seq;
            }
        }
        self.ring.push_back(item);
    }

    /// A message still in memory, by seq.
    pub fn find(&self, seq: u64) -> Option<&ChatMessage> {
        let index = self.ring.binary_search_by_key(&seq, |m| m.seq).ok()?;
        Some(&*self.ring[index]).filter(|m| !m.notice)
    }

    /// Records a durable edit (with the message as it now reads) or deletion (`None`): the
    /// message in memory is replaced or dropped, and the notice is added. Returns the notice.
    pub fn amended(&mut self, amendment: &Amendment, edited: Option<&StoredMessage>) -> Arc<ChatMessage> {
        if let Ok(index) = self.ring.binary_search_by_key(&amendment.target, |m| m.seq) {
            match edited {
                Some(message) => self.ring[index] = Arc::new(ChatMessage::new(&self.room, message)),
                None => {
                    self.ring.remove(index);
                }
            }
        }
        let notice = Arc::new(ChatMessage::notice(&self.room, amendment));
        self.push(notice.clone());
        notice
    }

    /// Adds a stored client id to the duplicate window, dropping the oldest beyond it.
    fn remember(&mut self, key: DedupKey, seq: u64) {
        self.stored.insert(key.clone(), seq);
        self.stored_order.push_back((key, seq));
        while self.stored_order.len() > self.window {
            if let Some((old, old_seq)) = self.stored_order.pop_front() {
                if self.stored.get(&old) == Some(&old_seq) {
                    self.stored.remove(&old);
                }
            }
        }
    }

    pub fn room(&self) -> &RoomId {
        &self.room
    }

    /// Every message with a seq above this is in memory.
    pub fn floor_seq(&self) -> u64 {
        self.floor_seq
    }

    /// Whether anything is being appended.
    pub fn has_inflight(&self) -> bool {
        !self.inflight.is_empty()
    }

    /// Decides what to do with a posted message. `Append` registers the message as in flight;
    /// the caller must end it with [`Self::committed`] or [`Self::failed`].
    pub fn decide_post(&mut self, member: MemberId, key: DedupKey) -> PostDecision {
        if let Some(&seq) = self.stored.get(&key) {
            return PostDecision::AlreadyStored(seq);
        }
        if let Some(waiting) = self.inflight.get_mut(&key) {
            waiting.push(member);
            return PostDecision::AlreadyInFlight;
        }
        self.inflight.insert(key, vec![member]);
        PostDecision::Append
    }

    /// Records a durable message; returns it and the members to acknowledge, in the order
    /// they sent it.
    pub fn committed(&mut self, stored: &StoredMessage) -> (Arc<ChatMessage>, Vec<MemberId>) {
        let key = (stored.author.clone(), stored.client_id.clone());
        let ackers = self.inflight.remove(&key).unwrap_or_default();
        let message = Arc::new(ChatMessage::new(&self.room, stored));
        self.remember(key, message.seq);
        self.push(message.clone());
        (message, ackers)
    }

    /// A post this node appended turned out stored already (under `seq`, by a retry through
    /// another node): forgets it as in flight and returns the members waiting for it.
    pub fn stored_before(&mut self, key: DedupKey, seq: u64) -> Vec<MemberId> {
        let ackers = self.inflight.remove(&key).unwrap_or_default();
        self.remember(key, seq);
        ackers
    }

    /// The seq of the newest item the room holds (0 when none): on a shared log, what the
    /// room already shows.
    pub fn newest_seq(&self) -> u64 {
        self.ring.back().map_or(0, |item| item.seq)
    }

    /// An append failed: forgets it and returns the members that were waiting for it.
    pub fn failed(&mut self, key: &DedupKey) -> Vec<MemberId> {
        self.inflight.remove(key).unwrap_or_default()
    }

    /// The newest `count` messages as they now read, oldest first (no notices: the messages
    /// already carry their edits).
    pub fn recent(&self, count: usize) -> Vec<Arc<ChatMessage>> {
        let mut recent: Vec<_> = self.ring.iter().rev().filter(|m| !m.notice).take(count).cloned().collect();
        recent.reverse();
        recent
    }

    /// The items after `since` (messages as they now read, and notices of edits and deletions),
    /// if memory holds all of them (`since >= floor_seq`).
    pub fn after(&self, since: u64) -> Option<Vec<Arc<ChatMessage>>> {
        (since >= self.floor_seq).then(|| self.ring.iter().filter(|m| m.seq > since).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A room started on `loaded` (its newest messages, oldest first) as its actor starts it.
    fn started(
        capacity: usize,
        window: usize,
        loaded: &[StoredMessage],
        amendments: &[Amendment],
        removed: u64,
    ) -> RoomState {
        let known: Vec<KeptMessage> = loaded
            .iter()
            .map(|m| KeptMessage {
                seq: m.seq,
                at_unix_ms: m.at_unix_ms,
                author: m.author.clone(),
                client_id: m.client_id.clone(),
                body_bytes: m.body.len() as u64,
                edit: m.edited_at_unix_ms.map(|at| (m.seq, at)),
            })
            .collect();
        RoomState::new(room(), capacity, window, &known, loaded, amendments, removed)
    }

    fn stored(seq: u64, client_id: &str) -> StoredMessage {
        StoredMessage {
            seq,
            at_unix_ms: seq,
            author: "ann".into(),
            client_id: client_id.into(),
            body: format!("m{seq}"),
            edited_at_unix_ms: None,
        }
    }

    fn key(client_id: &str) -> DedupKey {
        ("ann".into(), client_id.into())
    }

    fn room() -> RoomId {
        RoomId::parse("lobby").expect("valid")
    }

    fn seqs(messages: &[Arc<ChatMessage>]) -> Vec<u64> {
        messages.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn given_a_new_message_when_retried_before_and_after_commit_then_it_is_appended_once() {
        let mut state = started(10, 10, &[], &[], 0);
        assert_eq!(state.decide_post(1, key("a")), PostDecision::Append);
        assert_eq!(state.decide_post(2, key("a")), PostDecision::AlreadyInFlight);
        let (message, ackers) = state.committed(&stored(7, "a"));
        assert_eq!((message.seq, ackers), (7, vec![1, 2]));
        assert_eq!(state.decide_post(1, key("a")), PostDecision::AlreadyStored(7));
        assert!(!state.has_inflight());
    }

    #[test]
    fn given_a_full_ring_when_messages_arrive_then_the_floor_rises_and_old_resumes_need_the_disk() {
        let loaded: Vec<_> = (1..=3).map(|s| stored(s * 10, &format!("c{s}"))).collect();
        let mut state = started(3, 4, &loaded, &[], 0);
        assert_eq!(state.floor_seq(), 9, "a full ring may hide older messages");
        assert!(state.after(5).is_none());
        assert_eq!(seqs(&state.after(10).expect("in memory")), vec![20, 30]);

        state.decide_post(1, key("n"));
        state.committed(&stored(40, "n"));
        assert_eq!(state.floor_seq(), 10);
        assert_eq!(seqs(&state.recent(2)), vec![30, 40]);
        assert_eq!(
            state.decide_post(1, key("c1")),
            PostDecision::AlreadyStored(10),
            "out of the ring, still in the window"
        );
        state.decide_post(1, key("m"));
        state.committed(&stored(50, "m"));
        assert_eq!(state.decide_post(1, key("c1")), PostDecision::Append, "out of the window: stored again");
    }

    #[test]
    fn given_a_room_shorter_than_the_ring_then_everything_after_retention_is_in_memory() {
        let state = started(10, 10, &[stored(5, "a"), stored(8, "b")], &[], 3);
        assert_eq!(state.floor_seq(), 3);
        assert_eq!(seqs(&state.after(3).expect("in memory")), vec![5, 8]);
        assert!(state.after(0).is_none(), "before retention's cut, memory cannot answer");
    }

    #[test]
    fn given_edits_and_deletions_then_joiners_see_current_text_and_resumers_get_the_notices() {
        let loaded: Vec<_> = (1..=3).map(|s| stored(s, &format!("c{s}"))).collect();
        let mut state = started(10, 10, &loaded, &[], 0);
        let mut edited = stored(2, "c2");
        edited.body = "fixed".into();
        let edit = Amendment { seq: 4, at_unix_ms: 4, target: 2, by: "ann".into(), body: Some("fixed".into()) };
        state.amended(&edit, Some(&edited));
        let delete = Amendment { seq: 5, at_unix_ms: 5, target: 3, by: "ann".into(), body: None };
        state.amended(&delete, None);

        assert_eq!(seqs(&state.recent(10)), vec![1, 2], "a joiner gets the messages as they now read");
        assert!(state.recent(10)[1].frame.contains("fixed"));
        assert!(state.find(3).is_none(), "a deleted message is gone");
        assert!(state.find(4).is_none(), "a notice is not a message");
        let resumed = state.after(1).expect("in memory");
        assert_eq!(seqs(&resumed), vec![2, 4, 5], "a resumer gets the notices in seq order");
        assert!(resumed[2].frame.contains(r#""type":"deleted""#));
    }

    #[test]
    fn given_amendments_stored_when_the_room_starts_then_the_ring_holds_their_notices() {
        let loaded = vec![stored(1, "a"), stored(3, "b")];
        let amendments = [Amendment { seq: 4, at_unix_ms: 4, target: 2, by: "ann".into(), body: None }];
        let state = started(10, 10, &loaded, &amendments, 0);
        assert_eq!(seqs(&state.after(0).expect("in memory")), vec![1, 3, 4]);
    }

    #[test]
    fn given_a_failed_append_then_its_waiters_are_returned_and_a_retry_appends_again() {
        let mut state = started(10, 10, &[], &[], 0);
        state.decide_post(4, key("x"));
        state.decide_post(5, key("x"));
        assert_eq!(state.failed(&key("x")), vec![4, 5]);
        assert_eq!(state.decide_post(4, key("x")), PostDecision::Append);
    }
}
