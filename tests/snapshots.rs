//! Golden files: every event version ever written must still decode, and every wire frame
//! keeps its documented shape. A change to a file in `snapshots/` is a change to a contract.
//!
//! `ROOMLOG_UPDATE_SNAPSHOTS=1 cargo test --test snapshots` writes missing golden files; it
//! never overwrites one, because an old version's bytes must stay as they were written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use roomlog::blob::{ContentHash, FileKey, Tier};
use roomlog::event::{decode, encode, Envelope, Event, MessagePosted, MessagesExpired, RoomId, StreamId};
use roomlog::event::{ContentMoved, ContentQuarantined, FileDeleted, FileStored, SessionPaid, SessionTouched};
use roomlog::event::{DueSession, ItemFailure, JanitorRan, RuleTally, SessionsDue};
use roomlog::event::{MessageDeleted, MessageEdited, SessionCreated, SessionDue, SessionEnded, SessionId};
use roomlog::message::{Amendment, StoredMessage};
use roomlog::presence::PresentUser;
use roomlog::projection::search::{Hit, Hits};
use roomlog::wire::amendment_frame;
use roomlog::wire::{error_frame, message_frame, parse_client_frame, render, ErrorCode, ServerFrame, WireMessage};

fn snapshots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("snapshots")
}

fn updating() -> bool {
    std::env::var_os("ROOMLOG_UPDATE_SNAPSHOTS").is_some()
}

/// One sample per stored tag: what the golden file of that version must decode to.
fn event_samples() -> BTreeMap<&'static str, Envelope> {
    let room = RoomId::parse("lobby").expect("room");
    let envelope =
        |seq, event| Envelope { seq, at_unix_ms: 1_795_000_000_000 + seq, stream: StreamId::room(&room), event };
    let session = SessionId::parse("0123456789abcdef0123456789abcdef").expect("session id");
    const T: u64 = 1_795_000_000_000;
    let key = FileKey::parse("temp_audio/a.mp3").expect("key");
    let hash = ContentHash::parse(&"ab".repeat(32)).expect("hash");
    let file_envelope = |seq, event| Envelope { seq, at_unix_ms: T + seq, stream: StreamId::file(&key), event };
    let session_envelope =
        |seq, event| Envelope { seq, at_unix_ms: T + seq, stream: StreamId::session(&session), event };
    let content_envelope = |seq, event| Envelope { seq, at_unix_ms: T + seq, stream: StreamId::content(&hash), event };
    BTreeMap::from([
        (
            "MessagePosted.1",
            envelope(
                1,
                Event::MessagePosted(MessagePosted {
                    room: room.clone(),
                    author: "ann".into(),
                    client_id: "c-1".into(),
                    body: "hello, 世界".into(),
                }),
            ),
        ),
        (
            "MessagesExpired.1",
            envelope(
                2,
                Event::MessagesExpired(MessagesExpired {
                    room: room.clone(),
                    through_seq: 1,
                    policy: "max_count=1000".into(),
                }),
            ),
        ),
        (
            "MessageEdited.1",
            envelope(
                3,
                Event::MessageEdited(MessageEdited {
                    room: room.clone(),
                    seq: 1,
                    author: "ann".into(),
                    client_id: "c-1".into(),
                    posted_at_unix_ms: 1_795_000_000_001,
                    edited_by: "ann".into(),
                    body: "hello, 世界!".into(),
                }),
            ),
        ),
        (
            "MessageDeleted.1",
            envelope(
                4,
                Event::MessageDeleted(MessageDeleted {
                    room: room.clone(),
                    seq: 1,
                    deleted_by: "ann".into(),
                    reason: "deleted by its author".into(),
                }),
            ),
        ),
        (
            "SessionCreated.1",
            session_envelope(
                5,
                Event::SessionCreated(SessionCreated {
                    id: session.clone(),
                    created_at_unix_ms: T,
                    expires_at_unix_ms: T + 86_400_000,
                    purge_at_unix_ms: T + 7 * 86_400_000,
                    sliding: false,
                }),
            ),
        ),
        (
            "SessionTouched.1",
            session_envelope(
                6,
                Event::SessionTouched(SessionTouched {
                    id: session.clone(),
                    at_unix_ms: T + 1000,
                    expires_at_unix_ms: T + 86_400_000,
                }),
            ),
        ),
        (
            "SessionPaid.1",
            session_envelope(7, Event::SessionPaid(SessionPaid { id: session.clone(), at_unix_ms: T + 2000 })),
        ),
        (
            "SessionExpired.1",
            session_envelope(
                8,
                Event::SessionExpired(SessionDue {
                    id: session.clone(),
                    due_at_unix_ms: T + 86_400_000,
                    applied_at_unix_ms: T + 86_400_010,
                    reason: "unpaid at its expiry".into(),
                    rule: "sessions.expire_after=1day".into(),
                }),
            ),
        ),
        (
            "SessionPurged.1",
            session_envelope(
                9,
                Event::SessionPurged(SessionDue {
                    id: session.clone(),
                    due_at_unix_ms: T + 7 * 86_400_000,
                    applied_at_unix_ms: T + 7 * 86_400_000 + 10,
                    reason: "unpaid at its purge age".into(),
                    rule: "sessions.purge_after=7days".into(),
                }),
            ),
        ),
        (
            "SessionsExpired.1",
            Envelope {
                seq: 20,
                at_unix_ms: T + 86_400_000 + 5,
                stream: StreamId::session_sweeps(),
                event: Event::SessionsExpired(SessionsDue {
                    sessions: vec![
                        DueSession { id: session.clone(), due_at_unix_ms: T + 86_400_000 },
                        DueSession {
                            id: SessionId::parse("0123456789abcdef0123456789abcdef").expect("id"),
                            due_at_unix_ms: T + 86_400_001,
                        },
                    ],
                    applied_at_unix_ms: T + 86_400_000 + 4,
                    reason: "unpaid at its expiry".into(),
                    rule: "sessions.expire_after=1day".into(),
                }),
            },
        ),
        (
            "SessionsPurged.1",
            Envelope {
                seq: 21,
                at_unix_ms: T + 7 * 86_400_000 + 5,
                stream: StreamId::session_sweeps(),
                event: Event::SessionsPurged(SessionsDue {
                    sessions: vec![DueSession { id: session.clone(), due_at_unix_ms: T + 7 * 86_400_000 }],
                    applied_at_unix_ms: T + 7 * 86_400_000 + 4,
                    reason: "unpaid at its purge age".into(),
                    rule: "sessions.purge_after=7days".into(),
                }),
            },
        ),
        (
            "SessionEnded.1",
            session_envelope(
                10,
                Event::SessionEnded(SessionEnded {
                    id: session.clone(),
                    at_unix_ms: T + 3000,
                    reason: "ended by the app".into(),
                }),
            ),
        ),
        (
            "FileStored.1",
            file_envelope(
                11,
                Event::FileStored(FileStored {
                    key: key.clone(),
                    hash: hash.clone(),
                    size: 48_213,
                    content_type: "audio/mpeg".into(),
                    owner: Some(session.clone()),
                }),
            ),
        ),
        (
            "FileDeleted.1",
            file_envelope(
                12,
                Event::FileDeleted(FileDeleted {
                    key: key.clone(),
                    hash: hash.clone(),
                    reason: "deleted by the app".into(),
                }),
            ),
        ),
        (
            "ContentMoved.1",
            content_envelope(
                13,
                Event::ContentMoved(ContentMoved {
                    hash: hash.clone(),
                    size: 48_213,
                    from: Tier::Hot,
                    to: Tier::Cold,
                    reason: "lifecycle rule TransitionToIA: STANDARD_IA after 30 days".into(),
                }),
            ),
        ),
        (
            "ContentQuarantined.1",
            content_envelope(
                14,
                Event::ContentQuarantined(ContentQuarantined {
                    hash: hash.clone(),
                    tier: Tier::Hot,
                    found: "0".repeat(64),
                    quarantined_to: format!("/var/lib/roomlog/blobs/quarantine/{hash}.hot"),
                }),
            ),
        ),
        (
            "JanitorRan.2",
            Envelope {
                seq: 16,
                at_unix_ms: T + 16,
                stream: StreamId::janitor(),
                event: Event::JanitorRan(JanitorRan {
                    run: 4,
                    trigger: "retry".into(),
                    started_at_unix_ms: T + 15,
                    finished_at_unix_ms: T + 16,
                    outcome: "partial".into(),
                    error: Some(
                        "1 failure(s), the first: move_to_cold ab (TransitionToIA): the cold tier is not writable"
                            .into(),
                    ),
                    rules: vec![RuleTally { rule: "retention.default.max_messages".into(), items: 40, bytes: 4_000 }],
                    failed: vec![RuleTally { rule: "TransitionToIA".into(), items: 1, bytes: 96_000 }],
                    failures: vec![ItemFailure {
                        rule: "TransitionToIA".into(),
                        action: "move_to_cold".into(),
                        target: "ab".repeat(32),
                        error: "the cold tier is not writable".into(),
                    }],
                }),
            },
        ),
    ])
}

/// Golden files of versions no longer written, and what each must read as: its upcast to the
/// current version.
fn upcast_samples() -> BTreeMap<&'static str, Envelope> {
    const T: u64 = 1_795_000_000_000;
    BTreeMap::from([(
        "JanitorRan.1",
        Envelope {
            seq: 15,
            at_unix_ms: T + 15,
            stream: StreamId::janitor(),
            event: Event::JanitorRan(JanitorRan {
                run: 3,
                trigger: "schedule".into(),
                started_at_unix_ms: T + 10,
                finished_at_unix_ms: T + 14,
                outcome: "failed".into(),
                error: Some("expire tts/a.mp3 (ExpireTts): file store I/O: disk full".into()),
                rules: vec![RuleTally { rule: "DeleteTempFiles".into(), items: 2, bytes: 96_000 }],
                failed: Vec::new(),
                failures: Vec::new(),
            }),
        },
    )])
}

#[test]
fn every_golden_event_decodes_to_its_sample() {
    let dir = snapshots().join("events");
    let current = event_samples();
    for (tag, sample) in &current {
        assert_eq!(sample.event.tag(), *tag, "sample filed under the wrong tag");
    }
    let old = upcast_samples();
    for tag in old.keys() {
        assert!(!current.contains_key(tag), "{tag} is both current and old");
    }
    let samples: BTreeMap<&str, Envelope> = current.into_iter().chain(old).collect();
    for (tag, sample) in &samples {
        let path = dir.join(format!("{tag}.msgpack"));
        if !path.exists() && updating() {
            std::fs::write(&path, encode(sample)).expect("write golden event");
        }
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run with ROOMLOG_UPDATE_SNAPSHOTS=1", path.display()));
        assert_eq!(&decode(sample.seq, &bytes).expect("golden event decodes"), sample, "{tag}");
    }
    // No golden file goes unchecked: each names a version with a sample.
    for entry in std::fs::read_dir(&dir).expect("snapshots/events") {
        let name = entry.expect("entry").file_name().to_string_lossy().into_owned();
        let tag = name.trim_end_matches(".msgpack");
        assert!(samples.contains_key(tag), "snapshots/events/{name} has no sample in this test");
    }
}

/// The stored tags `Event` reads: serde's list of its stored shapes' variants, caught by a
/// deserializer that answers nothing else.
fn stored_tags() -> Vec<&'static str> {
    #[derive(Debug, thiserror::Error)]
    enum Probe {
        #[error("variants {0:?}")]
        Variants(&'static [&'static str]),
        #[error("{0}")]
        Other(String),
    }
    impl serde::de::Error for Probe {
        fn custom<T: std::fmt::Display>(message: T) -> Self {
            Probe::Other(message.to_string())
        }
    }
    struct VariantNames;
    impl<'de> serde::Deserializer<'de> for VariantNames {
        type Error = Probe;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Probe> {
            Err(Probe::Other("not an enum".into()))
        }
        fn deserialize_enum<V: serde::de::Visitor<'de>>(
            self,
            _name: &'static str,
            variants: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Probe> {
            Err(Probe::Variants(variants))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
            unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier ignored_any
        }
    }
    match <Event as serde::Deserialize>::deserialize(VariantNames) {
        Err(Probe::Variants(variants)) => variants.to_vec(),
        other => panic!("Event does not deserialize as an enum: {other:?}"),
    }
}

#[test]
fn every_stored_event_shape_has_a_golden_file_and_every_golden_file_a_shape() {
    let tags: std::collections::BTreeSet<String> = stored_tags().into_iter().map(str::to_owned).collect();
    let files: std::collections::BTreeSet<String> = std::fs::read_dir(snapshots().join("events"))
        .expect("snapshots/events")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().trim_end_matches(".msgpack").to_owned())
        .collect();
    assert_eq!(tags, files, "each shape the log reads has a golden file, and nothing else does");
}

#[test]
fn the_current_version_of_each_event_encodes_as_its_golden_bytes() {
    // Events of the current versions are written today; their bytes must not drift silently.
    for (tag, sample) in event_samples() {
        let golden = std::fs::read(snapshots().join("events").join(format!("{tag}.msgpack"))).expect("golden file");
        assert_eq!(encode(&sample), golden, "{tag} encodes differently than its golden file");
    }
}

/// Every frame, as `(file name, JSON text)`.
fn wire_samples() -> Vec<(&'static str, String)> {
    let stored = StoredMessage {
        seq: 42,
        at_unix_ms: 1_795_000_000_000,
        author: "ann".into(),
        client_id: "c-7".into(),
        body: "hello".into(),
        edited_at_unix_ms: None,
    };
    let edited =
        StoredMessage { body: "hello, all".into(), edited_at_unix_ms: Some(1_795_000_000_900), ..stored.clone() };
    let edit = Amendment {
        seq: 43,
        at_unix_ms: 1_795_000_000_900,
        target: 42,
        by: "ann".into(),
        body: Some("hello, all".into()),
    };
    let delete = Amendment { seq: 44, at_unix_ms: 1_795_000_001_000, target: 42, by: "ann".into(), body: None };
    let hits = Hits {
        total: 1,
        total_is_exact: true,
        hits: vec![Hit {
            room: "lobby".into(),
            seq: 42,
            author: "ann".into(),
            at_unix_ms: 1_795_000_000_000,
            snippet: "<b>hello</b>".into(),
            score: 0.2876821,
        }],
        next_cursor: Some("r20.44".into()),
        indexed_through_seq: 44,
    };
    let id = serde_json::json!(1);
    let present =
        [PresentUser { user: "ann".into(), connections: 2 }, PresentUser { user: "bob".into(), connections: 1 }];
    vec![
        ("client.join.json", r#"{"type":"join","room":"lobby"}"#.into()),
        ("client.join_since.json", r#"{"type":"join","room":"lobby","since":41}"#.into()),
        ("client.send.json", r#"{"type":"send","room":"lobby","body":"hello","client_id":"c-7"}"#.into()),
        ("client.edit.json", r#"{"type":"edit","room":"lobby","seq":42,"body":"hello, all","client_id":"c-8"}"#.into()),
        ("client.delete.json", r#"{"type":"delete","room":"lobby","seq":42,"client_id":"c-9"}"#.into()),
        (
            "client.search.json",
            r#"{"type":"search","id":1,"q":"hello -bye","room":"lobby","since":"7d","limit":20}"#.into(),
        ),
        ("client.leave.json", r#"{"type":"leave","room":"lobby"}"#.into()),
        ("client.history.json", r#"{"type":"history","room":"lobby","before":42,"limit":50}"#.into()),
        ("client.members.json", r#"{"type":"members","room":"lobby"}"#.into()),
        ("client.ping.json", r#"{"type":"ping","id":1}"#.into()),
        ("server.joined.json", render(&ServerFrame::Joined { room: "lobby", removed_through_seq: None })),
        ("server.joined_removed.json", render(&ServerFrame::Joined { room: "lobby", removed_through_seq: Some(12) })),
        ("server.ack.json", render(&ServerFrame::Ack { room: "lobby", client_id: "c-7", seq: 42 })),
        ("server.message.json", message_frame(WireMessage::of("lobby", &stored))),
        ("server.message_edited.json", message_frame(WireMessage::of("lobby", &edited))),
        ("server.edited.json", amendment_frame("lobby", &edit)),
        ("server.deleted.json", amendment_frame("lobby", &delete)),
        ("server.search_results.json", render(&ServerFrame::SearchResults { id: Some(&id), results: &hits })),
        ("server.left.json", render(&ServerFrame::Left { room: "lobby" })),
        (
            "server.history.json",
            render(&ServerFrame::History {
                room: "lobby",
                messages: vec![WireMessage::of("lobby", &stored)],
                more: true,
                removed_through_seq: None,
            }),
        ),
        ("server.members.json", render(&ServerFrame::Members { room: "lobby", members: &present })),
        ("server.member_joined.json", render(&ServerFrame::MemberJoined { room: "lobby", user: "ann" })),
        ("server.member_left.json", render(&ServerFrame::MemberLeft { room: "lobby", user: "ann" })),
        ("server.pong.json", render(&ServerFrame::Pong { id: Some(&id) })),
        (
            "server.error.json",
            error_frame(ErrorCode::BodyTooLarge, "body is 70000 bytes; the limit is 65536", Some("lobby"), Some("c-8")),
        ),
    ]
}

#[test]
fn every_wire_frame_matches_its_golden_file_and_its_documentation() {
    let dir = snapshots().join("wire");
    let schema =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/wire.md")).expect("schema/wire.md");
    if updating() {
        for (name, text) in wire_samples() {
            let path = dir.join(name);
            if !path.exists() {
                std::fs::write(&path, format!("{text}\n")).expect("write golden frame");
            }
        }
    }
    for (name, text) in wire_samples() {
        let path = dir.join(name);
        let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(golden.trim_end(), text, "{name} changed shape");
        if name.starts_with("client.") {
            parse_client_frame(&text).unwrap_or_else(|e| panic!("{name} must parse: {e}"));
        }
        assert!(schema.contains(&text), "schema/wire.md lacks the example of {name}: {text}");
    }
}
