//! Chat over real loopback WebSockets: what a client sees when it joins, sends, resumes, and
//! misbehaves, and what survives a restart.

mod common;

use std::time::Duration;

use common::{bodies, config, get, lobby_pair, seqs, start, Client};
use roomlog::event::RoomId;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_client_that_joins_gets_the_recent_messages_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await;
    let mut ann = Client::connect(server.addr(), "ann").await;
    ann.join("lobby", None).await;
    let mut sent = Vec::new();
    for n in 0..60 {
        sent.push(ann.say("lobby", &format!("m{n}"), &format!("c{n}")).await);
    }

    let mut bob = Client::connect(server.addr(), "bob").await;
    bob.join("lobby", None).await;
    let recent = bob.messages(50).await;
    assert_eq!(seqs(&recent), sent[10..].to_vec(), "the 50 newest, oldest first");
    assert_eq!(recent[0]["author"], "ann");
    assert_eq!(recent[49]["body"], "m59");
    bob.ping(1).await; // nothing else was sent to bob
    server.shutdown().await;
}

#[tokio::test]
async fn two_clients_see_each_others_messages_in_the_same_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, mut ann, mut bob) = lobby_pair(config(dir.path())).await;

    // Both send at once, without waiting for acks; then each reads everything.
    for n in 0..50 {
        ann.send(json!({"type":"send","room":"lobby","body":format!("ann{n}"),"client_id":format!("a{n}")})).await;
        bob.send(json!({"type":"send","room":"lobby","body":format!("bob{n}"),"client_id":format!("b{n}")})).await;
    }
    let mut seen = Vec::new();
    for client in [&mut ann, &mut bob] {
        seen.push(client.messages_and_acks(100, 50).await.0);
    }
    assert_eq!(seqs(&seen[0]), seqs(&seen[1]), "same messages, same order");
    assert_eq!(bodies(&seen[0]), bodies(&seen[1]));
    let order = seqs(&seen[0]);
    assert!(order.windows(2).all(|w| w[0] < w[1]), "seq order: {order:?}");
    let mut from_ann: Vec<_> = bodies(&seen[0]).into_iter().filter(|b| b.starts_with("ann")).collect();
    assert_eq!(from_ann.len(), 50);
    from_ann.dedup();
    assert_eq!(from_ann.len(), 50, "no duplicates");
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_resumes_from_a_seq_gets_exactly_what_it_missed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await;
    let addr = server.addr();
    let mut ann = Client::connect(addr, "ann").await;
    ann.join("lobby", None).await;
    let mut bob = Client::connect(addr, "bob").await;
    bob.join("lobby", None).await;
    let mut last_seen = 0;
    for n in 0..5 {
        ann.say("lobby", &format!("before{n}"), &format!("b{n}")).await;
        last_seen = bob.recv().await["seq"].as_u64().expect("seq");
    }
    drop(bob); // the network drops

    let mut missed = Vec::new();
    for n in 0..30 {
        missed.push(ann.say("lobby", &format!("missed{n}"), &format!("m{n}")).await);
    }
    let mut bob = Client::connect(addr, "bob").await;
    bob.join("lobby", Some(last_seen)).await;
    let replay = bob.messages(30).await;
    assert_eq!(seqs(&replay), missed, "exactly the missed ones, once each, in order");

    ann.say("lobby", "live", "live").await;
    let live = bob.recv().await;
    assert_eq!(live["body"], "live", "then live messages, with nothing in between");
    server.shutdown().await;
}

#[tokio::test]
async fn a_resume_across_a_gap_longer_than_memory_is_replayed_in_steps_without_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.chat.recent_count = 10;
    config.chat.ring_capacity = 100;
    config.chat.replay_batch_max = 40;
    config.normalise();
    let server = start(config).await;
    let mut ann = Client::connect(server.addr(), "ann").await;
    ann.join("lobby", None).await;
    let mut sent = Vec::new();
    for n in 0..500 {
        ann.send(json!({"type":"send","room":"lobby","body":format!("m{n}"),"client_id":format!("c{n}")})).await;
    }
    while sent.len() < 500 {
        let frame = ann.recv().await;
        if frame["type"] == "message" {
            sent.push(frame["seq"].as_u64().expect("seq"));
        }
    }
    let mut bob = Client::connect(server.addr(), "bob").await;
    bob.join("lobby", Some(sent[9])).await;
    let replay = bob.messages(490).await;
    assert_eq!(seqs(&replay), sent[10..].to_vec());
    bob.ping(7).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_retried_send_with_the_same_client_id_is_stored_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await;
    let mut ann = Client::connect(server.addr(), "ann").await;
    ann.join("lobby", None).await;
    // Two copies back to back (the second while the first is in flight), then one after.
    let send = json!({"type":"send","room":"lobby","body":"hello","client_id":"same"});
    ann.send(send.clone()).await;
    ann.send(send.clone()).await;
    let (messages, mut acks) = ann.messages_and_acks(1, 2).await;
    ann.send(send).await;
    let late = ann.recv().await;
    assert_eq!(late["type"], "ack");
    acks.push(late["seq"].as_u64().expect("seq"));
    assert!(acks.iter().all(|&s| s == acks[0]), "every ack names the same seq: {acks:?}");
    assert_eq!(messages.len(), 1);
    ann.ping(1).await; // and no second copy was delivered

    // Also after a restart, when the original is no longer in any room's memory.
    server.shutdown().await;
    let server = start(config(dir.path())).await;
    let mut ann = Client::connect(server.addr(), "ann").await;
    ann.join("lobby", Some(acks[0])).await;
    ann.send(json!({"type":"send","room":"lobby","body":"hello","client_id":"same"})).await;
    assert_eq!(ann.recv().await, json!({"type":"ack","room":"lobby","client_id":"same","seq":acks[0]}));
    ann.ping(2).await;
    let (_, page) = get(server.addr(), "/api/rooms/lobby/messages").await;
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(1), "{page}");
    server.shutdown().await;
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_nobody_else_notices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.limits.body_bytes_max = 1000;
    let server = start(config).await;
    let addr = server.addr();
    let mut ann = Client::connect(addr, "ann").await;
    let mut bob = Client::connect(addr, "bob").await;
    ann.join("lobby", None).await;
    bob.join("lobby", None).await;

    let cases: Vec<(Message, &str)> = vec![
        (Message::text("{\"type\":\"send\",\"room\":"), "malformed_json"),
        (Message::text("[]"), "malformed_json"),
        (Message::text(json!({"type":"shout","room":"lobby"}).to_string()), "unknown_type"),
        (Message::text(json!({"type":"send","room":"lobby","body":"x"}).to_string()), "missing_field"),
        (Message::text(json!({"type":"join","room":"lobby","colour":"red"}).to_string()), "unknown_field"),
        (Message::text(json!({"type":"join","room":["lobby"]}).to_string()), "invalid_field"),
        (Message::text(json!({"type":"join","room":"lobby","since":-4}).to_string()), "invalid_field"),
        (
            Message::text(json!({"type":"send","room":"lobby","body":"x".repeat(1001),"client_id":"big"}).to_string()),
            "body_too_large",
        ),
        (
            Message::text(json!({"type":"send","room":"lobby","body":"x","client_id":""}).to_string()),
            "invalid_client_id",
        ),
        (Message::text(json!({"type":"send","room":"../etc","body":"x","client_id":"p"}).to_string()), "invalid_room"),
        (Message::text(json!({"type":"send","room":"elsewhere","body":"x","client_id":"n"}).to_string()), "not_joined"),
        (Message::text(json!({"type":"leave","room":"elsewhere"}).to_string()), "not_joined"),
        (Message::binary(vec![0u8, 1, 2]), "binary_frame"),
    ];
    for (frame, code) in cases {
        bad_input_gets(&mut ann, frame, code).await;
    }

    // The misbehaving connection still works, and bob saw none of it.
    let seq = ann.say("lobby", "still here", "ok1").await;
    let seen = bob.recv().await;
    assert_eq!((seen["type"].as_str(), seen["seq"].as_u64()), (Some("message"), Some(seq)));
    bob.ping(3).await;
    let (_, page) = get(addr, "/api/rooms/lobby/messages").await;
    assert_eq!(bodies(page["messages"].as_array().expect("messages")), vec!["still here"], "nothing bad was stored");
    server.shutdown().await;
}

async fn bad_input_gets(client: &mut Client, frame: Message, code: &str) {
    client.send_raw(frame).await;
    let error = client.recv().await;
    assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("error"), Some(code)), "{error}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "a readable message: {error}");
}

#[tokio::test]
async fn a_frame_over_the_transport_limit_closes_only_that_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.limits.frame_bytes_max = 4096;
    let server = start(config).await;
    let mut ann = Client::connect(server.addr(), "ann").await;
    let mut bob = Client::connect(server.addr(), "bob").await;
    bob.join("lobby", None).await;
    ann.send_text("x".repeat(10_000)).await;
    assert_eq!(ann.close_code().await, Some(1009), "message too big");
    bob.say("lobby", "unaffected", "u").await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_failed_room_actor_is_restarted_and_its_members_miss_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, mut ann, mut bob) = lobby_pair(config(dir.path())).await;
    let addr = server.addr();
    let first = ann.say("lobby", "before", "1").await;
    assert_eq!(bob.recv().await["seq"].as_u64(), Some(first));

    let room = RoomId::parse("lobby").expect("room");
    server.rooms().inject_failure(&room).await.expect("inject");
    // Sends that reach the failing actor's mailbox are lost with it, unacknowledged. ann does
    // what the protocol asks of a client: it retries unacknowledged sends with the same id.
    let mut unacked: std::collections::BTreeSet<u32> = (0..5).collect();
    let mut ann_seen = Vec::new();
    for _attempt in 0..10 {
        for n in &unacked {
            ann.send(json!({"type":"send","room":"lobby","body":format!("after{n}"),"client_id":format!("a{n}")}))
                .await;
        }
        while let Ok(frame) = tokio::time::timeout(Duration::from_secs(2), ann.recv()).await {
            match frame["type"].as_str() {
                Some("ack") => {
                    let n = frame["client_id"].as_str().and_then(|c| c[1..].parse().ok()).expect("client id");
                    unacked.remove(&n);
                }
                Some("message") => ann_seen.push(frame),
                _ => panic!("unexpected {frame}"),
            }
            if unacked.is_empty() && ann_seen.len() == 5 {
                break;
            }
        }
        if unacked.is_empty() && ann_seen.len() == 5 {
            break;
        }
    }
    assert!(unacked.is_empty(), "every send is acknowledged in the end: {unacked:?} left");
    let bob_seen = bob.messages(5).await;
    let mut bodies_seen = bodies(&bob_seen);
    bodies_seen.sort();
    assert_eq!(bodies_seen, (0..5).map(|n| format!("after{n}")).collect::<Vec<_>>(), "each once");
    assert_eq!(seqs(&ann_seen), seqs(&bob_seen), "both in the same order");
    assert!(seqs(&bob_seen).windows(2).all(|w| w[0] < w[1]));
    bob.ping(1).await;
    let (_, page) = get(addr, "/api/rooms/lobby/messages").await;
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(6));
    server.shutdown().await;
}

#[tokio::test]
async fn a_room_that_fails_too_often_is_refused_for_its_restart_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.chat.restarts_max = 2;
    config.chat.restart_window = Duration::from_secs(3600);
    let server = start(config).await;
    let room = RoomId::parse("flaky").expect("room");
    let mut refused = None;
    for _ in 0..10 {
        if let Err(error) = server.rooms().inject_failure(&room).await {
            refused = Some(error);
            break;
        }
        // Wait until the supervisor has handled the failure before failing the room again.
        for _ in 0..100 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let refused = refused.expect("the room must be refused after too many failures");
    assert!(refused.to_string().contains("failed"), "{refused}");
    let mut ann = Client::connect(server.addr(), "ann").await;
    ann.send(json!({"type":"join","room":"flaky"})).await;
    assert_eq!(ann.recv().await["code"], "room_unavailable");
    ann.join("steady", None).await; // other rooms are not affected
    ann.say("steady", "fine", "f").await;
    server.shutdown().await;
}

#[tokio::test]
async fn an_idle_room_stops_and_comes_back_with_its_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.chat.room_idle_stop = Duration::from_millis(50);
    let server = start(config).await;
    let mut ann = Client::connect(server.addr(), "ann").await;
    ann.join("lobby", None).await;
    let seq = ann.say("lobby", "remember me", "r").await;
    ann.send(json!({"type":"leave","room":"lobby"})).await;
    assert_eq!(ann.recv().await, json!({"type":"left","room":"lobby"}));

    let mut rounds = 0;
    while server.rooms().active().await > 0 {
        rounds += 1;
        assert!(rounds < 1000, "the idle room never stopped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ann.join("lobby", None).await;
    let back = ann.recv().await;
    assert_eq!((back["seq"].as_u64(), back["body"].as_str()), (Some(seq), Some("remember me")));
    assert_eq!(server.rooms().active().await, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn http_lists_rooms_and_pages_through_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await;
    let addr = server.addr();
    let mut ann = Client::connect(addr, "ann").await;
    ann.join("alpha", None).await;
    ann.join("beta", None).await;
    let mut alpha = Vec::new();
    for n in 0..25 {
        alpha.push(ann.say("alpha", &format!("a{n}"), &format!("a{n}")).await);
    }
    let beta = ann.say("beta", "b0", "b0").await;
    // The history projection trails the log by a moment; wait until it has the last message.
    let mut rounds = 0;
    while server.history().checkpoint().expect("checkpoint") < beta {
        rounds += 1;
        assert!(rounds < 1000, "history never caught up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let (status, rooms) = get(addr, "/api/rooms").await;
    assert_eq!(status, 200);
    let rooms = rooms["rooms"].as_array().expect("rooms").clone();
    assert_eq!(
        rooms
            .iter()
            .map(|r| (r["room"].as_str().unwrap_or(""), r["message_count"].as_u64().unwrap_or(0)))
            .collect::<Vec<_>>(),
        vec![("alpha", 25), ("beta", 1)]
    );
    assert_eq!(rooms[1]["last_seq"].as_u64(), Some(beta));
    assert!(rooms[1]["last_at_unix_ms"].as_u64().is_some_and(|t| t > 1_600_000_000_000));

    let (_, newest) = get(addr, "/api/rooms/alpha/messages?limit=10").await;
    assert_eq!(seqs(newest["messages"].as_array().expect("messages")), alpha[15..].to_vec());
    assert_eq!(newest["more"], true);
    let (_, older) = get(addr, &format!("/api/rooms/alpha/messages?limit=10&before={}", alpha[15])).await;
    assert_eq!(seqs(older["messages"].as_array().expect("messages")), alpha[5..15].to_vec());
    let (_, oldest) = get(addr, &format!("/api/rooms/alpha/messages?limit=10&before={}", alpha[5])).await;
    assert_eq!(seqs(oldest["messages"].as_array().expect("messages")), alpha[..5].to_vec());
    assert_eq!(oldest["more"], false);
    let (_, after) = get(addr, &format!("/api/rooms/alpha/messages?after={}&limit=3", alpha[20])).await;
    assert_eq!(seqs(after["messages"].as_array().expect("messages")), alpha[21..24].to_vec());

    for (path, status, code) in [
        ("/api/rooms/alpha/messages?limit=ten", 400, "invalid_query"),
        ("/api/rooms/alpha/messages?before=3&after=1", 400, "invalid_query"),
        ("/api/rooms/alpha/messages?sort=asc", 400, "invalid_query"),
        ("/api/rooms/no-such-room/messages", 404, "room_not_found"),
        ("/api/rooms/bad%20name/messages", 400, "invalid_room"),
        ("/api/nothing", 404, "not_found"),
        ("/ws?name=ann", 400, "not_a_websocket_upgrade"),
    ] {
        let (got, body) = get(addr, path).await;
        assert_eq!((got, body["error"]["code"].as_str()), (status, Some(code)), "{path}: {body}");
    }
    let (status, health) = get(addr, "/healthz").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, ready) = get(addr, "/readyz").await;
    assert_eq!((status, ready["ready"].as_bool()), (200, Some(true)), "{ready}");

    let unnamed = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await;
    assert!(unnamed.is_err(), "a connection without a name is refused");
    server.shutdown().await;
}

#[tokio::test]
async fn after_a_restart_history_is_back_and_seqs_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await;
    let mut ann = Client::connect(server.addr(), "ann").await;
    ann.join("lobby", None).await;
    let mut sent = Vec::new();
    for n in 0..20 {
        sent.push(ann.say("lobby", &format!("m{n}"), &format!("c{n}")).await);
    }
    server.shutdown().await;
    assert_eq!(ann.close_code().await, Some(1001), "clients are told the server is going away");

    let server = start(config(dir.path())).await;
    let mut bob = Client::connect(server.addr(), "bob").await;
    bob.join("lobby", Some(0)).await;
    assert_eq!(seqs(&bob.messages(20).await), sent);
    let next = bob.say("lobby", "after restart", "x").await;
    assert_eq!(next, sent[19] + 1, "seqs continue where they stopped");
    server.shutdown().await;
}

#[tokio::test]
async fn a_join_since_a_seq_beyond_the_head_replays_nothing_and_then_delivers_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await;
    let mut ann = Client::connect(server.addr(), "ann").await;
    ann.join("lobby", None).await;
    ann.say("lobby", "old", "1").await;
    let mut bob = Client::connect(server.addr(), "bob").await;
    bob.join("lobby", Some(u64::MAX)).await;
    let seq = ann.say("lobby", "new", "2").await;
    let live = bob.recv().await;
    assert_eq!((live["seq"].as_u64(), live["body"].as_str()), (Some(seq), Some("new")));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_and_the_others_keep_chatting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.limits.outbound_queue_max = 16;
    config.normalise();
    let server = start(config).await;
    let addr = server.addr();
    let mut ann = Client::connect(addr, "ann").await;
    let mut bob = Client::connect(addr, "bob").await;
    let mut slow = Client::connect(addr, "slow").await;
    for client in [&mut ann, &mut bob, &mut slow] {
        client.join("lobby", None).await;
    }
    // slow reads nothing from here on. 60 KiB messages fill its socket buffers, then its
    // queue of 16 frames, then the room disconnects it.
    let body = "x".repeat(60 * 1024);
    let total = 400;
    for round in 0..total / 4 {
        for n in round * 4..round * 4 + 4 {
            ann.send(json!({"type":"send","room":"lobby","body":body,"client_id":format!("{n}")})).await;
        }
        // ann and bob keep up as normal clients do.
        for client in [&mut ann, &mut bob] {
            let mut messages = 0;
            while messages < 4 {
                match client.recv().await["type"].as_str() {
                    Some("message") => messages += 1,
                    Some("ack") => {}
                    other => panic!("{}: unexpected {other:?}", client.name),
                }
            }
        }
    }
    assert_eq!(slow.close_code().await, Some(4008), "the slow client is told why it was dropped");
    ann.say("lobby", "after", "after").await;
    let last = bob.recv().await;
    assert_eq!(last["body"], "after", "bob received every message and nothing else");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reads_its_own_acknowledged_message_over_http_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await;
    let mut ann = Client::connect(server.addr(), "ann").await;
    ann.join("lobby", None).await;
    for n in 0..30 {
        let seq = ann.say("lobby", &format!("m{n}"), &format!("{n}")).await;
        let (_, page) = get(server.addr(), &format!("/api/rooms/lobby/messages?after={}", seq - 1)).await;
        assert_eq!(seqs(page["messages"].as_array().expect("messages")), vec![seq], "round {n}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_closes_gets_its_close_frame_echoed() {
    // RFC 6455 §5.5.1: an endpoint that receives a Close frame answers with one; without it
    // the client sees 1006 (abnormal closure) instead of the code it sent.
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await;
    let mut ann = Client::connect(server.addr(), "ann").await;
    ann.join("lobby", None).await;
    let bye = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "bye".into(),
    };
    ann.send_raw(Message::Close(Some(bye))).await;
    assert_eq!(ann.close_code().await, Some(1000), "the server echoes the client's close code");
    server.shutdown().await;
}
