//! The WebSocket wire format: JSON text frames, one object per frame with a `type` field.
//! `schema/wire.md` documents every frame with an example; `snapshots/wire/` keeps them golden.
//!
//! Client frames are parsed in two steps so that every bad frame gets a stable [`ErrorCode`]:
//! first as any JSON object (else `malformed_json`), then by its `type` (else `unknown_type`),
//! then into the frame's fields (`missing_field`, `unknown_field`, `invalid_field`).

use serde::{Deserialize, Serialize};

use crate::message::{Amendment, StoredMessage};
use crate::presence::PresentUser;
use crate::projection::search::{Hits, Sort};

/// A frame a client sends.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Join a room: the recent messages, or everything after `since`, then live messages.
    Join { room: String, since: Option<u64> },
    /// Post a message. `client_id` makes a retry idempotent.
    Send { room: String, body: String, client_id: String },
    /// Replace the text of a message (its author, or an admin). Acknowledged like `send`.
    Edit { room: String, seq: u64, body: String, client_id: String },
    /// Delete a message (its author, or an admin). Acknowledged like `send`.
    Delete { room: String, seq: u64, client_id: String },
    /// Stop receiving a room's messages.
    Leave { room: String },
    /// Page back through a joined room's history.
    History { room: String, before: Option<u64>, limit: Option<usize> },
    /// Search past messages of the rooms this connection may read (joined or not); the
    /// options are those of `GET /api/search`. `id` is echoed in the answer.
    Search {
        id: Option<serde_json::Value>,
        q: String,
        room: Option<String>,
        author: Option<String>,
        since: Option<String>,
        until: Option<String>,
        limit: Option<usize>,
        cursor: Option<String>,
        sort: Option<Sort>,
    },
    /// Who is in a room (joined or not): the users present with their connection counts.
    Members { room: String },
    /// Liveness check; `id` is echoed.
    Ping { id: Option<serde_json::Value> },
}

const CLIENT_TYPES: &[&str] = &["join", "send", "edit", "delete", "leave", "history", "search", "members", "ping"];

/// The error codes of `error` frames: the registry shared with HTTP.
pub use crate::error_code::ErrorCode;

/// A frame the server sends. Message frames are rendered once per message by
/// [`message_frame`] and shared by every recipient.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// The room is joined; replayed messages follow, then live ones.
    Joined {
        room: &'a str,
        /// Retention removed the room's history up to and including this seq: the client will
        /// not receive messages at or before it, even if it asked `since` an older seq.
        #[serde(skip_serializing_if = "Option::is_none")]
        removed_through_seq: Option<u64>,
    },
    /// The message is durable under `seq`; its `message` frame follows.
    Ack { room: &'a str, client_id: &'a str, seq: u64 },
    /// The room is left.
    Left { room: &'a str },
    /// Message `target` now reads `body`. `seq` is the edit's own place in the room.
    Edited { room: &'a str, seq: u64, target: u64, by: &'a str, at_unix_ms: u64, body: &'a str },
    /// Message `target` was deleted. `seq` is the deletion's own place in the room.
    Deleted { room: &'a str, seq: u64, target: u64, by: &'a str, at_unix_ms: u64 },
    /// A page of older messages, oldest first; `more` when older ones remain.
    History {
        room: &'a str,
        messages: Vec<WireMessage<'a>>,
        more: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        removed_through_seq: Option<u64>,
    },
    /// Answer to `search`: a page of hits, as `GET /api/search` answers.
    SearchResults {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a serde_json::Value>,
        #[serde(flatten)]
        results: &'a Hits,
    },
    /// Answer to `members`: the users present in the room, by name, with their connections.
    Members { room: &'a str, members: &'a [PresentUser] },
    /// A user's first connection joined the room (sent when `chat.join_leave` is on).
    MemberJoined { room: &'a str, user: &'a str },
    /// A user's last connection left the room, however it ended (`chat.join_leave`).
    MemberLeft { room: &'a str, user: &'a str },
    /// Answer to `ping`.
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a serde_json::Value>,
    },
    /// Something about a client frame was wrong; the connection stays usable.
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_id: Option<&'a str>,
    },
}

/// A message as it appears on the wire (in `message` and `history` frames, and over HTTP).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WireMessage<'a> {
    pub room: &'a str,
    pub seq: u64,
    pub at_unix_ms: u64,
    pub author: &'a str,
    pub client_id: &'a str,
    pub body: &'a str,
    /// Set once the text has been edited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited_at_unix_ms: Option<u64>,
}

impl<'a> WireMessage<'a> {
    /// The wire view of a stored message.
    pub fn of(room: &'a str, m: &'a StoredMessage) -> Self {
        Self {
            room,
            seq: m.seq,
            at_unix_ms: m.at_unix_ms,
            author: &m.author,
            client_id: &m.client_id,
            body: &m.body,
            edited_at_unix_ms: m.edited_at_unix_ms,
        }
    }
}

/// Renders the frame that tells a member of an edit or deletion.
pub fn amendment_frame(room: &str, amendment: &Amendment) -> String {
    let (seq, target, by, at_unix_ms) = (amendment.seq, amendment.target, amendment.by.as_str(), amendment.at_unix_ms);
    match &amendment.body {
        Some(body) => render(&ServerFrame::Edited { room, seq, target, by, at_unix_ms, body }),
        None => render(&ServerFrame::Deleted { room, seq, target, by, at_unix_ms }),
    }
}

#[derive(Serialize)]
struct MessageFrame<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    message: WireMessage<'a>,
}

/// Renders a `message` frame.
pub fn message_frame(message: WireMessage<'_>) -> String {
    render(&MessageFrame { r#type: "message", message })
}

/// Renders a server frame as JSON text.
pub fn render<T: Serialize>(frame: &T) -> String {
    serde_json::to_string(frame).expect("server frames are plain data and always serialise")
}

/// Renders an error frame.
pub fn error_frame(code: ErrorCode, message: &str, room: Option<&str>, client_id: Option<&str>) -> String {
    render(&ServerFrame::Error { code, message, room, client_id })
}

/// A client frame that could not be parsed, with its code and a readable message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
}

/// Parses a client text frame.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| FrameError { code: ErrorCode::MalformedJson, message: format!("frame is not valid JSON: {e}") })?;
    let Some(object) = value.as_object() else {
        return Err(FrameError { code: ErrorCode::MalformedJson, message: "frame must be a JSON object".into() });
    };
    match object.get("type").and_then(|t| t.as_str()) {
        Some(t) if CLIENT_TYPES.contains(&t) => {}
        Some(t) => {
            let shown: String = t.chars().take(40).collect();
            return Err(FrameError {
                code: ErrorCode::UnknownType,
                message: format!("unknown frame type {shown:?}; expected one of {}", CLIENT_TYPES.join(", ")),
            });
        }
        None => {
            return Err(FrameError {
                code: ErrorCode::UnknownType,
                message: "frame has no string field \"type\"".into(),
            })
        }
    }
    serde_json::from_value(value).map_err(|e| {
        let message = e.to_string();
        let code = if message.starts_with("missing field") {
            ErrorCode::MissingField
        } else if message.starts_with("unknown field") {
            ErrorCode::UnknownField
        } else {
            ErrorCode::InvalidField
        };
        FrameError { code, message }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(text: &str) -> ErrorCode {
        parse_client_frame(text).expect_err("must be refused").code
    }

    #[test]
    fn good_frames_parse() {
        assert_eq!(
            parse_client_frame(r#"{"type":"send","room":"a","body":"hi","client_id":"1"}"#).expect("parses"),
            ClientFrame::Send { room: "a".into(), body: "hi".into(), client_id: "1".into() }
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"join","room":"a","since":7}"#).expect("parses"),
            ClientFrame::Join { room: "a".into(), since: Some(7) }
        );
    }

    #[test]
    fn every_kind_of_bad_frame_has_its_code() {
        assert_eq!(code_of("{not json"), ErrorCode::MalformedJson);
        assert_eq!(code_of("[1,2]"), ErrorCode::MalformedJson);
        assert_eq!(code_of(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(code_of(r#"{"room":"a"}"#), ErrorCode::UnknownType);
        assert_eq!(code_of(r#"{"type":"send","room":"a","body":"x"}"#), ErrorCode::MissingField);
        assert_eq!(code_of(r#"{"type":"leave","room":"a","extra":1}"#), ErrorCode::UnknownField);
        assert_eq!(code_of(r#"{"type":"join","room":5}"#), ErrorCode::InvalidField);
        assert_eq!(code_of(r#"{"type":"join","room":"a","since":-1}"#), ErrorCode::InvalidField);
        assert_eq!(code_of(r#"{"type":"join","room":"a","since":1e400}"#), ErrorCode::MalformedJson);
    }

    #[test]
    fn message_frames_carry_the_type_and_every_field() {
        let stored = StoredMessage {
            seq: 3,
            at_unix_ms: 9,
            author: "ann".into(),
            client_id: "c".into(),
            body: "hé \"x\"".into(),
            edited_at_unix_ms: None,
        };
        let frame: serde_json::Value =
            serde_json::from_str(&message_frame(WireMessage::of("lobby", &stored))).expect("json");
        assert_eq!(
            frame,
            serde_json::json!({"type":"message","room":"lobby","seq":3,"at_unix_ms":9,"author":"ann","client_id":"c","body":"hé \"x\""})
        );
    }
}
