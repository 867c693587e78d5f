//! Storage totals and disk thresholds: `/api/storage` matches the files on disk, and at the
//! danger threshold uploads are refused while chat goes on.

mod common;

use std::sync::Arc;

use common::{config, get};
use roomlog::auth::NameOnly;
use roomlog::clock::ManualClock;
use roomlog::Server;
use serde_json::Value;

async fn start(dir: &std::path::Path, clock: &ManualClock) -> Server {
    let config = config(dir);
    std::fs::create_dir_all(&config.data).expect("data");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    Server::start_with_clock(config, listener, Arc::new(NameOnly), Arc::new(clock.clone())).await.expect("starts")
}

async fn put(server: &Server, key: &str, body: Vec<u8>) -> (u16, Value) {
    common::put_file(server.addr(), key, body, "application/octet-stream").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_danger_threshold_uploads_are_refused_and_chat_keeps_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.disk.danger = 0.0; // any disk in use is past it
    let server = common::start(config).await;
    let (status, body) = put(&server, "tts/x.mp3", vec![1u8; 100]).await;
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage");
    let (status, ready) = get(server.addr(), "/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(ready["disk_state"], "danger", "{ready}");

    let mut ann = common::Client::connect(server.addr(), "ann").await;
    ann.join("lobby", None).await;
    let seq = ann.say("lobby", "still here", "c1").await;
    assert!(seq > 0, "chat is acknowledged at danger");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_totals_match_the_files_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), &ManualClock::new(1_800_000_000_000)).await;
    put(&server, "temp_photos/a.jpg", vec![1u8; 10_000]).await;
    put(&server, "temp_photos/b.jpg", vec![1u8; 10_000]).await; // same content: stored once
    put(&server, "tts/c.mp3", vec![2u8; 25_000]).await;
    let mut ann = common::Client::connect(server.addr(), "ann").await;
    ann.join("lobby", None).await;
    ann.say("lobby", "one", "c1").await;
    ann.say("lobby", "two", "c2").await;

    let (status, storage) = get(server.addr(), "/api/storage").await;
    assert_eq!(status, 200, "{storage}");
    assert_eq!(storage["content"]["hot"]["keys"], 2, "two content files: {storage}");
    assert_eq!(storage["on_disk"]["files_hot"], 35_000);
    assert_eq!(storage["keys"]["temp_photos/hot"]["keys"], 2);
    assert_eq!(storage["keys"]["temp_photos/hot"]["bytes"], 20_000);
    assert_eq!(storage["messages"]["lobby"]["messages"], 2);
    assert_eq!(storage["messages"]["lobby"]["bytes"], 2 * 3 + 2 * 2 + 3 + 3, "author, client id and body of each");
    // Growth needs samples a day apart; the first one is taken at start.
    assert_eq!(storage["growth"]["last_7_days"], Value::Null, "{storage}");
    assert_eq!(storage["growth"]["days_until"]["danger"], Value::Null, "no rate yet");
    // The log's figure is the size of its files now, as `du` would add them up. sled flushes in
    // the background (and the growth sampler writes at start), so the files may change while
    // the answer is made: it must lie within what was on disk just before and just after.
    let before: u64 = walk_sizes(&dir.path().join("log"));
    let (_, again) = get(server.addr(), "/api/storage").await;
    let after: u64 = walk_sizes(&dir.path().join("log"));
    let reported = again["on_disk"]["log"].as_u64().expect("log bytes");
    let (low, high) = (before.min(after), before.max(after));
    assert!(
        reported > 0 && reported * 10 >= low * 9 && reported * 10 <= high * 11,
        "log {reported} vs {before}..{after} on disk"
    );
    assert!(again["on_disk"]["projections"].as_u64() > Some(0), "the projections' store is counted: {again}");
    let hot: u64 = walk_sizes(&dir.path().join("blobs/hot"));
    assert_eq!(hot, 35_000, "what the store holds on disk");
    server.shutdown().await;
}

/// Bytes of every file under `dir`, at any depth.
fn walk_sizes(dir: &std::path::Path) -> u64 {
    common::files_under(dir).iter().map(|(_, len)| len).sum()
}
