//! A chat message as roomlog keeps it, and the edits and deletions that amend it: what the
//! history stores, a room replays and the wire renders.

use serde::{Deserialize, Serialize};

use crate::event::{Envelope, Event, MessageDeleted, MessageEdited, MessagePosted};

/// One message as the history serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub seq: u64,
    pub at_unix_ms: u64,
    pub author: String,
    pub client_id: String,
    pub body: String,
    /// When the text was last edited (None: never).
    #[serde(default)]
    pub edited_at_unix_ms: Option<u64>,
}

impl StoredMessage {
    /// The message a post stored at `seq`, `at_unix_ms` is.
    pub fn posted(seq: u64, at_unix_ms: u64, posted: &MessagePosted) -> Self {
        let (author, client_id, body) = (posted.author.clone(), posted.client_id.clone(), posted.body.clone());
        Self { seq, at_unix_ms, author, client_id, body, edited_at_unix_ms: None }
    }

    /// The message as an edit stored at `at_unix_ms` leaves it.
    pub fn edited(edit: &MessageEdited, at_unix_ms: u64) -> Self {
        let (author, client_id, body) = (edit.author.clone(), edit.client_id.clone(), edit.body.clone());
        let at = edit.posted_at_unix_ms;
        Self { seq: edit.seq, at_unix_ms: at, author, client_id, body, edited_at_unix_ms: Some(at_unix_ms) }
    }

    /// The text it stores (author, client id and body), as retention and storage count it.
    pub fn stored_bytes(&self) -> u64 {
        (self.author.len() + self.client_id.len() + self.body.len()) as u64
    }
}

/// One message as a history page keeps it: everything but its text, which stays in the log's
/// record that holds it (the post, or its newest edit) and is read from there when the message
/// is shown ([`KeptMessage::with_text`]). What retention and a room's deduplication need is here
/// without reading the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptMessage {
    pub seq: u64,
    pub at_unix_ms: u64,
    pub author: String,
    pub client_id: String,
    /// The length of the text, in bytes.
    pub body_bytes: u64,
    /// The newest edit: its seq (the record holding the text now) and its time; `None`: the
    /// text is the post's.
    pub edit: Option<(u64, u64)>,
}

impl KeptMessage {
    /// The message a post stored at `seq`, `at_unix_ms` is.
    pub fn posted(seq: u64, at_unix_ms: u64, posted: &MessagePosted) -> Self {
        let (author, client_id) = (posted.author.clone(), posted.client_id.clone());
        Self { seq, at_unix_ms, author, client_id, body_bytes: posted.body.len() as u64, edit: None }
    }

    /// The seq of the record that holds the text: the newest edit, or the post.
    pub fn text_seq(&self) -> u64 {
        self.edit.map_or(self.seq, |(seq, _)| seq)
    }

    /// The text it stores (author, client id and body), as [`StoredMessage::stored_bytes`].
    pub fn stored_bytes(&self) -> u64 {
        (self.author.len() + self.client_id.len()) as u64 + self.body_bytes
    }

    /// The message with its text, from `record` (the one at [`KeptMessage::text_seq`]);
    /// `None` when `record` is not the post or edit of this message.
    pub fn with_text(self, record: &Envelope) -> Option<StoredMessage> {
        let body = match &record.event {
            Event::MessagePosted(posted) if self.edit.is_none() && record.seq == self.seq => &posted.body,
            Event::MessageEdited(edit) if edit.seq == self.seq && self.edit.is_some_and(|(s, _)| s == record.seq) => {
                &edit.body
            }
            _ => return None,
        };
        let Self { seq, at_unix_ms, author, client_id, edit, .. } = self;
        let edited_at_unix_ms = edit.map(|(_, at)| at);
        Some(StoredMessage { seq, at_unix_ms, author, client_id, body: body.clone(), edited_at_unix_ms })
    }
}

/// An edit or a deletion of one message, as a resuming client must be told of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amendment {
    /// The seq of the edit or deletion event.
    pub seq: u64,
    pub at_unix_ms: u64,
    /// The message changed.
    pub target: u64,
    /// Who changed it.
    pub by: String,
    /// The new text of an edit; `None` for a deletion.
    pub body: Option<String>,
}

impl Amendment {
    /// The amendment an edit or deletion event makes; `None` for other events.
    pub fn of(envelope: &Envelope) -> Option<Self> {
        let (target, by, body) = match &envelope.event {
            Event::MessageEdited(MessageEdited { seq, edited_by, body, .. }) => (*seq, edited_by, Some(body)),
            Event::MessageDeleted(MessageDeleted { seq, deleted_by, .. }) => (*seq, deleted_by, None),
            _ => return None,
        };
        Some(Self { seq: envelope.seq, at_unix_ms: envelope.at_unix_ms, target, by: by.clone(), body: body.cloned() })
    }
}
