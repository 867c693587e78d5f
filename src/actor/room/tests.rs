//! A room actor under its supervisor, on the memory log with the history projection running,
//! driven as a connection drives it: join, post, resume; frames read from the member's queue.

use std::sync::Arc;

use ractor::rpc::CallResult;
use serde_json::Value;
use tokio::sync::{mpsc, Notify};

use super::*;
use crate::actor::rooms::Rooms;
use crate::actor::QueuedBytes;
use crate::config::{ChatConfig, Limits};
use crate::log::EventLog;
use crate::projection::testing::{append, caught_up, memory_log, posted, room, state, WAIT};
use crate::projection::{history, Runner};

/// The rooms of one test, with what they stand on.
struct Chat {
    log: EventLog,
    rooms: Rooms,
    history_runner: Runner,
    _state: crate::state::StateDb,
}

async fn chat(config: ChatConfig) -> Chat {
    let log = memory_log();
    let db = state();
    let (history, projection) = history::open(&db, std::sync::Arc::new(log.clone())).expect("open history");
    let (history_runner, _following) = Runner::start(log.clone(), projection, None).await.expect("start history");
    let ctx = ChatContext {
        log: log.clone(),
        history,
        history_runner: history_runner.clone(),
        chat: config,
        limits: Limits::default(),
    };
    let rooms = Rooms::start(ctx).await.expect("start the room supervisor");
    Chat { log, rooms, history_runner, _state: db }
}

impl Chat {
    async fn room(&self, name: &str) -> ActorRef<RoomMsg> {
        self.rooms.get(&room(name)).await.expect("the room starts")
    }

    async fn stop(self) {
        self.rooms.stop().await;
        self.log.close().await;
    }
}

/// A connection as the room sees it, and the queue its frames arrive on.
struct Connection {
    id: MemberId,
    user: String,
    frames: mpsc::Receiver<Outbound>,
    member: Option<Member>,
}

fn connection(id: MemberId, user: &str) -> Connection {
    let (tx, frames) = mpsc::channel(1024);
    let member = Member {
        id,
        user: user.into(),
        tx,
        kick: Arc::new(Notify::new()),
        queued: Arc::new(QueuedBytes::new(16 << 20)),
    };
    Connection { id, user: user.into(), frames, member: Some(member) }
}

impl Connection {
    /// Joins `actor` (resuming after `since` if given) and returns what it replays.
    async fn join(&mut self, actor: &ActorRef<RoomMsg>, since: Option<u64>) -> JoinReply {
        let member = self.member.take().expect("a connection joins once; make a new one to join again");
        match actor.call(|reply| RoomMsg::Join { member, since, quiet: false, reply }, Some(WAIT)).await {
            Ok(CallResult::Success(Ok(joined))) => joined,
            other => panic!("join failed: {other:?}"),
        }
    }

    fn post(&self, actor: &ActorRef<RoomMsg>, client_id: &str, body: &str) {
        let post = RoomMsg::Post {
            member: self.id,
            author: self.user.clone(),
            client_id: client_id.into(),
            body: body.into(),
        };
        actor.cast(post).expect("the room takes the post");
    }

    /// The next frame queued for this connection, parsed.
    async fn next(&mut self) -> Value {
        let outbound = tokio::time::timeout(WAIT, self.frames.recv())
            .await
            .expect("a frame arrives within the wait")
            .expect("the room keeps the queue open");
        serde_json::from_str(&outbound.frame).expect("frames are JSON")
    }

    /// Reads frames until the `ack` of `client_id`; returns its seq.
    async fn ack(&mut self, client_id: &str) -> u64 {
        loop {
            let frame = self.next().await;
            if frame["type"] == "ack" && frame["client_id"] == client_id {
                return frame["seq"].as_u64().expect("an ack has a seq");
            }
            assert_ne!(frame["type"], "error", "the post was refused: {frame}");
        }
    }

    /// Posts and waits for the acknowledgement.
    async fn send(&mut self, actor: &ActorRef<RoomMsg>, client_id: &str, body: &str) -> u64 {
        self.post(actor, client_id, body);
        self.ack(client_id).await
    }
}

fn replayed(reply: &JoinReply) -> Vec<u64> {
    reply.replay.iter().map(|m| m.seq).collect()
}

/// The `MessagePosted` events of the log with this author and client id.
async fn stored(log: &EventLog, author: &str, client_id: &str) -> Vec<u64> {
    let all = log.read_range(1, 100_000).await.expect("read the log");
    all.iter()
        .filter(|e| matches!(&e.event, Event::MessagePosted(p) if p.author == author && p.client_id == client_id))
        .map(|e| e.seq)
        .collect()
}

#[tokio::test]
async fn given_messages_in_a_room_when_a_member_joins_then_it_gets_the_most_recent_in_order() {
    let chat = chat(ChatConfig { recent_count: 3, ..ChatConfig::default() }).await;
    let actor = chat.room("lobby").await;
    let mut ann = connection(1, "ann");
    ann.join(&actor, None).await;
    let mut sent = Vec::new();
    for n in 0..5 {
        sent.push(ann.send(&actor, &format!("c{n}"), &format!("hello {n}")).await);
    }

    let joined = connection(2, "bob").join(&actor, None).await;

    assert!(joined.registered);
    assert_eq!(replayed(&joined), sent[2..].to_vec(), "the newest three, oldest first");
    let frame: Value = serde_json::from_str(&joined.replay[0].frame).expect("JSON");
    assert_eq!((frame["type"].as_str(), frame["body"].as_str()), (Some("message"), Some("hello 2")));
    chat.stop().await;
}

#[tokio::test]
async fn given_a_member_that_saw_a_seq_when_it_resumes_since_it_then_it_gets_every_later_message_once() {
    let chat = chat(ChatConfig::default()).await;
    let actor = chat.room("lobby").await;
    let mut ann = connection(1, "ann");
    ann.join(&actor, None).await;
    let mut sent = Vec::new();
    for n in 0..6 {
        sent.push(ann.send(&actor, &format!("c{n}"), "before").await);
    }

    let mut bob = connection(2, "bob");
    let resumed = bob.join(&actor, Some(sent[2])).await;
    let live = ann.send(&actor, "live", "after").await;
    let frame = bob.next().await;

    assert_eq!(replayed(&resumed), sent[3..].to_vec(), "exactly the messages after seq {}", sent[2]);
    assert_eq!((frame["type"].as_str(), frame["seq"].as_u64()), (Some("message"), Some(live)), "then live ones");
    assert!(bob.frames.try_recv().is_err(), "and nothing twice");
    chat.stop().await;
}

#[tokio::test]
async fn given_a_gap_older_than_memory_when_a_member_resumes_then_the_history_fills_it_in_steps_without_holes_or_repeats(
) {
    let config =
        ChatConfig { recent_count: 2, ring_capacity: 3, dedup_window: 3, replay_batch_max: 4, ..ChatConfig::default() };
    let chat = chat(config).await;
    let actor = chat.room("lobby").await;
    let mut ann = connection(1, "ann");
    ann.join(&actor, None).await;
    let mut sent = Vec::new();
    for n in 0..12 {
        sent.push(ann.send(&actor, &format!("c{n}"), &format!("m{n}")).await);
    }

    // As a connection does: join again after the last replayed seq until registered.
    let (mut got, mut since, mut steps) = (Vec::new(), sent[0], 0);
    loop {
        steps += 1;
        assert!(steps <= 10, "a resume of 11 messages in steps of 4 ends");
        let reply = connection(10 + steps, "bob").join(&actor, Some(since)).await;
        got.extend(replayed(&reply));
        since = got.last().copied().unwrap_or(since);
        if reply.registered {
            break;
        }
    }

    assert_eq!(got, sent[1..].to_vec());
    assert!(steps > 1, "the gap was longer than one step of the history");
    chat.stop().await;
}

#[tokio::test]
async fn given_a_post_when_its_ack_arrives_then_the_log_already_holds_it_under_that_seq_and_the_message_follows() {
    let chat = chat(ChatConfig::default()).await;
    let actor = chat.room("lobby").await;
    let mut ann = connection(1, "ann");
    ann.join(&actor, None).await;

    ann.post(&actor, "c1", "is this durable?");
    let ack = ann.next().await;

    assert_eq!(ack["type"], "ack", "the sender hears the ack before the message");
    let seq = ack["seq"].as_u64().expect("seq");
    let record = chat.log.read_range(seq, 1).await.expect("read the log");
    match record.first().map(|e| (e.seq, &e.event)) {
        Some((at, Event::MessagePosted(p))) if at == seq => {
            assert_eq!((p.author.as_str(), p.client_id.as_str(), p.body.as_str()), ("ann", "c1", "is this durable?"));
        }
        other => panic!("the log does not hold the acknowledged message at {seq}: {other:?}"),
    }
    let message = ann.next().await;
    assert_eq!((message["type"].as_str(), message["seq"].as_u64()), (Some("message"), Some(seq)));
    chat.stop().await;
}

#[tokio::test]
async fn given_a_client_id_sent_twice_then_both_are_acknowledged_with_one_seq_and_it_is_stored_once() {
    let chat = chat(ChatConfig::default()).await;
    let actor = chat.room("lobby").await;
    let mut ann = connection(1, "ann");
    ann.join(&actor, None).await;

    // A retry while the first is in flight, and one after it was acknowledged.
    ann.post(&actor, "dup", "once");
    ann.post(&actor, "dup", "once");
    let (first, second) = (ann.ack("dup").await, ann.ack("dup").await);
    let third = ann.send(&actor, "dup", "once").await;

    assert_eq!((second, third), (first, first));
    assert_eq!(stored(&chat.log, "ann", "dup").await, vec![first]);
    let other_author = connection(2, "bob");
    let mut bob = other_author;
    bob.join(&actor, None).await;
    let bobs = bob.send(&actor, "dup", "mine").await;
    assert_ne!(bobs, first, "a client id is unique per author, not per room");
    chat.stop().await;
}

#[tokio::test]
async fn given_a_room_restarted_after_a_failure_when_a_client_retries_then_it_gets_the_original_seq() {
    let chat = chat(ChatConfig::default()).await;
    let actor = chat.room("lobby").await;
    let mut ann = connection(1, "ann");
    ann.join(&actor, None).await;
    let original = ann.send(&actor, "c1", "before the failure").await;
    caught_up(&chat.history_runner, &chat.log).await;

    chat.rooms.inject_failure(&room("lobby")).await.expect("inject a failure");
    let restarted = tokio::time::timeout(WAIT, async {
        loop {
            let now = chat.room("lobby").await;
            if now.get_id() != actor.get_id() {
                return now;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the supervisor restarts the room");
    let mut again = connection(2, "ann");
    let rejoined = again.join(&restarted, Some(0)).await;
    let retried = again.send(&restarted, "c1", "before the failure").await;

    assert_eq!(replayed(&rejoined), vec![original], "the restarted room loaded its history");
    assert_eq!(retried, original, "the duplicate window survived the restart");
    assert_eq!(stored(&chat.log, "ann", "c1").await, vec![original]);
    chat.stop().await;
}

#[tokio::test]
async fn given_a_message_of_someone_else_when_a_member_edits_it_then_it_is_refused_and_nothing_is_stored() {
    let chat = chat(ChatConfig::default()).await;
    let actor = chat.room("lobby").await;
    let mut ann = connection(1, "ann");
    ann.join(&actor, None).await;
    let seq = ann.send(&actor, "c1", "mine").await;
    let mut bob = connection(2, "bob");
    bob.join(&actor, None).await;
    let head = chat.log.head();

    let amend = |by: &str, admin| RoomMsg::Amend {
        member: 2,
        by: by.into(),
        admin,
        client_id: "e1".into(),
        seq,
        body: Some("not yours".into()),
    };
    actor.cast(amend("bob", false)).expect("cast");
    let refused = bob.next().await;

    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("forbidden")));
    assert_eq!(chat.log.head(), head, "nothing was appended");
    actor.cast(amend("bob", true)).expect("cast");
    let edit_seq = bob.ack("e1").await;
    assert!(edit_seq > head, "an admin may edit it");
    chat.stop().await;
}

#[tokio::test]
async fn given_a_history_with_messages_when_a_room_starts_then_a_joiner_gets_them_from_the_log() {
    let chat = chat(ChatConfig::default()).await;
    let mut sent = Vec::new();
    for n in 0..3 {
        sent.push(append(&chat.log, posted("archive", "ann", &format!("c{n}"), "written earlier")).await.seq);
    }
    append(&chat.log, posted("other", "ann", "c0", "another room")).await;

    let actor = chat.room("archive").await;
    let joined = connection(1, "bob").join(&actor, None).await;

    assert_eq!(replayed(&joined), sent, "the room loads what the history has of the log, and only its own");
    chat.stop().await;
}
