//! The janitor: the dry run lists exactly what the run then removes, every rule applies, each
//! run is recorded, and a run that fails half way is finished by the next.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::get;
use roomlog::auth::NameOnly;
use roomlog::clock::ManualClock;
use roomlog::Server;
use serde_json::Value;

/// The failure test arms a process-wide fault that any janitor run here would trip: the tests
/// of this file take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The issue's example policy.
const RULES: &str = r#"{"Rules": [
  {"ID": "DeleteTempFiles", "Status": "Enabled", "Filter": {"Prefix": "temp_"}, "Expiration": {"Days": 7}},
  {"ID": "ExpireTts", "Status": "Enabled", "Filter": {"Prefix": "tts/"}, "Expiration": {"Days": 30}},
  {"ID": "TransitionToIA", "Status": "Enabled", "Filter": {"Prefix": "permanent/"},
   "Transitions": [{"Days": 30, "StorageClass": "STANDARD_IA"}, {"Days": 90, "StorageClass": "GLACIER"}]}
]}"#;

async fn start(dir: &std::path::Path, clock: &ManualClock) -> Server {
    let mut config = common::config(&dir.join("data"));
    std::fs::create_dir_all(&config.data).expect("data");
    std::fs::write(dir.join("lifecycle.json"), RULES).expect("rules");
    config.files.lifecycle = Some(dir.join("lifecycle.json"));
    config.files.cold_dir = Some(dir.join("cold"));
    config.janitor.every = None;
    config.janitor.orphan_min_age = Duration::ZERO;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    Server::start_with_clock(config, listener, Arc::new(NameOnly), Arc::new(clock.clone())).await.expect("starts")
}

async fn put(server: &Server, key: &str, body: Vec<u8>) {
    let (status, answer) = common::put_file(server.addr(), key, body, "application/octet-stream").await;
    assert_eq!(status, 201, "{answer}");
}

async fn run(server: &Server) -> (u16, Value) {
    let response =
        reqwest::Client::new().post(format!("http://{}/api/janitor/run", server.addr())).send().await.expect("run");
    (response.status().as_u16(), response.json().await.expect("json"))
}

/// Files every rule applies to, 31 days later, plus an orphan.
async fn a_month_of_files(server: &Server, dir: &std::path::Path, clock: &ManualClock) -> String {
    put(server, "temp_photos/a.jpg", vec![1u8; 1000]).await;
    put(server, "temp_audio/b.mp3", vec![2u8; 2000]).await;
    put(server, "tts/c.mp3", vec![3u8; 3000]).await;
    put(server, "permanent/photos/d.jpg", vec![4u8; 4000]).await;
    put(server, "other/e.bin", vec![5u8; 5000]).await;
    let orphan = vec![6u8; 600];
    let hash = blake3::hash(&orphan).to_hex().to_string();
    let fan = dir.join("data/blobs/hot").join(&hash[..2]);
    std::fs::create_dir_all(&fan).expect("fan");
    std::fs::write(fan.join(&hash), orphan).expect("orphan");
    clock.advance(31 * DAY);
    hash
}

fn rules(value: &Value) -> Vec<(String, u64, u64)> {
    let mut out: Vec<(String, u64, u64)> = value
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            (
                r["rule"].as_str().expect("rule").to_owned(),
                r["items"].as_u64().expect("n"),
                r["bytes"].as_u64().expect("b"),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dry_run_lists_exactly_what_the_run_removes() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_800_000_000_000);
    let server = start(dir.path(), &clock).await;
    let orphan = a_month_of_files(&server, dir.path(), &clock).await;

    let (status, plan) = get(server.addr(), "/api/janitor/plan").await;
    assert_eq!(status, 200, "{plan}");
    let expected = vec![
        ("DeleteTempFiles".to_owned(), 2, 3000),
        ("ExpireTts".to_owned(), 1, 3000),
        ("TransitionToIA".to_owned(), 1, 4000),
        ("orphans".to_owned(), 1, 600),
    ];
    assert_eq!(rules(&plan["rules"]), expected, "{plan}");
    let targets: Vec<&str> =
        plan["items"].as_array().expect("items").iter().map(|i| i["target"].as_str().expect("t")).collect();
    assert!(targets.contains(&"temp_photos/a.jpg") && targets.contains(&orphan.as_str()), "{plan}");
    assert!(!targets.contains(&"other/e.bin"), "no rule names other/");

    let (status, ran) = run(&server).await;
    assert_eq!(status, 200, "{ran}");
    assert_eq!(ran["outcome"], "succeeded");
    assert_eq!(rules(&ran["rules"]), expected, "the run removes what the plan listed");
    for gone in ["temp_photos/a.jpg", "temp_audio/b.mp3", "tts/c.mp3"] {
        assert_eq!(get(server.addr(), &format!("/api/files/{gone}")).await.0, 404, "{gone}");
    }
    let moved = reqwest::get(format!("http://{}/api/files/permanent/photos/d.jpg", server.addr())).await.expect("get");
    assert_eq!(moved.headers()["x-roomlog-tier"], "cold");
    assert!(moved.bytes().await.expect("body").as_ref() == &[4u8; 4000][..]);
    assert!(!dir.path().join("data/blobs/hot").join(&orphan[..2]).join(&orphan).exists(), "the orphan is deleted");

    // Nothing left to do; the run is on record.
    let (_, plan) = get(server.addr(), "/api/janitor/plan").await;
    assert_eq!(plan["items"], serde_json::json!([]), "{plan}");
    let (_, runs) = get(server.addr(), "/api/janitor/runs").await;
    assert_eq!(runs["runs"][0]["run"], 1);
    assert_eq!(runs["runs"][0]["trigger"], "manual");
    assert_eq!(rules(&runs["runs"][0]["rules"]), expected);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_fails_half_way_is_recorded_as_failed_and_the_next_run_finishes() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_800_000_000_000);
    let server = start(dir.path(), &clock).await;
    a_month_of_files(&server, dir.path(), &clock).await;

    // The second item fails.
    roomlog::fault::fail_once("janitor:item", 1);
    let (status, failed) = run(&server).await;
    assert_eq!(status, 500, "{failed}");
    assert_eq!(failed["outcome"], "failed");
    assert!(failed["error"].as_str().expect("error").contains("injected failure"), "{failed}");
    let done: u64 = failed["rules"].as_array().expect("rules").iter().map(|r| r["items"].as_u64().expect("n")).sum();
    assert_eq!(done, 1, "one item was applied before the failure: {failed}");

    let (status, finished) = run(&server).await;
    assert_eq!(status, 200, "{finished}");
    let done: u64 = finished["rules"].as_array().expect("rules").iter().map(|r| r["items"].as_u64().expect("n")).sum();
    assert_eq!(done, 4, "the next run does the other four: {finished}");
    let (_, plan) = get(server.addr(), "/api/janitor/plan").await;
    assert_eq!(plan["items"], serde_json::json!([]));
    let (_, runs) = get(server.addr(), "/api/janitor/runs").await;
    let outcomes: Vec<&str> =
        runs["runs"].as_array().expect("runs").iter().map(|r| r["outcome"].as_str().expect("o")).collect();
    assert_eq!(outcomes, ["succeeded", "failed"], "newest first");
    server.shutdown().await;
}
