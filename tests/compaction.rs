//! Compaction: after retention purges half the messages, `roomlog compact` brings the bytes on
//! disk near what a freshly written database with only the live data takes, the removed
//! messages' events leave the log, and every projection rebuilt from the compacted log equals
//! the live one.

mod common;

use std::path::Path;
use std::process::Command;

use common::Client;
use roomlog::config::RoomRetention;
use roomlog::event::Event;
use roomlog::log::{EventLog, LogConfig};
use roomlog::projection::{files, history, sessions};
use serde_json::{json, Value};

const BIG: usize = 3000;
const KEPT: usize = 1500;
const SMALL: usize = 200;

/// About a kilobyte of words that differ from message to message.
fn body(room: &str, n: usize) -> String {
    let mut text = format!("{room} message{n}");
    let mut x = n as u64 + 1;
    while text.len() < 1000 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        text.push_str(&format!(" w{}", x >> 52));
    }
    text
}

/// Sends `bodies` to `room`, 100 in flight at a time, and waits for every ack.
async fn send_all(client: &mut Client, room: &str, bodies: impl Iterator<Item = (usize, String)>) {
    let bodies: Vec<_> = bodies.collect();
    for chunk in bodies.chunks(100) {
        for (n, body) in chunk {
            client.send(json!({"type": "send", "room": room, "body": body, "client_id": format!("{room}{n}")})).await;
        }
        client.messages_and_acks(chunk.len(), chunk.len()).await;
    }
}

/// What the projections of a log hold, as readers see it: every room's summary, messages and
/// amendments; every file key, reference count, owner and tier; every session. (Not how
/// history groups messages into pages, which follows the order events came in, nor the
/// reaper's queue of content to delete, which the reaper empties outside the log.)
#[derive(Debug, PartialEq)]
struct State {
    rooms: Vec<(String, history::RoomSummary, Vec<roomlog::message::StoredMessage>, Vec<roomlog::message::Amendment>)>,
    files: Vec<(Vec<u8>, Vec<u8>)>,
    sessions: Vec<(Vec<u8>, Vec<u8>)>,
}

async fn state(data: &Path) -> State {
    let log = EventLog::open(&roomlog::layout::log_dir(data), &LogConfig::default()).expect("open log");
    let store = roomlog::state::StateDb::open(&roomlog::layout::state_dir(data), 1 << 24).expect("state");
    let history = history::open(&store, std::sync::Arc::new(log.clone())).expect("history").0;
    let rooms = history
        .rooms()
        .expect("rooms")
        .into_iter()
        .map(|(room, summary)| {
            let messages = history.after(&room, 0, usize::MAX).expect("messages");
            let amendments = history.amendments(&room, 0, u64::MAX).expect("amendments");
            (room.to_string(), summary, messages, amendments)
        })
        .collect();
    let mut files = files::open(&store).expect("files").0.dump().expect("dump");
    files.retain(|(key, _)| key.first() != Some(&b'u'));
    let sessions = sessions::open(&store).expect("sessions").0.dump().expect("dump");
    log.close().await;
    State { rooms, files, sessions }
}

fn roomlog(args: &[&str], data: &Path) -> String {
    let output =
        Command::new(env!("CARGO_BIN_EXE_roomlog")).args(args).arg("--data").arg(data).output().expect("run roomlog");
    assert!(output.status.success(), "roomlog {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Writes the live data (the kept messages and files) into a server on `data`.
async fn write_live_data(config: roomlog::config::Config, purged_half: bool) -> roomlog::Server {
    let server = common::start(config).await;
    let mut ann = Client::connect(server.addr(), "ann").await;
    ann.join("big", None).await;
    ann.join("small", None).await;
    let first = if purged_half { 0 } else { BIG - KEPT };
    send_all(&mut ann, "big", (first..BIG).map(|n| (n, body("big", n)))).await;
    send_all(&mut ann, "small", (0..SMALL).map(|n| (n, body("small", n)))).await;
    for n in 0..5 {
        let key = format!("tts/{n}.mp3");
        if purged_half || n < 2 {
            assert_eq!(common::put_file(server.addr(), &key, vec![n as u8; 10_000], "audio/mpeg").await.0, 201);
        }
    }
    server
}

/// A server on `data` whose room `big` is over its retention limit and three of whose five
/// keys were deleted: what the janitor's purge and `roomlog compact` then remove.
async fn server_with_removals(data: &Path, purge_log: bool) -> (roomlog::Server, roomlog::config::Config) {
    let mut config = common::config(data);
    config.janitor.every = None;
    config.janitor.purge_log = purge_log;
    config.retention.rooms.insert("big".into(), RoomRetention { max_messages: Some(KEPT as u64), max_age: None });
    let server = write_live_data(config.clone(), true).await;
    let client = reqwest::Client::new();
    for n in 2..5 {
        let url = format!("http://{}/api/files/tts/{n}.mp3", server.addr());
        assert_eq!(client.delete(url).send().await.expect("delete").status().as_u16(), 200);
    }
    (server, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_after_purging_half_frees_the_disk_and_rebuilds_to_the_live_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("live");
    // What `roomlog compact` drops offline; the janitor's online purge is the next test's.
    let (server, config) = server_with_removals(&data, false).await;
    let client = reqwest::Client::new();
    let ran: Value = client
        .post(format!("http://{}/api/janitor/run", server.addr()))
        .send()
        .await
        .expect("run")
        .json()
        .await
        .expect("json");
    assert_eq!(ran["rules"][0]["items"], (BIG - KEPT) as u64, "{ran}");
    common::projections_caught_up(server.addr()).await;
    let (live_total, live_hits) = common::search_all(server.addr(), "q=message1999").await;
    assert_eq!(live_total, 1);
    assert_eq!(common::search_all(server.addr(), "q=message10&room=big").await.0, 0, "purged from search");
    let head = server.log().head();
    server.shutdown().await;
    let log_dir = roomlog::layout::log_dir(&data);
    let live = state(&data).await;
    let before = roomlog::metrics::disk_bytes(&log_dir);

    let report: Value = serde_json::from_str(roomlog(&["compact", "--json"], &data).trim()).expect("json report");
    let after = roomlog::metrics::disk_bytes(&log_dir);
    assert_eq!(report["bytes_after"], after, "{report}");
    assert_eq!(report["dropped_message_events"], (BIG - KEPT) as u64, "{report}");
    assert_eq!(report["dropped_file_events"], 3, "{report}");

    // A freshly written database holding only the live data: the floor.
    let fresh_data = dir.path().join("fresh");
    let fresh_server = write_live_data(common::config(&fresh_data), false).await;
    fresh_server.shutdown().await;
    let fresh = roomlog::metrics::disk_bytes(&roomlog::layout::log_dir(&fresh_data));
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "space: {:.1} MiB after the purge, {:.1} MiB after compaction, {:.1} MiB fresh with only the live data ({:.2}x)",
        mib(before),
        mib(after),
        mib(fresh),
        after as f64 / fresh as f64
    );
    assert!(after < before, "compaction frees disk: {before} -> {after}");
    assert!(after as f64 <= 1.25 * fresh as f64, "within 1.25x of a fresh database: {after} vs {fresh}");

    // The removed messages' events are gone from the log; seqs and the head are as they were.
    {
        let log = EventLog::open(&log_dir, &LogConfig::default()).expect("open compacted log");
        assert_eq!(log.head(), head);
        let events = log.read_range(1, 1_000_000).await.expect("read");
        let posted = events.iter().filter(|e| matches!(e.event, Event::MessagePosted(_))).count();
        assert_eq!(posted, KEPT + SMALL, "only the kept messages remain");
        assert!(events.iter().any(|e| matches!(e.event, Event::MessagesExpired(_))), "the cut stays as the record");
        assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
        log.close().await;
    }
    assert_eq!(state(&data).await, live, "the projections are the live ones");
    roomlog(&["rebuild", "all"], &data);
    assert_eq!(state(&data).await, live, "every projection rebuilt from the compacted log equals the live one");

    let server = common::start(config).await;
    // Scores may differ (the live index still counts deleted documents in its statistics
    // until segments merge); the hits and totals may not.
    let hits = |found: (u64, Vec<Value>)| {
        (found.0, found.1.iter().map(|h| (h["seq"].clone(), h["snippet"].clone())).collect::<Vec<_>>())
    };
    assert_eq!(hits(common::search_all(server.addr(), "q=message1999").await), hits((live_total, live_hits)));
    assert_eq!(common::search_all(server.addr(), "q=big&room=big").await.0, KEPT as u64);
    let big = common::whole_history(server.addr(), "big").await;
    assert_eq!(big.len(), KEPT);
    assert_eq!(big[0]["body"], body("big", BIG - KEPT));
    let (status, file) = common::get(server.addr(), "/api/files?prefix=tts/").await;
    assert_eq!(status, 200, "{file}");
    let mut ann = Client::connect(server.addr(), "ann").await;
    ann.join("big", Some(u64::MAX)).await;
    assert!(ann.say("big", "after compaction", "x").await > head, "seqs continue after the head");
    server.shutdown().await;
}

/// The online purge (janitor rule `log_purge`): while the server serves, the janitor removes
/// from the log the events that the retention cut and the file deletions superseded; history,
/// search and files read as before; seqs go on; and every projection rebuilt from the purged
/// log equals the live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_janitor_purges_superseded_events_while_serving_and_rebuilds_equal_the_live_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("live");
    let (server, _) = server_with_removals(&data, true).await;
    let client = reqwest::Client::new();
    let posted = |events: &[roomlog::event::Envelope]| {
        events.iter().filter(|e| matches!(e.event, Event::MessagePosted(_))).count()
    };
    assert_eq!(posted(&server.log().read_range(1, 1_000_000).await.expect("read")), BIG + SMALL);
    let run = || async {
        let url = format!("http://{}/api/janitor/run", server.addr());
        let ran: Value = client.post(url).send().await.expect("run").json().await.expect("json");
        let items = |name: &str| {
            ran["rules"].as_array().expect("rules").iter().find(|r| r["rule"] == name).map(|r| r["items"].clone())
        };
        let (cut, purged) = (items("retention.rooms.big.max_messages"), items("log_purge"));
        (cut, purged, ran)
    };
    // The first run cuts the room and purges the uploads the deletions superseded; what its
    // own cut supersedes, the next run purges (each run removes what its plan listed).
    let (cut, purged, ran) = run().await;
    assert_eq!((cut, purged), (Some(json!(BIG - KEPT)), Some(json!(3))), "{ran}");
    let (_, plan) = common::get(server.addr(), "/api/janitor/plan").await;
    assert_eq!(plan["rules"], json!([{"rule": "log_purge", "items": BIG - KEPT, "bytes": plan["rules"][0]["bytes"]}]));
    assert!(plan["rules"][0]["bytes"].as_u64().is_some_and(|b| b > (BIG - KEPT) as u64 * 1000), "{plan}");
    let (cut, purged, ran) = run().await;
    assert_eq!((cut, purged), (None, Some(json!(BIG - KEPT))), "{ran}");

    let events = server.log().read_range(1, 1_000_000).await.expect("read");
    assert_eq!(posted(&events), KEPT + SMALL, "only the kept messages remain in the log");
    assert!(events.iter().any(|e| matches!(e.event, Event::MessagesExpired(_))), "the cut stays as the record");
    let stored = events.iter().filter(|e| matches!(e.event, Event::FileStored(_))).count();
    assert_eq!(stored, 2, "the uploads of deleted keys are gone, the live ones stay");
    assert!(events.iter().filter(|e| matches!(e.event, Event::FileDeleted(_))).count() == 3, "deletions stay");

    // The server goes on serving what it served.
    common::projections_caught_up(server.addr()).await;
    let big = common::whole_history(server.addr(), "big").await;
    assert_eq!(big.len(), KEPT);
    assert_eq!(big[0]["body"], body("big", BIG - KEPT));
    assert_eq!(common::search_all(server.addr(), "q=message1999").await.0, 1);
    let head = server.log().head();
    let mut ann = Client::connect(server.addr(), "ann").await;
    ann.join("big", Some(u64::MAX)).await;
    assert!(ann.say("big", "after the purge", "after").await > head, "seqs continue after the head");
    // The new message puts the room one over its limit: the cut moves by one, and the next
    // run purges that message's event.
    let (cut, purged, ran) = run().await;
    assert_eq!((cut, purged), (Some(json!(1)), None), "{ran}");
    let (cut, purged, ran) = run().await;
    assert_eq!((cut, purged), (None, Some(json!(1))), "{ran}");
    let (_, plan) = common::get(server.addr(), "/api/janitor/plan").await;
    assert_eq!(plan["items"], json!([]), "nothing left: {plan}");
    server.shutdown().await;

    let live = state(&data).await;
    roomlog(&["rebuild", "all"], &data);
    assert_eq!(state(&data).await, live, "every projection rebuilt from the purged log equals the live one");
}

/// Messages of room `bulk` written straight into the log of `data` (a server fills no faster
/// than a client sends), as `roomlog-load --fill` writes them.
async fn fill_log(data: &Path, messages: usize) {
    use roomlog::event::{MessagePosted, RoomId};
    let log = EventLog::open(&roomlog::layout::log_dir(data), &LogConfig::default()).expect("open log");
    let room = RoomId::parse("bulk").expect("room");
    for chunk in (0..messages).collect::<Vec<_>>().chunks(5_000) {
        let mut pending = Vec::with_capacity(chunk.len());
        for &n in chunk {
            let event = Event::MessagePosted(MessagePosted {
                room: room.clone(),
                author: "ann".into(),
                client_id: format!("b{n}"),
                body: body("bulk", n),
            });
            pending.push(log.submit(event).await.expect("submit"));
        }
        for p in pending {
            p.durable().await.expect("durable");
        }
    }
    log.close().await;
}

/// Freeing space online (issue 19): the janitor's purge is followed by a rewrite of the log's
/// files while the server serves, so the log's folder shrinks without a stop; a client chatting
/// all the while has every message acknowledged, once, and kept through a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_janitor_gives_the_purged_space_back_to_the_filesystem_while_a_client_chats() {
    const BULK: usize = 40_000;
    const BULK_KEPT: usize = 4_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("live");
    fill_log(&data, BULK).await;
    let mut config = common::config(&data);
    config.janitor.every = None;
    config.retention.rooms.insert("bulk".into(), RoomRetention { max_messages: Some(BULK_KEPT as u64), max_age: None });
    let server = common::start(config.clone()).await;
    let janitor_run = |addr: std::net::SocketAddr| async move {
        let url = format!("http://{addr}/api/janitor/run");
        let ran: Value = reqwest::Client::new().post(url).send().await.expect("run").json().await.expect("json");
        ran
    };
    // The first run cuts the room; what the cut superseded is the second run's purge.
    janitor_run(server.addr()).await;
    let log_dir = roomlog::layout::log_dir(&data);
    let before = roomlog::metrics::allocated_bytes(&log_dir);

    let addr = server.addr();
    let chat = tokio::spawn(async move {
        let mut bob = Client::connect(addr, "bob").await;
        bob.join("chat", None).await;
        let mut acked = Vec::new();
        for n in 0..300 {
            acked.push(bob.say("chat", &format!("during the rewrite {n}"), &format!("d{n}")).await);
        }
        acked
    });
    let ran = janitor_run(server.addr()).await;
    let acked = chat.await.expect("chat");
    assert_eq!(ran["outcome"], "succeeded", "{ran}");
    let purged = ran["rules"].as_array().expect("rules").iter().find(|r| r["rule"] == "log_purge").cloned();
    assert_eq!(purged.map(|r| r["items"].clone()), Some(json!(BULK - BULK_KEPT)), "{ran}");
    let after = roomlog::metrics::allocated_bytes(&log_dir);
    println!("log folder: {before} bytes before the purge, {after} after it and its rewrite");
    assert!(after * 2 <= before, "the log's folder gives back at least half: {before} -> {after}");
    assert!(
        !data.join("log.compact").exists() && !data.join("log.old").exists(),
        "nothing of the rewrite is left beside the log"
    );

    // Every acknowledged message is there once, in order, before and after a restart.
    let bodies = |history: Vec<Value>| history.iter().map(|m| m["body"].clone()).collect::<Vec<_>>();
    let expected: Vec<Value> = (0..300).map(|n| json!(format!("during the rewrite {n}"))).collect();
    assert!(acked.windows(2).all(|w| w[0] < w[1]), "seqs rise through the swap");
    common::projections_caught_up(server.addr()).await;
    assert_eq!(bodies(common::whole_history(server.addr(), "chat").await), expected);
    let bulk = common::whole_history(server.addr(), "bulk").await;
    assert_eq!((bulk.len(), &bulk[0]["body"]), (BULK_KEPT, &json!(body("bulk", BULK - BULK_KEPT))));
    let head = server.log().head();
    server.shutdown().await;
    let server = common::start(config).await;
    assert_eq!(server.log().head(), head);
    assert_eq!(bodies(common::whole_history(server.addr(), "chat").await), expected);
    let events = server.log().read_range(1, 10_000_000).await.expect("read");
    let chat_seqs: Vec<u64> = events
        .iter()
        .filter(|e| matches!(&e.event, Event::MessagePosted(p) if p.room.as_str() == "chat"))
        .map(|e| e.seq)
        .collect();
    assert_eq!(chat_seqs, acked, "the log holds each acknowledged message once, under its seq");
    let bulk_left = events.iter().filter(|e| matches!(&e.event, Event::MessagePosted(p) if p.room.as_str() == "bulk"));
    assert_eq!(bulk_left.count(), BULK_KEPT, "the purged messages stay gone");
    server.shutdown().await;
}
