//! A data folder written by the release before the separate state store (issue 18) opens and
//! serves the same history, files and sessions, with the same seqs.
//!
//! `tests/fixtures/data-before-issue-18.tar.gz` was written by that release's binary (commit
//! 6e3e4f1): 100 messages of 100 bytes in `lobby` (seqs 1..=100) and 40 of 20,000 bytes in
//! `big` (seqs 101..=140) sent with `roomlog-load`, then an upload of `notes/hello.txt` (17
//! bytes: "hello legacy file") and one session, then a clean stop. Its `db/` holds the log and
//! the projections in one sled database with 512 KiB segments, blob files included.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{get, whole_history, Client};
use roomlog::auth::NameOnly;
use roomlog::clock::ManualClock;
use roomlog::Server;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/data-before-issue-18.tar.gz");
const SESSION: &str = "671ab00227d247f49d2184b52e7ee8b1";
/// When the fixture's session was created, by the clock of the machine that wrote it. The test
/// runs on a clock one minute later, so the session's state does not depend on today's date.
const SESSION_CREATED_MS: u64 = 1_796_226_740_796;

fn unpack(into: &Path) {
    let file = std::fs::File::open(FIXTURE).expect("fixture");
    tar::Archive::new(flate2::read::GzDecoder::new(file)).unpack(into).expect("unpack fixture");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_of_the_old_layout_opens_and_serves_the_same_history_files_and_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    unpack(&data);
    assert!(data.join("db").is_dir(), "the fixture is of the old layout");

    let clock = ManualClock::new(SESSION_CREATED_MS + 60_000);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let server = Server::start_with_clock(common::config(&data), listener, Arc::new(NameOnly), Arc::new(clock.clone()))
        .await
        .expect("the old folder opens");
    let addr = server.addr();
    let lobby = whole_history(addr, "lobby").await;
    let big = whole_history(addr, "big").await;
    let seqs =
        |messages: &[serde_json::Value]| messages.iter().map(|m| m["seq"].as_u64().expect("seq")).collect::<Vec<_>>();
    assert_eq!(seqs(&lobby), (1..=100).collect::<Vec<_>>());
    assert_eq!(seqs(&big), (101..=140).collect::<Vec<_>>());
    assert!(big.iter().all(|m| m["body"].as_str().expect("body").len() == 20_000));

    let file = reqwest::get(format!("http://{}/api/files/notes/hello.txt", addr)).await.expect("get file");
    assert_eq!(file.status(), 200);
    assert_eq!(file.bytes().await.expect("bytes").as_ref(), b"hello legacy file");
    let (status, session) = get(addr, &format!("/api/sessions/{SESSION}")).await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["session"]["state"], "active", "{session}");

    let (_, status) = get(addr, "/api/status").await;
    let recovered = status["recovered_at_start"].to_string();
    assert!(recovered.contains("layout"), "the migration is reported: {recovered}");

    let mut ann = Client::connect(addr, "ann").await;
    ann.join("lobby", Some(140)).await;
    assert_eq!(
        ann.say("lobby", "after the move", "m1").await,
        143,
        "seqs go on after the old head (142: the upload and the session)"
    );
    drop(ann);

    // The carried session keeps its lifecycle: unpaid, it expires a day after its creation.
    clock.advance(Duration::from_secs(24 * 3600));
    let mut session = Default::default();
    for _ in 0..500 {
        session = get(addr, &format!("/api/sessions/{SESSION}")).await.1;
        if session["session"]["state"] == "expired" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(session["session"]["state"], "expired", "{session}");
    assert_eq!(session["session"]["created_at_unix_ms"], SESSION_CREATED_MS, "{session}");
    server.shutdown().await;

    assert!(!data.join("db").exists(), "the old database is gone once moved");
    assert!(data.join("log").is_dir() && data.join("state").is_dir());
    assert_eq!(std::fs::read_dir(data.join("log/blobs")).expect("blobs").count(), 0, "no blob files in the new log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_cut_off_before_its_end_is_done_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    unpack(&data);
    // What a cut leaves mid-migration: partial new folders beside the untouched old one.
    for partial in ["log.migrating", "state.migrating", "state"] {
        std::fs::create_dir_all(data.join(partial)).expect("mkdir");
        std::fs::write(data.join(partial).join("junk"), b"partial").expect("write");
    }
    let migrated = roomlog::layout::migrate(&data, 16 << 20).expect("migrate").expect("it ran");
    assert_eq!(migrated.records, 142, "140 messages, an upload and a session");
    assert_eq!(migrated.head_seq, 142);
    assert!(!data.join("log.migrating").exists() && !data.join("state.migrating").exists());
    assert!(roomlog::layout::migrate(&data, 16 << 20).expect("again").is_none(), "nothing left to do");
    let server = common::spawn(&data);
    assert_eq!(whole_history(server.addr, "big").await.len(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_database_given_as_the_data_folder_is_refused_with_what_to_give_instead() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let server = Server::start(common::config(&data), listener).await.expect("a fresh data folder");
    let mut client = Client::connect(server.addr(), "ann").await;
    client.join("lobby", None).await;
    client.say("lobby", "kept", "c1").await;
    server.shutdown().await;
    let log = data.join("log");
    let before = common::files_under(&log);
    assert!(before.iter().any(|(path, _)| path.ends_with("conf")), "the log is a sled database: {before:?}");

    // An operator gives the log's own folder as the data folder: to the server, to a command.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let Err(refused) = Server::start(common::config(&log), listener).await else { panic!("a sled database served") };
    let refused = refused.to_string();
    assert!(refused.contains("is a sled database") && refused.contains("its parent"), "{refused}");
    let error = roomlog::layout::migrate(&log, 16 << 20).expect_err("refused");
    assert!(matches!(error, roomlog::layout::MigrateError::SledDatabase { .. }), "{error}");
    assert_eq!(common::files_under(&log), before, "nothing was written into the database's folder");

    // Its parent, the data folder, serves what was sent.
    let server = common::spawn(&data);
    let bodies: Vec<_> = whole_history(server.addr, "lobby").await.into_iter().map(|m| m["body"].clone()).collect();
    assert_eq!(bodies, vec![serde_json::json!("kept")]);
}
