//! Cluster mode (issue 16): roomlog nodes sharing one log on a 3-node NATS JetStream cluster,
//! all on loopback. Every nats-server is stopped by its pid (`nats_harness::Cluster` on drop).

mod common;

use std::time::{Duration, Instant};

use common::{get, projections_caught_up, search_all, whole_history, Client};
use roomlog::log::LogBackend;
use roomlog::nats_harness::Cluster;
use roomlog::{Config, Server};
use serde_json::{json, Value};

/// A node's configuration: its own data folder, the shared log on `nats`.
fn node_config(dir: &std::path::Path, nats: &Cluster) -> Config {
    let mut config = common::config(dir);
    config.log.backend = LogBackend::Jetstream;
    config.jetstream.servers = nats.urls();
    config.jetstream.replicas = 3;
    config
}

async fn nodes(n: usize, dir: &std::path::Path, nats: &Cluster) -> Vec<Server> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(common::start(node_config(&dir.join(format!("node{i}")), nats)).await);
    }
    out
}

/// One cluster test at a time: each runs 3 nats-servers and up to 3 nodes, which is what two
/// cores carry; in parallel they would mostly measure the machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A node's configuration file for the roomlog binary: the shared log on `nats`, then `extra`
/// TOML (sections of its own).
fn node_toml(path: &std::path::Path, nats: &Cluster, extra: &str) -> std::path::PathBuf {
    let servers: Vec<String> = nats.urls().iter().map(|u| format!("{u:?}")).collect();
    let text = format!(
        "[log]\nbackend = \"jetstream\"\n[jetstream]\nservers = [{}]\nreplicas = 3\n{extra}",
        servers.join(", ")
    );
    std::fs::write(path, text).expect("node config");
    path.to_owned()
}

/// The real binary as a node, on data folder `data` with the configuration file `config`.
fn spawn_node(data: &std::path::Path, config: &std::path::Path) -> common::Binary {
    std::fs::create_dir_all(data).expect("data folder");
    let config = config.to_string_lossy().into_owned();
    common::spawn_with(data, &[("ROOMLOG_CONFIG", config.as_str())], std::process::Stdio::inherit())
}

fn start_nats(dir: &std::path::Path) -> Cluster {
    Cluster::start(3, &dir.join("nats")).expect("3 nats-servers")
}

/// Reads frames until `n` message frames came; acks and notices are skipped.
async fn messages(client: &mut Client, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let frame = client.recv().await;
        if frame["type"] == "message" {
            out.push(frame);
        }
    }
    out
}

fn seqs_and_bodies(frames: &[Value]) -> Vec<(u64, String)> {
    frames.iter().map(|f| (f["seq"].as_u64().expect("seq"), f["body"].as_str().expect("body").to_owned())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_through_one_node_reaches_members_on_every_node_in_one_order() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = start_nats(dir.path());
    let nodes = nodes(3, dir.path(), &nats).await;
    let mut members = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut client = Client::connect(node.addr(), &format!("user{i}")).await;
        client.join("lobby", None).await;
        members.push(client);
    }
    // Each member sends 20 messages through its own node, without waiting in between.
    for (i, client) in members.iter_mut().enumerate() {
        for n in 0..20 {
            client
                .send(
                    json!({"type": "send", "room": "lobby", "body": format!("{i}-{n}"), "client_id": format!("c{n}")}),
                )
                .await;
        }
    }
    let mut seen = Vec::new();
    for client in &mut members {
        seen.push(seqs_and_bodies(&messages(client, 60).await));
    }
    assert_eq!(seen[0].len(), 60);
    assert_eq!(seen[0], seen[1], "members on nodes 0 and 1 see the same messages in the same order");
    assert_eq!(seen[0], seen[2], "members on nodes 0 and 2 see the same messages in the same order");
    let seqs: Vec<u64> = seen[0].iter().map(|(seq, _)| *seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in seq order: {seqs:?}");
    for i in 0..3 {
        let from_i: Vec<&String> = seen[0].iter().map(|(_, b)| b).filter(|b| b.starts_with(&format!("{i}-"))).collect();
        let expected: Vec<String> = (0..20).map(|n| format!("{i}-{n}")).collect();
        assert_eq!(from_i, expected.iter().collect::<Vec<_>>(), "each sender's messages in the order it sent them");
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_client_id_through_two_nodes_is_stored_once_with_one_seq() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = start_nats(dir.path());
    let nodes = nodes(2, dir.path(), &nats).await;
    let mut on_a = Client::connect(nodes[0].addr(), "ann").await;
    on_a.join("lobby", None).await;
    let seq = on_a.say("lobby", "only once", "retry-1").await;
    // The client lost its connection before the ack and retries through the other node.
    let mut on_b = Client::connect(nodes[1].addr(), "ann").await;
    on_b.join("lobby", Some(seq)).await;
    on_b.send(json!({"type": "send", "room": "lobby", "body": "only once", "client_id": "retry-1"})).await;
    let ack = on_b.recv().await;
    assert_eq!((ack["type"].as_str(), ack["seq"].as_u64()), (Some("ack"), Some(seq)), "{ack}");
    // And one sent concurrently through both, before either saw the other.
    let (mut x, mut y) = (Client::connect(nodes[0].addr(), "bob").await, Client::connect(nodes[1].addr(), "bob").await);
    x.join("lobby", Some(seq)).await;
    y.join("lobby", Some(seq)).await;
    let send = json!({"type": "send", "room": "lobby", "body": "raced", "client_id": "race-1"});
    x.send(send.clone()).await;
    y.send(send).await;
    let ack_of = |frames: Vec<Value>| frames.into_iter().find(|f| f["type"] == "ack").expect("an ack")["seq"].as_u64();
    let (mut fx, mut fy) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        fx.push(x.recv().await);
        fy.push(y.recv().await);
    }
    assert_eq!(ack_of(fx), ack_of(fy), "both senders are acknowledged with the one seq");
    for node in &nodes {
        projections_caught_up(node.addr()).await;
        let bodies: Vec<Value> = whole_history(node.addr(), "lobby").await.iter().map(|m| m["body"].clone()).collect();
        assert_eq!(bodies, vec![json!("only once"), json!("raced")], "stored once");
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_search_on_any_node_hold_what_was_sent_through_any_node() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = start_nats(dir.path());
    let nodes = nodes(3, dir.path(), &nats).await;
    for (i, node) in nodes.iter().enumerate() {
        let mut client = Client::connect(node.addr(), &format!("user{i}")).await;
        client.join(&format!("notes{i}"), None).await;
        client.say(&format!("notes{i}"), &format!("zebra crossing from node {i}"), "z").await;
    }
    for node in &nodes {
        projections_caught_up(node.addr()).await;
        for i in 0..3 {
            assert_eq!(whole_history(node.addr(), &format!("notes{i}")).await.len(), 1);
        }
        let (total, hits) = search_all(node.addr(), "q=zebra").await;
        assert_eq!(total, 3, "{hits:?}");
        let (status, ready) = get(node.addr(), "/readyz").await;
        assert_eq!(status, 200, "{ready}");
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_while_others_write_catches_up_when_it_returns() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = start_nats(dir.path());
    let mut nodes = nodes(2, dir.path(), &nats).await;
    let mut ann = Client::connect(nodes[0].addr(), "ann").await;
    ann.join("lobby", None).await;
    ann.say("lobby", "before", "b").await;
    projections_caught_up(nodes[1].addr()).await;
    let down = nodes.pop().expect("node 1");
    down.shutdown().await;
    for n in 0..50 {
        ann.say("lobby", &format!("while down {n}"), &format!("d{n}")).await;
    }
    let back = common::start(node_config(&dir.path().join("node1"), &nats)).await;
    projections_caught_up(back.addr()).await;
    // The head it serves may still be behind for a moment: wait for the last message.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut history = whole_history(back.addr(), "lobby").await;
    while history.len() < 51 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        history = whole_history(back.addr(), "lobby").await;
    }
    assert_eq!(history.len(), 51, "the returning node has every message");
    let mut bob = Client::connect(back.addr(), "bob").await;
    let joined = bob.join("lobby", Some(0)).await;
    assert_eq!(joined["type"], "joined");
    let replayed = messages(&mut bob, 51).await;
    assert_eq!(replayed.last().expect("last")["body"], "while down 49");
    let (total, _) = search_all(back.addr(), "q=down").await;
    assert_eq!(total, 50, "search caught up too");
    back.shutdown().await;
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_under_load_loses_no_acknowledged_message() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nats = start_nats(dir.path());
    let nodes = nodes(1, dir.path(), &nats).await;
    let addr = nodes[0].addr();
    let mut sender = Client::connect(addr, "ann").await;
    sender.join("load", None).await;
    let leader = stream_leader(&nats).await;
    let (mut acked, mut longest_pause, mut last_ack) = (Vec::new(), Duration::ZERO, Instant::now());
    let mut killed = false;
    let started = Instant::now();
    let mut n = 0u64;
    // Sends one at a time (retrying a failed send with its client id, as clients do) for a
    // bounded time; kills the stream leader after 2 s.
    while started.elapsed() < Duration::from_secs(14) && n < 100_000 {
        if !killed && started.elapsed() > Duration::from_secs(2) {
            nats.servers[leader].stop(true);
            killed = true;
        }
        let client_id = format!("m{n}");
        sender.send(json!({"type": "send", "room": "load", "body": format!("load {n}"), "client_id": client_id})).await;
        loop {
            let frame = sender.recv().await;
            match frame["type"].as_str() {
                Some("ack") => {
                    acked.push((n, frame["seq"].as_u64().expect("seq")));
                    longest_pause = longest_pause.max(last_ack.elapsed());
                    last_ack = Instant::now();
                    break;
                }
                Some("error") => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    sender.send(json!({"type": "send", "room": "load", "body": format!("load {n}"), "client_id": client_id})).await;
                }
                _ => {}
            }
        }
        n += 1;
    }
    assert!(killed, "the leader was killed");
    println!(
        "stream leader killed under load: {} messages acknowledged, longest pause between acknowledgements {:.2} s",
        acked.len(),
        longest_pause.as_secs_f64()
    );
    nats.restart(leader).expect("restart the killed server");
    projections_caught_up(addr).await;
    let history = whole_history(addr, "load").await;
    let stored: std::collections::HashMap<u64, String> = history
        .iter()
        .map(|m| (m["seq"].as_u64().expect("seq"), m["body"].as_str().expect("body").to_owned()))
        .collect();
    for (n, seq) in &acked {
        assert_eq!(stored.get(seq), Some(&format!("load {n}")), "acknowledged message {n} (seq {seq}) is stored");
    }
    assert_eq!(history.len(), acked.len(), "nothing stored twice");
    for node in nodes {
        node.shutdown().await;
    }
}

/// The index of the server leading the ROOMLOG stream, from its monitoring endpoint.
async fn stream_leader(nats: &Cluster) -> usize {
    for _ in 0..200 {
        for server in &nats.servers {
            let url = format!("http://127.0.0.1:{}/jsz?streams=true", server.monitor_port);
            let Ok(body) = reqwest::get(&url).await else { continue };
            let Ok(jsz) = body.json::<Value>().await else { continue };
            for account in jsz["account_details"].as_array().into_iter().flatten() {
                for stream in account["stream_detail"].as_array().into_iter().flatten() {
                    if stream["name"] == "ROOMLOG" {
                        if let Some(leader) = stream["cluster"]["leader"].as_str() {
                            if let Some(i) = nats.servers.iter().position(|s| s.name == leader) {
                                return i;
                            }
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader of the ROOMLOG stream found");
}

/// Sends `body` with `client_id` and reads until its ack; `None` when the connection is gone
/// first. Other frames (messages, notices) are skipped.
async fn send_acked(client: &mut Client, room: &str, body: &str, client_id: &str) -> Option<u64> {
    let frame = json!({"type": "send", "room": room, "body": body, "client_id": client_id});
    if !client.try_send(frame).await {
        return None;
    }
    loop {
        let frame = client.try_recv().await?;
        if frame["type"] == "ack" && frame["client_id"] == client_id {
            return frame["seq"].as_u64();
        }
        assert_ne!(frame["type"], "error", "{frame}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_nothing_and_its_clients_resume_on_another_without_gap_or_duplicate() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = start_nats(dir.path());
    let config_file = node_toml(&dir.path().join("node-a.toml"), &nats, "");
    let mut a = spawn_node(&dir.path().join("node-a"), &config_file);
    let b = common::start(node_config(&dir.path().join("node-b"), &nats)).await;
    let (a_addr, b_addr) = (a.addr, b.addr());

    let mut reader = Client::connect(a_addr, "reader").await;
    reader.join("room", None).await;
    let mut sender = Client::connect(a_addr, "ann").await;
    sender.join("room", None).await;
    // Load through the other node all along.
    let load = tokio::spawn(async move {
        let mut bob = Client::connect(b_addr, "bob").await;
        bob.join("room", None).await;
        let mut acked = Vec::new();
        for n in 0..150 {
            let seq = send_acked(&mut bob, "room", &format!("b-{n}"), &format!("b{n}")).await.expect("node b serves");
            acked.push((format!("b-{n}"), seq));
        }
        acked
    });
    let mut acked = Vec::new();
    let mut on_b = false;
    for n in 0..100 {
        if n == 50 {
            a.child.kill().expect("kill -9 node a");
            a.child.wait().expect("reap node a");
        }
        let (body, client_id) = (format!("a-{n}"), format!("a{n}"));
        let seq = match send_acked(&mut sender, "room", &body, &client_id).await {
            Some(seq) => seq,
            None => {
                // Node a is gone: reconnect to b and send again with the same client id.
                assert!(!on_b, "node b kept the connection");
                on_b = true;
                sender = Client::connect(b_addr, "ann").await;
                sender.join("room", acked.last().map(|(_, seq)| *seq)).await;
                send_acked(&mut sender, "room", &body, &client_id).await.expect("node b serves")
            }
        };
        acked.push((body, seq));
    }
    assert!(on_b, "the sender moved to node b");
    acked.extend(load.await.expect("load"));

    // The reader: everything node a delivered before it died, then node b from the last seq.
    let mut seen: Vec<(u64, String)> = Vec::new();
    while let Some(frame) = reader.try_recv().await {
        if frame["type"] == "message" {
            seen.push((frame["seq"].as_u64().expect("seq"), frame["body"].as_str().expect("body").to_owned()));
        }
    }
    let mut reader = Client::connect(b_addr, "reader").await;
    reader.join("room", seen.last().map(|(seq, _)| *seq)).await;
    let last_seq = acked.iter().map(|(_, seq)| *seq).max().expect("acked");
    while seen.last().is_none_or(|(seq, _)| *seq < last_seq) {
        let frame = reader.recv().await;
        if frame["type"] == "message" {
            seen.push((frame["seq"].as_u64().expect("seq"), frame["body"].as_str().expect("body").to_owned()));
        }
    }
    projections_caught_up(b_addr).await;
    let history: Vec<(u64, String)> = whole_history(b_addr, "room")
        .await
        .iter()
        .map(|m| (m["seq"].as_u64().expect("seq"), m["body"].as_str().expect("body").to_owned()))
        .collect();
    assert_eq!(seen, history, "the reader saw every stored message once, in order, across the kill");
    let stored: std::collections::HashMap<&String, u64> = history.iter().map(|(seq, body)| (body, *seq)).collect();
    assert_eq!(stored.len(), history.len(), "no message stored twice");
    for (body, seq) in &acked {
        assert_eq!(stored.get(body), Some(seq), "acknowledged {body} is stored under its seq");
    }
    assert_eq!(history.len(), 250);
    b.shutdown().await;
}

async fn status(addr: std::net::SocketAddr) -> Value {
    let (code, status) = get(addr, "/api/status").await;
    assert_eq!(code, 200, "{status}");
    status
}

fn holds(status: &Value, lease: &str) -> bool {
    status["cluster"]["leases_held"].as_array().is_some_and(|held| held.iter().any(|h| h == lease))
}

/// Waits (bounded) until the node at `addr` holds `lease`.
async fn until_holds(addr: std::net::SocketAddr, lease: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !holds(&status(addr).await, lease) {
        assert!(Instant::now() < deadline, "{addr} never took the lease {lease}: {}", status(addr).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_sweeps_sessions_and_runs_the_janitor_and_a_killed_holder_hands_over() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = start_nats(dir.path());
    // lease_ttl is a [jetstream] key: it goes on right after the shared part.
    let config_file =
        node_toml(&dir.path().join("node-a.toml"), &nats, "lease_ttl = \"2s\"\n[sessions]\nexpire_after = \"1s\"\n");
    let mut a = spawn_node(&dir.path().join("node-a"), &config_file);
    until_holds(a.addr, "sessions.sweeper").await;
    until_holds(a.addr, "janitor.schedule").await;
    let mut others = Vec::new();
    for name in ["node-b", "node-c"] {
        let mut config = node_config(&dir.path().join(name), &nats);
        config.jetstream.lease_ttl = Duration::from_secs(2);
        config.sessions.expire_after = Duration::from_secs(1);
        others.push(common::start(config).await);
    }
    // A session created on every node expires once, by the one node sweeping.
    let mut ids = Vec::new();
    for addr in [a.addr, others[0].addr(), others[1].addr()] {
        let response = reqwest::Client::new()
            .post(format!("http://{addr}/api/sessions"))
            .header("content-length", "0")
            .send()
            .await
            .expect("create session");
        assert_eq!(response.status().as_u16(), 201);
        let body: Value = response.json().await.expect("json");
        ids.push(body["id"].as_str().expect("id").to_owned());
    }
    for node in &others {
        assert!(!holds(&status(node.addr()).await, "sessions.sweeper"), "one holder at a time");
        assert!(!holds(&status(node.addr()).await, "janitor.schedule"), "one holder at a time");
    }
    let b = &others[0];
    for id in &ids {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, body) = get(b.addr(), &format!("/api/sessions/{id}")).await;
            if body["session"]["state"] == "expired" {
                break;
            }
            assert!(Instant::now() < deadline, "session {id} never expired: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = b.log().read_range(1, usize::MAX).await.expect("log");
    for id in &ids {
        let expiries = events
            .iter()
            .filter(|e| {
                let tag = e.event.tag();
                (tag.contains("Expired"))
                    && serde_json::to_string(&e.event).is_ok_and(|json| json.contains(id.as_str()))
            })
            .count();
        assert_eq!(expiries, 1, "session {id} expired by exactly one event");
    }
    // kill -9 of the holder: another node takes each lease once it expires.
    a.child.kill().expect("kill -9 node a");
    a.child.wait().expect("reap node a");
    let killed = Instant::now();
    let mut taken = Vec::new();
    for lease in ["sessions.sweeper", "janitor.schedule"] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let holders: Vec<bool> = futures_util::future::join_all(others.iter().map(|n| status(n.addr())))
                .await
                .iter()
                .map(|s| holds(s, lease))
                .collect();
            if holders.iter().filter(|h| **h).count() == 1 {
                taken.push(killed.elapsed());
                break;
            }
            assert!(Instant::now() < deadline, "nobody took {lease} after the holder died");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!(
        "leases taken over {:.1} s and {:.1} s after the holder's kill -9",
        taken[0].as_secs_f64(),
        taken[1].as_secs_f64()
    );
    for node in others {
        node.shutdown().await;
    }
}

/// POSTs `path` on the node at `addr`: the status and the JSON answer.
async fn post(addr: std::net::SocketAddr, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("content-length", "0")
        .send()
        .await
        .expect("http post");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits (bounded) until `node`'s copy of the log holds everything acknowledged so far by any
/// node: a post through `through` is appended, and `node` waits until it has it.
async fn holds_all(through: &Server, node: &Server) {
    let marker = roomlog::event::Event::MessagePosted(roomlog::event::MessagePosted {
        room: roomlog::event::RoomId::parse("marker").expect("room"),
        author: "test".into(),
        client_id: format!("m{}", uuid::Uuid::new_v4().simple()),
        body: "marker".into(),
    });
    let seq = through.log().append(marker).await.expect("marker").seq;
    let mut head = node.log().watch_head();
    let waited = tokio::time::timeout(Duration::from_secs(30), head.wait_for(|&head| head >= seq)).await;
    assert!(matches!(waited, Ok(Ok(_))), "the node's copy of the log never reached seq {seq}");
}

/// The tags of the events of session `id`'s stream, as `node` holds them.
async fn session_events(node: &Server, id: &str) -> Vec<String> {
    let id = roomlog::event::SessionId::parse(id).expect("session id");
    let stream = roomlog::event::StreamId::session(&id);
    let events = node.log().read_stream(&stream, 0, usize::MAX).await.expect("session stream");
    events.iter().map(|e| e.event.tag().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_one_session_command_store_it_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = start_nats(dir.path());
    let nodes = nodes(2, dir.path(), &nats).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let paid_events = |tags: &[String]| tags.iter().filter(|t| t.starts_with("SessionPaid")).count();
    let mut ids = Vec::new();
    for race in [false, true] {
        let (status, created) = post(a.addr(), "/api/sessions").await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().expect("id").to_owned();
        // Each node runs an actor for the session, holding what it read of it.
        for node in [a, b] {
            let (status, touched) = post(node.addr(), &format!("/api/sessions/{id}/touch")).await;
            assert_eq!(status, 200, "{touched}");
        }
        let path = format!("/api/sessions/{id}/pay");
        let pay = |node: &Server| post(node.addr(), &path);
        let answers = if race {
            let (first, second) = tokio::join!(pay(a), pay(b));
            vec![first, second]
        } else {
            // B pays after A did: B's actor read the session before A's payment.
            vec![pay(a).await, pay(b).await]
        };
        for (status, session) in answers {
            assert_eq!((status, session["state"].as_str()), (200, Some("paid")), "paying a paid session is paying");
        }
        ids.push(id);
    }
    for node in [a, b] {
        holds_all(a, node).await;
        holds_all(b, node).await;
        for id in &ids {
            let tags = session_events(node, id).await;
            assert_eq!(paid_events(&tags), 1, "session {id} paid by exactly one event: {tags:?}");
        }
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_janitor_run_paused_past_another_nodes_run_stores_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = start_nats(dir.path());
    let mut nodes = Vec::new();
    for name in ["node-a", "node-b"] {
        let mut config = node_config(&dir.path().join(name), &nats);
        config.retention.default.max_messages = Some(1);
        nodes.push(common::start(config).await);
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    let room = roomlog::event::RoomId::parse("kept-short").expect("room");
    for n in 0..3 {
        let post = roomlog::event::Event::MessagePosted(roomlog::event::MessagePosted {
            room: room.clone(),
            author: "ann".into(),
            client_id: format!("c{n}"),
            body: format!("message {n}"),
        });
        a.log().append(post).await.expect("post");
    }
    holds_all(a, b).await;
    // B's run plans the cut and stops there, as a holder paused past its lease would.
    let mut hold = roomlog::fault::hold_once("janitor:planned");
    let paused = tokio::spawn({
        let janitor = b.janitor().clone();
        async move { janitor.run("manual").await }
    });
    let reached = tokio::time::timeout(Duration::from_secs(30), &mut hold.reached).await;
    assert!(matches!(reached, Ok(Ok(()))), "b's run never reached its items");
    // Meanwhile A runs the janitor: it cuts the room and records its run.
    let ran = a.janitor().run("manual").await.expect("a's run");
    assert_eq!(ran.outcome, "succeeded", "{ran:?}");
    assert!(ran.rules.iter().any(|r| r.rule.starts_with("retention") && r.items == 2), "{ran:?}");
    // B resumes: the log refuses its stale cut and its record.
    hold.release();
    let stale = tokio::time::timeout(Duration::from_secs(30), paused).await.expect("b's run ends").expect("task");
    assert!(matches!(stale, Err(roomlog::janitor::JanitorError::Fenced)), "{stale:?}");
    for node in [a, b] {
        holds_all(b, node).await;
        let runs = node.janitor().runs(10).await.expect("runs");
        assert_eq!(runs.len(), 1, "one run recorded: {runs:?}");
        let stream = roomlog::event::StreamId::room(&room);
        let tags: Vec<String> = node
            .log()
            .read_stream(&stream, 0, usize::MAX)
            .await
            .expect("room stream")
            .iter()
            .map(|e| e.event.tag().to_owned())
            .collect();
        assert_eq!(tags.iter().filter(|t| t.starts_with("MessagesExpired")).count(), 1, "one cut: {tags:?}");
    }
    // The metrics are the process's, shared by both nodes here: b's refused run is the one.
    let metrics = reqwest::get(format!("http://{}/metrics", b.addr())).await.expect("metrics");
    let metrics = metrics.text().await.expect("metrics text");
    let fenced = metrics.lines().find(|l| l.starts_with("roomlog_janitor_runs_total{outcome=\"fenced\"}"));
    assert_eq!(fenced.and_then(|l| l.rsplit(' ').next()), Some("1"), "counted as fenced");
    for node in nodes {
        node.shutdown().await;
    }
}

/// The bytes of JetStream stream `name` on each nats-server, as each reports its own copy.
async fn stream_bytes(nats: &Cluster, name: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for server in &nats.servers {
        let url = format!("http://127.0.0.1:{}/jsz?streams=true", server.monitor_port);
        let jsz: Value = reqwest::get(&url).await.expect("jsz").json().await.expect("jsz json");
        let streams = jsz["account_details"].as_array().into_iter().flatten();
        let detail = streams.flat_map(|a| a["stream_detail"].as_array().into_iter().flatten());
        let bytes = detail.filter(|s| s["name"] == name).find_map(|s| s["state"]["bytes"].as_u64());
        out.push(bytes.unwrap_or(0));
    }
    out
}

/// Waits (bounded) until every nats-server's copy of stream `name` is at least `freed` bytes
/// smaller than `before`.
async fn until_freed(nats: &Cluster, name: &str, before: &[u64], freed: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = stream_bytes(nats, name).await;
        if now.iter().zip(before).all(|(now, was)| now + freed <= *was) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} did not lose {freed} bytes on every server: {before:?} -> {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_janitor_run_frees_what_retention_cut_from_the_stream_and_from_every_nodes_copy() {
    const POSTS: usize = 20;
    const BODY: usize = 2_000;
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = start_nats(dir.path());
    let config = |name: &str| {
        let mut config = node_config(&dir.path().join(name), &nats);
        config.retention.default.max_messages = Some(1);
        config.janitor.every = None;
        config
    };
    let (a, b) = (common::start(config("node-a")).await, common::start(config("node-b")).await);
    let room = roomlog::event::RoomId::parse("kept-short").expect("room");
    for n in 0..POSTS {
        let post = roomlog::event::Event::MessagePosted(roomlog::event::MessagePosted {
            room: room.clone(),
            author: "ann".into(),
            client_id: format!("c{n}"),
            body: format!("{n:04} {}", "x".repeat(BODY)),
        });
        a.log().append(post).await.expect("post");
    }
    holds_all(&a, &b).await;
    let before = stream_bytes(&nats, "ROOMLOG").await;
    let ran = a.janitor().run("manual").await.expect("run");
    assert_eq!(ran.outcome, "succeeded", "{ran:?}");
    // Every node purges its copy once the run is recorded, and the stream loses the bytes on
    // every server: what was cut is gone, the newest message and the cut stay.
    let stream = roomlog::event::StreamId::room(&room);
    let tags = |events: Vec<roomlog::event::Envelope>| -> Vec<(u64, String)> {
        events.iter().map(|e| (e.seq, e.event.tag().to_owned())).collect()
    };
    until_freed(&nats, "ROOMLOG", &before, (POSTS - 1) as u64 * BODY as u64).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let kept = loop {
        let mut copies = Vec::new();
        for node in [&a, &b] {
            copies.push(tags(node.log().read_stream(&stream, 0, usize::MAX).await.expect("room stream")));
        }
        if copies.iter().all(|copy| copy.len() == 2) {
            assert_eq!(copies[0], copies[1], "both nodes keep the same records");
            break copies.swap_remove(0);
        }
        assert!(Instant::now() < deadline, "a node's copy still holds what was cut: {copies:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(kept[0].1.starts_with("MessagePosted") && kept[1].1.starts_with("MessagesExpired"), "{kept:?}");
    // A node started afterwards gets the same room from the stream.
    let c = common::start(config("node-c")).await;
    holds_all(&a, &c).await;
    assert_eq!(tags(c.log().read_stream(&stream, 0, usize::MAX).await.expect("room stream")), kept);
    let history = whole_history(a.addr(), "kept-short").await;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(whole_history(c.addr(), "kept-short").await, history);
    // Runs are numbered across the cluster, whichever node runs.
    let second = b.janitor().run("manual").await.expect("b's run");
    assert_eq!((ran.run, second.run), (1, 2), "{second:?}");
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_uploaded_through_one_node_downloads_through_another() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = start_nats(dir.path());
    // The first node's first request for the shared bucket goes unanswered (as a busy cluster's
    // did under CI): it asks again rather than failing to start.
    roomlog::fault::fail_once("jetstream:files-bucket", 0);
    let nodes = nodes(2, dir.path(), &nats).await;
    assert!(!roomlog::fault::still_armed("jetstream:files-bucket"), "the node asked for the bucket");
    let body: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let (status, stored) =
        common::put_file(nodes[0].addr(), "audio/take-1.bin", body.clone(), "application/octet-stream").await;
    assert_eq!(status, 201, "{stored}");
    projections_caught_up(nodes[1].addr()).await;
    let response = reqwest::get(format!("http://{}/api/files/audio/take-1.bin", nodes[1].addr())).await.expect("get");
    assert_eq!(response.status().as_u16(), 200);
    let downloaded = response.bytes().await.expect("bytes");
    assert!(downloaded.as_ref() == body.as_slice(), "the same bytes through the other node");
    for node in nodes {
        node.shutdown().await;
    }
}

/// Bytes that differ from other tests' content.
fn content(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

/// What a node started now, with no copy of its own, answers for `key`.
async fn fresh_node_gets(dir: &std::path::Path, nats: &Cluster, key: &str) -> (u16, Vec<u8>) {
    let node = common::start(node_config(&dir.join("fresh-node"), nats)).await;
    projections_caught_up(node.addr()).await;
    let got = get_file(node.addr(), key).await;
    node.shutdown().await;
    got
}

/// Uploads `body` under `key` through `node`, then waits until `other` has it; its hash.
async fn uploaded(node: &Server, key: &str, body: &[u8], other: &Server) -> String {
    let (status, stored) = common::put_file(node.addr(), key, body.to_vec(), "audio/mpeg").await;
    assert_eq!(status, 201, "{stored}");
    projections_caught_up(other.addr()).await;
    stored["hash"].as_str().expect("hash").to_owned()
}

async fn delete_file(addr: std::net::SocketAddr, key: &str) -> u16 {
    let url = format!("http://{addr}/api/files/{key}");
    reqwest::Client::new().delete(url).send().await.expect("delete").status().as_u16()
}

async fn get_file(addr: std::net::SocketAddr, key: &str) -> (u16, Vec<u8>) {
    let response = reqwest::get(format!("http://{addr}/api/files/{key}")).await.expect("get");
    let status = response.status().as_u16();
    (status, response.bytes().await.expect("bytes").to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_no_key_names_any_more_leaves_the_shared_bucket() {
    const LEN: usize = 1 << 20;
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = start_nats(dir.path());
    let nodes = nodes(2, dir.path(), &nats).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let body = content(LEN, 1);
    let hash = uploaded(a, "audio/gone.bin", &body, b).await;
    assert_eq!(get_file(b.addr(), "audio/gone.bin").await, (200, body), "b holds a copy now too");
    let shared = a.log().shared_files().expect("a cluster's bucket");
    assert!(shared.holds(&hash).await.expect("holds"));
    let before = stream_bytes(&nats, "OBJ_roomlog_files").await;
    assert_eq!(delete_file(b.addr(), "audio/gone.bin").await, 200);
    until_freed(&nats, "OBJ_roomlog_files", &before, LEN as u64).await;
    assert!(!shared.holds(&hash).await.expect("holds"), "the object is deleted");
    for node in &nodes {
        assert_eq!(get_file(node.addr(), "audio/gone.bin").await.0, 404);
    }
    for node in nodes {
        node.shutdown().await;
    }
}

/// The value of the counter line `line` (name and labels) on `addr`'s /metrics.
async fn counter(addr: std::net::SocketAddr, line: &str) -> u64 {
    let text = reqwest::get(format!("http://{addr}/metrics")).await.expect("metrics").text().await.expect("text");
    text.lines().find_map(|l| l.strip_prefix(line)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_named_again_through_another_node_while_a_reaper_deletes_it_is_put_back() {
    const PUT_BACK: &str = "roomlog_file_shared_releases_total{outcome=\"put_back\"}";
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = start_nats(dir.path());
    let nodes = nodes(2, dir.path(), &nats).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let body = content(200_000, 2);
    uploaded(a, "audio/first.bin", &body, b).await;
    let put_back_before = counter(a.addr(), PUT_BACK).await;
    // A's reaper (a holds the only copy) is about to delete the bucket's copy...
    let mut hold = roomlog::fault::hold_once("reaper:deleting");
    assert_eq!(delete_file(a.addr(), "audio/first.bin").await, 200);
    let reached = tokio::time::timeout(Duration::from_secs(30), &mut hold.reached).await;
    assert!(matches!(reached, Ok(Ok(()))), "a's reaper never came to the shared copy");
    // ...when the same content is uploaded through b, which finds it in the bucket still.
    uploaded(b, "audio/second.bin", &body, a).await;
    hold.release();
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter(a.addr(), PUT_BACK).await == put_back_before {
        assert!(Instant::now() < deadline, "a's reaper never put the content back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A node with no copy of its own reads it from the bucket.
    assert_eq!(fresh_node_gets(dir.path(), &nats, "audio/second.bin").await, (200, body));
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_committed_after_its_content_left_the_bucket_puts_it_back_or_is_undone() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = start_nats(dir.path());
    let nodes = nodes(2, dir.path(), &nats).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let body = content(100_000, 3);
    let hash = uploaded(a, "audio/one.bin", &body, b).await;
    // The content leaves the bucket, as it does when another node's reaper checked first.
    let shared = a.log().shared_files().expect("a cluster's bucket");
    shared.delete(&hash).await.expect("delete from the bucket");
    // Through b, which has no copy, the new key could not be served: it is undone.
    let (status, refused) = post(b.addr(), "/api/files/audio/one.bin?copy_to=audio/through-b.bin").await;
    assert_eq!((status, refused["error"]["code"].as_str()), (503, Some("storage_unavailable")), "{refused}");
    projections_caught_up(a.addr()).await;
    assert_eq!(get_file(a.addr(), "audio/through-b.bin").await.0, 404, "the copy was deleted again");
    // Through a, which has the bytes, the content is put back.
    let (status, copied) = post(a.addr(), "/api/files/audio/one.bin?copy_to=audio/through-a.bin").await;
    assert_eq!(status, 201, "{copied}");
    assert!(shared.holds(&hash).await.expect("holds"), "put back into the bucket");
    assert_eq!(fresh_node_gets(dir.path(), &nats, "audio/through-a.bin").await, (200, body));
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_while_jetstream_is_unreachable_gets_an_error_and_the_node_recovers_by_itself() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nats = start_nats(dir.path());
    let mut config = node_config(&dir.path().join("node"), &nats);
    config.jetstream.append_timeout = Duration::from_secs(3);
    let node = common::start(config).await;
    let mut ann = Client::connect(node.addr(), "ann").await;
    ann.join("lobby", None).await;
    ann.say("lobby", "before", "c0").await;
    for server in &mut nats.servers {
        server.stop(true);
    }
    ann.send(json!({"type": "send", "room": "lobby", "body": "during", "client_id": "c1"})).await;
    let error = ann.recv().await;
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("error"), Some("storage_unavailable")),
        "{error}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, ready) = get(node.addr(), "/readyz").await;
        if status == 503 && ready["not_ready_because"].to_string().contains("cannot reach NATS") {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz never said NATS is unreachable: {ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..3 {
        nats.restart(i).expect("restart nats-server");
    }
    nats.wait_healthy(Duration::from_secs(30)).expect("nats back");
    // The client retries with the same client id, as the error told it to, until stored.
    let deadline = Instant::now() + Duration::from_secs(60);
    let seq = loop {
        ann.send(json!({"type": "send", "room": "lobby", "body": "during", "client_id": "c1"})).await;
        let frame = ann.recv().await;
        if frame["type"] == "ack" {
            break frame["seq"].as_u64().expect("seq");
        }
        assert!(Instant::now() < deadline, "never stored after NATS came back: {frame}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (status, ready) = get(node.addr(), "/readyz").await;
    assert_eq!(status, 200, "ready again: {ready}");
    projections_caught_up(node.addr()).await;
    let bodies: Vec<Value> = whole_history(node.addr(), "lobby").await.iter().map(|m| m["body"].clone()).collect();
    assert_eq!(bodies, vec![json!("before"), json!("during")], "stored once");
    assert!(seq > 1);
    node.shutdown().await;
}

#[test]
fn the_shipped_node_configurations_load_and_name_the_cluster_log() {
    for file in ["ops/cluster/roomlog-local.toml", "ops/cluster/roomlog-node.toml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let config = Config::load(Some(&path)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(config.log.backend, LogBackend::Jetstream, "{file}");
        assert_eq!(config.jetstream.servers.len(), 3, "{file}");
        assert_eq!(config.jetstream.replicas, 3, "{file}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_issued_by_one_node_is_accepted_by_every_node() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = start_nats(dir.path());
    let mut nodes = Vec::new();
    for i in 0..2 {
        let mut config = node_config(&dir.path().join(format!("node{i}")), &nats);
        config.auth.anonymous = roomlog::auth::Anonymous::None;
        config.auth.admin_from_host = false;
        // Each node made its own secret before it joined: the cluster's replaces it.
        roomlog::token::SecretFiles { dir: config.secret_dir() }.load_or_create().expect("a secret of its own");
        nodes.push((common::start(config.clone()).await, config));
    }
    let (a, a_config) = &nodes[0];
    let (b, _) = &nodes[1];
    let claims = admin_claims();
    let token =
        roomlog::token::SecretFiles { dir: a_config.secret_dir() }.load_or_create().expect("a's secret").issue(&claims);
    let http = reqwest::Client::new();
    for (name, node) in [("a", a), ("b", b)] {
        let without = http.get(format!("http://{}/api/status", node.addr())).send().await.expect("get");
        assert_eq!(without.status().as_u16(), 401, "node {name} refuses a caller without a token");
        let with =
            http.get(format!("http://{}/api/status", node.addr())).bearer_auth(&token).send().await.expect("get");
        assert_eq!(with.status().as_u16(), 200, "node {name} accepts node a's token");
    }
    for (node, _) in nodes {
        node.shutdown().await;
    }
}

/// An admin's claims, valid for an hour.
fn admin_claims() -> roomlog::token::Claims {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 3600;
    roomlog::token::Claims {
        user: "root".into(),
        rooms: Vec::new(),
        admin: true,
        exp,
        session: None,
        files: Vec::new(),
    }
}

/// Whether `node` accepts `token` for the admin's status page.
async fn accepts(node: &Server, token: &str) -> bool {
    let url = format!("http://{}/api/status", node.addr());
    let answer = reqwest::Client::new().get(url).bearer_auth(token).send().await.expect("get");
    answer.status().as_u16() == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_rotated_on_one_node_reaches_every_node_at_its_restart() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = start_nats(dir.path());
    let configs: Vec<Config> = (0..2)
        .map(|i| {
            let mut config = node_config(&dir.path().join(format!("node{i}")), &nats);
            config.auth.anonymous = roomlog::auth::Anonymous::None;
            config.auth.admin_from_host = false;
            config
        })
        .collect();
    let mut nodes = Vec::new();
    for config in &configs {
        nodes.push(common::start(config.clone()).await);
    }
    let claims = admin_claims();
    let a_secret = roomlog::token::SecretFiles { dir: configs[0].secret_dir() };
    let old = a_secret.load_or_create().expect("a's secret").issue(&claims);
    // The operator rotates on node a, with its configuration file, and restarts every node.
    let toml = node_toml(&dir.path().join("node0.toml"), &nats, "");
    let data = configs[0].data.clone().into_os_string();
    let rotate =
        ["--data".as_ref(), data.as_os_str(), "token".as_ref(), "rotate".as_ref(), "--grace".as_ref(), "1h".as_ref()];
    let said = roomlog_command(&rotate, Some(&toml));
    assert!(said.contains("cluster"), "{said}");
    for node in nodes.drain(..) {
        node.shutdown().await;
    }
    for config in &configs {
        nodes.push(common::start(config.clone()).await);
    }
    // Restarted, node a keeps the rotated secret (the cluster's is the same now).
    let new = a_secret.load_or_create().expect("a's rotated secret").issue(&claims);
    assert_ne!(new, old, "the rotation stays");
    for (name, node) in ["a", "b"].iter().zip(&nodes) {
        assert!(accepts(node, &new).await, "node {name} accepts a token signed with the new secret");
        assert!(accepts(node, &old).await, "node {name} still accepts the old one during the grace");
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_answers_for_the_whole_cluster() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = start_nats(dir.path());
    let nodes = nodes(3, dir.path(), &nats).await;
    let mut clients = Vec::new();
    for (node, user) in [(0, "ann"), (1, "bob"), (2, "ann"), (2, "cid")] {
        let mut client = Client::connect(nodes[node].addr(), user).await;
        client.join("lobby", None).await;
        clients.push(client);
    }
    let expected = json!([{"user": "ann", "connections": 2}, {"user": "bob", "connections": 1}, {"user": "cid", "connections": 1}]);
    for node in &nodes {
        let (status, body) = get(node.addr(), "/api/rooms/lobby/members").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["members"], expected, "every node answers for the cluster: {body}");
    }
    drop(clients);
    for node in nodes {
        node.shutdown().await;
    }
}

/// Runs the roomlog binary to the end; fails the test on a non-zero exit.
fn roomlog_command(args: &[&std::ffi::OsStr], config: Option<&std::path::Path>) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_roomlog"));
    command.args(args).env("ROOMLOG_LOG", "warn");
    if let Some(config) = config {
        command.env("ROOMLOG_CONFIG", config);
    }
    let out = command.output().expect("run roomlog");
    assert!(
        out.status.success(),
        "roomlog {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn history_of(addr: std::net::SocketAddr, rooms: &[&str]) -> Vec<(String, u64, String)> {
    let mut all = Vec::new();
    for room in rooms {
        for m in whole_history(addr, room).await {
            all.push((
                (*room).to_owned(),
                m["seq"].as_u64().expect("seq"),
                m["body"].as_str().expect("body").to_owned(),
            ));
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_grows_into_a_cluster_and_back_without_losing_history_seqs_sessions_or_files() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let rooms = ["lobby", "notes"];
    // One box, as it has run so far.
    let single_dir = dir.path().join("single");
    let single = common::start(common::config(&single_dir)).await;
    let mut ann = Client::connect(single.addr(), "ann").await;
    let mut seqs = std::collections::HashMap::new();
    for room in rooms {
        ann.join(room, None).await;
        for n in 0..20 {
            let body = format!("{room} {n}");
            seqs.insert(body.clone(), ann.say(room, &body, &format!("{room}-{n}")).await);
        }
    }
    let session = reqwest::Client::new()
        .post(format!("http://{}/api/sessions", single.addr()))
        .header("content-length", "0")
        .send()
        .await
        .expect("session");
    let session: Value = session.json().await.expect("json");
    let session_id = session["id"].as_str().expect("id").to_owned();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (status, _) = common::put_file(single.addr(), "photos/cat.jpg", body.clone(), "image/jpeg").await;
    assert_eq!(status, 201);
    projections_caught_up(single.addr()).await;
    // A record the log no longer has (as the janitor's purge leaves): its seq stays a gap.
    let gap = seqs["lobby 5"];
    assert_eq!(single.log().remove(vec![gap]).await.expect("remove"), 1);
    let before: Vec<_> =
        history_of(single.addr(), &rooms).await.into_iter().filter(|(_, seq, _)| *seq != gap).collect();
    let head_before = single.log().head();
    single.shutdown().await;

    // Into a cluster: the import, then a node on an empty data folder.
    let nats = start_nats(dir.path());
    let node_toml = node_toml(&dir.path().join("node.toml"), &nats, "");
    let out =
        roomlog_command(&["cluster-import".as_ref(), "--from".as_ref(), single_dir.as_os_str()], Some(&node_toml));
    assert!(out.contains("imported") && out.contains("1 gaps kept"), "{out}");
    let node_dir = dir.path().join("node");
    let node = common::start(node_config(&node_dir, &nats)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.log().head() < head_before {
        assert!(Instant::now() < deadline, "the node never caught up with the import");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    projections_caught_up(node.addr()).await;
    assert_eq!(history_of(node.addr(), &rooms).await, before, "the same messages under the same seqs");
    let (status, session) = get(node.addr(), &format!("/api/sessions/{session_id}")).await;
    assert_eq!((status, session["session"]["state"].as_str()), (200, Some("active")), "{session}");
    // The node has no copy yet: it reads the shared bucket, and the first read breaks off.
    roomlog::fault::fail_once("files:shared-read", 0);
    let file = reqwest::get(format!("http://{}/api/files/photos/cat.jpg", node.addr())).await.expect("get");
    assert!(!roomlog::fault::still_armed("files:shared-read"), "the download read the shared bucket");
    assert_eq!(file.status().as_u16(), 200, "a broken-off read of the shared bucket is read again");
    assert!(file.bytes().await.expect("bytes").as_ref() == body.as_slice(), "the same file");
    let mut bob = Client::connect(node.addr(), "bob").await;
    bob.join("lobby", Some(head_before)).await;
    let seq = bob.say("lobby", "in the cluster", "c1").await;
    assert!(seq > head_before, "new seqs go on after the imported ones");
    projections_caught_up(node.addr()).await;
    let grown = history_of(node.addr(), &rooms).await;

    // And back to one box: a backup of a node, restored on a single node.
    let archive = dir.path().join("cluster.tar");
    roomlog_command(
        &["backup".as_ref(), "--out".as_ref(), archive.as_os_str(), "--data".as_ref(), node_dir.as_os_str()],
        None,
    );
    let back_dir = dir.path().join("back");
    roomlog_command(&["restore".as_ref(), archive.as_os_str(), "--data".as_ref(), back_dir.as_os_str()], None);
    node.shutdown().await;
    let back = common::start(common::config(&back_dir)).await;
    projections_caught_up(back.addr()).await;
    assert_eq!(history_of(back.addr(), &rooms).await, grown, "the single box has the cluster's history");
    let file = reqwest::get(format!("http://{}/api/files/photos/cat.jpg", back.addr())).await.expect("get");
    assert!(file.bytes().await.expect("bytes").as_ref() == body.as_slice(), "and its files");
    back.shutdown().await;
}
