//! Presence: who is in a room, as a user of the chat would check it. Members are listed with
//! their connection counts over HTTP and WebSocket; a connection that ends without a close
//! (dropped, reset, gone silent) leaves the list; join/leave notices come once per user when
//! `chat.join_leave` is on and never when it is off; a caller who may not read a room is
//! refused its members exactly as its history.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{config, get, start, Client};
use roomlog::auth::Anonymous;
use roomlog::token::{Claims, RoomGrant, SecretFiles};
use serde_json::{json, Value};

/// Most polls of the members list while waiting for the server to notice a dead connection
/// (10 ms apart: at most 20 s, a bound against hanging, not a measure).
const POLLS_MAX: usize = 2000;

/// The members of `room` over HTTP, as `(user, connections)` pairs, sorted by user.
async fn members(addr: SocketAddr, room: &str) -> Vec<(String, u64)> {
    let (status, body) = get(addr, &format!("/api/rooms/{room}/members")).await;
    assert_eq!(status, 200, "members of {room}: {body}");
    assert_eq!(body["room"], room);
    pairs(&body["members"])
}

fn pairs(list: &Value) -> Vec<(String, u64)> {
    list.as_array()
        .expect("a members list")
        .iter()
        .map(|m| {
            let user = m["user"].as_str().expect("user").to_owned();
            (user, m["connections"].as_u64().expect("connections"))
        })
        .collect()
}

fn expect(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|&(u, c)| (u.to_owned(), c)).collect()
}

/// Polls the members of `room` until they are `want` (bounded); returns what it saw last.
async fn members_become(addr: SocketAddr, room: &str, want: &[(&str, u64)]) -> Vec<(String, u64)> {
    let want = expect(want);
    let mut seen = Vec::new();
    for _ in 0..POLLS_MAX {
        seen = members(addr, room).await;
        if seen == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_one_with_two_connections_are_listed_with_their_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await;
    let addr = server.addr();
    assert_eq!(members(addr, "lobby").await, expect(&[]), "nobody yet, and no messages either");

    let mut ann_laptop = Client::connect(addr, "ann").await;
    let mut ann_phone = Client::connect(addr, "ann").await;
    let mut bob = Client::connect(addr, "bob").await;
    let _cy_elsewhere = Client::connect(addr, "cy").await; // connected, in no room
    ann_laptop.join("lobby", None).await;
    ann_phone.join("lobby", None).await;
    bob.join("lobby", None).await;
    assert_eq!(members(addr, "lobby").await, expect(&[("ann", 2), ("bob", 1)]));

    // The WebSocket frame says the same, to a member and to a reader who has not joined.
    bob.send(json!({"type": "members", "room": "lobby"})).await;
    let frame = bob.recv().await;
    assert_eq!(frame["type"], "members", "{frame}");
    assert_eq!(frame["room"], "lobby");
    assert_eq!(pairs(&frame["members"]), expect(&[("ann", 2), ("bob", 1)]));
    let mut dee = Client::connect(addr, "dee").await;
    dee.send(json!({"type": "members", "room": "lobby"})).await;
    assert_eq!(pairs(&dee.recv().await["members"]), expect(&[("ann", 2), ("bob", 1)]));

    // Leaving with one connection lowers the count; with the last, the user is gone.
    ann_phone.send(json!({"type": "leave", "room": "lobby"})).await;
    assert_eq!(ann_phone.recv().await["type"], "left");
    assert_eq!(members(addr, "lobby").await, expect(&[("ann", 1), ("bob", 1)]));
    ann_laptop.send(json!({"type": "leave", "room": "lobby"})).await;
    assert_eq!(ann_laptop.recv().await["type"], "left");
    assert_eq!(members(addr, "lobby").await, expect(&[("bob", 1)]));
    assert_eq!(members(addr, "elsewhere").await, expect(&[]), "another room has its own members");
    server.shutdown().await;
}

/// A WebSocket to `addr` as `name` whose TCP connection resets (RST, not FIN) when dropped:
/// what the server sees when a client is killed or its network goes.
async fn resetting_client(addr: SocketAddr, name: &str) -> Client {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?name={name}")).await.expect("ws connects");
    if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_ref() {
        // Deprecated because a non-zero linger blocks the thread on drop; a zero one does not
        // block, it resets the connection, which is the point here.
        #[allow(deprecated)]
        tcp.set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
    }
    Client::from_stream(ws, name)
}

/// A client that reads (and so answers the server's pings) until its task is aborted, which
/// drops it: a client killed mid-flight.
fn reading(mut client: Client) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while client.try_recv().await.is_some() {} })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_end_without_a_close_leave_the_members_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    // Short, so that the silent client is found out quickly (the server pings every third).
    config.limits.idle_timeout = Duration::from_secs(2);
    let server = start(config).await;
    let addr = server.addr();
    let mut aborted = Client::connect(addr, "ann").await;
    let mut reset = resetting_client(addr, "ann").await;
    let mut kept = Client::connect(addr, "cy").await;
    for client in [&mut aborted, &mut reset, &mut kept] {
        client.join("lobby", None).await;
    }
    let (aborted, reset, _kept) = (reading(aborted), reading(reset), reading(kept));
    assert_eq!(members(addr, "lobby").await, expect(&[("ann", 2), ("cy", 1)]));

    // A client task aborted: its socket is dropped without a close frame (FIN).
    aborted.abort();
    let seen = members_become(addr, "lobby", &[("ann", 1), ("cy", 1)]).await;
    assert_eq!(seen, expect(&[("ann", 1), ("cy", 1)]), "an aborted client's connection is counted out");

    // A client killed: its TCP connection resets (RST).
    reset.abort();
    let seen = members_become(addr, "lobby", &[("cy", 1)]).await;
    assert_eq!(seen, expect(&[("cy", 1)]), "a reset connection is counted out");

    // A client that stays connected but stops reading, so stops answering pings: the idle
    // timeout ends it. `kept` answers the pings and stays.
    let mut silent = Client::connect(addr, "bob").await;
    silent.join("lobby", None).await;
    assert_eq!(members(addr, "lobby").await, expect(&[("bob", 1), ("cy", 1)]));
    let seen = members_become(addr, "lobby", &[("cy", 1)]).await;
    assert_eq!(seen, expect(&[("cy", 1)]), "an idle connection is counted out, a live one stays");
    drop(silent);
    server.shutdown().await;
}

/// Reads the next frame and asserts it is the `message` with `body`: a notice, had one been
/// queued before the message, would have come first.
async fn next_is_message(client: &mut Client, body: &str) {
    let frame = client.recv().await;
    assert_eq!((frame["type"].as_str(), frame["body"].as_str()), (Some("message"), Some(body)), "{frame}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_leave_notices_come_once_per_user_when_enabled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.chat.join_leave = true;
    let server = start(config).await;
    let addr = server.addr();
    let mut bob = Client::connect(addr, "bob").await;
    bob.join("lobby", None).await;

    let mut ann_laptop = Client::connect(addr, "ann").await;
    ann_laptop.join("lobby", None).await;
    assert_eq!(bob.recv().await, json!({"type": "member_joined", "room": "lobby", "user": "ann"}));
    // The joiner is not told of itself: its own ack comes first (say() checks it).
    ann_laptop.say("lobby", "one", "1").await;
    next_is_message(&mut bob, "one").await;

    // A second connection of ann: no notice.
    let mut ann_phone = Client::connect(addr, "ann").await;
    ann_phone.join("lobby", Some(u64::MAX)).await; // nothing replayed: live frames only
    ann_phone.say("lobby", "two", "2").await;
    next_is_message(&mut bob, "two").await;
    next_is_message(&mut ann_laptop, "two").await;

    // One of ann's connections leaves: no notice, ann is still there.
    ann_phone.send(json!({"type": "leave", "room": "lobby"})).await;
    assert_eq!(ann_phone.recv().await["type"], "left");
    ann_laptop.say("lobby", "three", "3").await;
    next_is_message(&mut bob, "three").await;

    // Her last connection dies without a close: one notice, whoever is left hears it once.
    drop(ann_laptop);
    assert_eq!(bob.recv().await, json!({"type": "member_left", "room": "lobby", "user": "ann"}));
    let mut cy = Client::connect(addr, "cy").await;
    cy.join("lobby", Some(u64::MAX)).await;
    assert_eq!(bob.recv().await, json!({"type": "member_joined", "room": "lobby", "user": "cy"}));
    cy.say("lobby", "four", "4").await;
    next_is_message(&mut bob, "four").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_join_or_leave_notices_when_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await;
    let addr = server.addr();
    let mut bob = Client::connect(addr, "bob").await;
    bob.join("lobby", None).await;
    let mut ann = Client::connect(addr, "ann").await;
    ann.join("lobby", None).await;
    ann.say("lobby", "hi", "1").await;
    next_is_message(&mut bob, "hi").await;
    drop(ann);
    // Once the server has counted ann out, any notice would be queued before the next message.
    let seen = members_become(addr, "lobby", &[("bob", 1)]).await;
    assert_eq!(seen, expect(&[("bob", 1)]));
    let mut cy = Client::connect(addr, "cy").await;
    cy.join("lobby", Some(u64::MAX)).await;
    cy.say("lobby", "hello", "1").await;
    next_is_message(&mut bob, "hello").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_refused_to_exactly_those_refused_the_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.auth.anonymous = Anonymous::None;
    config.auth.admin_from_host = false;
    let secrets = SecretFiles { dir: config.secret_dir() }.load_or_create().expect("secret");
    let server = start(config).await;
    let addr = server.addr();
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs() + 3600;
    let token = |user: &str, pattern: &str| {
        secrets.issue(&Claims {
            user: user.into(),
            rooms: vec![RoomGrant { pattern: pattern.into(), write: true }],
            admin: false,
            exp,
            session: None,
            files: Vec::new(),
        })
    };
    let (ann, rita) = (token("ann", "team-*"), token("rita", "public"));
    let mut ann_ws = Client::connect_query(addr, &format!("token={ann}"), "ann").await.expect("ann connects");
    ann_ws.join("team-a", None).await;
    ann_ws.say("team-a", "plans", "1").await;

    let http = reqwest::Client::new();
    let answer = |path: String, token: Option<String>| {
        let mut request = http.get(format!("http://{addr}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.expect("http");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("json");
            (status, body["error"]["code"].as_str().map(str::to_owned), body)
        }
    };
    let tampered = format!("{}x", &rita);
    let cases: [(&str, &str, Option<String>); 6] = [
        ("reader of the room", "team-a", Some(ann.clone())),
        ("token for another room", "team-a", Some(rita.clone())),
        ("no token", "team-a", None),
        ("tampered token", "team-a", Some(tampered)),
        ("bad room name", "no!such", Some(ann.clone())),
        ("room nobody may read", "secret", Some(rita.clone())),
    ];
    for (who, room, token) in cases {
        let (history_status, history_code, _) = answer(format!("/api/rooms/{room}/messages"), token.clone()).await;
        let (status, code, body) = answer(format!("/api/rooms/{room}/members"), token).await;
        assert_eq!(
            (status, &code),
            (history_status, &history_code),
            "{who}: members must be refused as history: {body}"
        );
        if status == 200 {
            assert_eq!(pairs(&body["members"]), expect(&[("ann", 1)]), "{who}");
        } else {
            assert!(matches!(status, 400 | 401 | 403), "{who}: {status} {body}");
        }
    }

    // Over the WebSocket: refused as the history frame is.
    let mut rita_ws = Client::connect_query(addr, &format!("token={rita}"), "rita").await.expect("rita connects");
    rita_ws.send(json!({"type": "history", "room": "team-a"})).await;
    let refused_history = rita_ws.recv().await;
    rita_ws.send(json!({"type": "members", "room": "team-a"})).await;
    let refused_members = rita_ws.recv().await;
    assert_eq!(refused_history["code"], "forbidden", "{refused_history}");
    assert_eq!(
        (&refused_members["type"], &refused_members["code"], &refused_members["room"]),
        (&refused_history["type"], &refused_history["code"], &refused_history["room"]),
        "{refused_members}"
    );
    // Bad input gets its code, and the connection goes on.
    rita_ws.send(json!({"type": "members", "room": "../x"})).await;
    assert_eq!(rita_ws.recv().await["code"], "invalid_room");
    rita_ws.send(json!({"type": "members"})).await;
    assert_eq!(rita_ws.recv().await["code"], "missing_field");
    rita_ws.send(json!({"type": "members", "room": "public", "extra": 1})).await;
    assert_eq!(rita_ws.recv().await["code"], "unknown_field");
    rita_ws.ping(1).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_room_restarts_its_members_are_back_and_nobody_is_announced_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.chat.join_leave = true;
    let server = start(config).await;
    let addr = server.addr();
    let mut bob = Client::connect(addr, "bob").await;
    bob.join("lobby", None).await;
    let mut ann = Client::connect(addr, "ann").await;
    ann.join("lobby", None).await;
    assert_eq!(bob.recv().await, json!({"type": "member_joined", "room": "lobby", "user": "ann"}));

    // The room's actor fails; its successor starts empty and the connections come back.
    let room = roomlog::event::RoomId::parse("lobby").expect("room");
    server.rooms().inject_failure(&room).await.expect("inject");
    let seen = members_become(addr, "lobby", &[("ann", 1), ("bob", 1)]).await;
    assert_eq!(seen, expect(&[("ann", 1), ("bob", 1)]), "presence is rebuilt from the connections");
    // Nobody left or arrived as far as users can tell: no notice precedes the next message.
    ann.say("lobby", "still here", "1").await;
    next_is_message(&mut bob, "still here").await;
    server.shutdown().await;
}
