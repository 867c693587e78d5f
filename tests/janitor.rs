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
    // These tests count the lifecycle, orphan and retention items of runs; the purge of the
    // log records those runs supersede has its own (tests/compaction.rs).
    config.janitor.purge_log = false;
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
async fn a_failing_item_is_recorded_the_rest_of_the_run_goes_on_and_the_next_run_retries_it() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_800_000_000_000);
    let server = start(dir.path(), &clock).await;
    a_month_of_files(&server, dir.path(), &clock).await;

    // The second item fails: it is recorded with its reason, and the run goes on (issue 17: a
    // broken cold tier once blocked unrelated clean-up until the next day).
    roomlog::fault::fail_once("janitor:item", 1);
    let (status, partial) = run(&server).await;
    assert_eq!(status, 500, "not everything was done: {partial}");
    assert_eq!(partial["outcome"], "partial");
    assert!(partial["error"].as_str().expect("error").contains("injected failure"), "{partial}");
    let count = |list: &serde_json::Value| -> u64 {
        list.as_array().expect("tallies").iter().map(|r| r["items"].as_u64().expect("n")).sum()
    };
    assert_eq!(count(&partial["rules"]), 4, "every other item was applied: {partial}");
    assert_eq!(count(&partial["failed"]), 1, "the failed one is counted under its rule: {partial}");
    assert_eq!(partial["failures"][0]["error"].as_str().map(|e| e.contains("injected failure")), Some(true));

    let (status, finished) = run(&server).await;
    assert_eq!(status, 200, "{finished}");
    assert_eq!(count(&finished["rules"]), 1, "the next run does the one that failed: {finished}");
    let (_, plan) = get(server.addr(), "/api/janitor/plan").await;
    assert_eq!(plan["items"], serde_json::json!([]));
    let (_, runs) = get(server.addr(), "/api/janitor/runs").await;
    let outcomes: Vec<&str> =
        runs["runs"].as_array().expect("runs").iter().map(|r| r["outcome"].as_str().expect("o")).collect();
    assert_eq!(outcomes, ["succeeded", "partial"], "newest first");
    server.shutdown().await;
}

/// Issue 17: a broken cold tier blocked unrelated room retention, and the plan too, and with a
/// daily slot the next try was a day later. Now the plan answers, listing what it could not
/// read; the run cuts the rooms and records the failed move; a retry comes `retry_after` later
/// and finishes once the tier is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_cold_tier_does_not_stop_retention_and_a_retry_comes_soon() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_800_000_000_000);
    let mut config = common::config(&dir.path().join("data"));
    std::fs::create_dir_all(&config.data).expect("data");
    std::fs::write(dir.path().join("lifecycle.json"), RULES).expect("rules");
    config.files.lifecycle = Some(dir.path().join("lifecycle.json"));
    let cold = dir.path().join("cold");
    config.files.cold_dir = Some(cold.clone());
    // The first slot comes after the month the files need to be due for the cold tier.
    config.janitor.every = Some(40 * DAY);
    config.janitor.retry_after = Duration::from_secs(15 * 60);
    config.retention.default.max_messages = Some(10);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server =
        Server::start_with_clock(config, listener, Arc::new(NameOnly), Arc::new(clock.clone())).await.expect("starts");
    put(&server, "permanent/photos/d.jpg", vec![4u8; 4000]).await;
    let mut ann = common::Client::connect(server.addr(), "ann").await;
    ann.join("lobby", None).await;
    for n in 0..25 {
        ann.say("lobby", &format!("m{n}"), &format!("c{n}")).await;
    }
    clock.advance(31 * DAY);
    // The cold tier breaks: its folder is now a file.
    std::fs::remove_dir_all(&cold).expect("rm cold");
    std::fs::write(&cold, b"not a folder").expect("break the tier");

    let (status, plan) = get(server.addr(), "/api/janitor/plan").await;
    assert_eq!(status, 200, "the plan answers: {plan}");
    let actions: Vec<&str> =
        plan["items"].as_array().expect("items").iter().filter_map(|i| i["action"].as_str()).collect();
    assert!(actions.contains(&"expire_messages") && actions.contains(&"move_to_cold"), "{plan}");
    assert!(plan["unreadable"].as_array().is_some_and(|u| !u.is_empty()), "what it could not read is listed: {plan}");

    // The scheduled run: the rooms are cut, the move fails and is recorded.
    clock.advance(9 * DAY);
    let runs = runs_until(&server, 1).await;
    assert_eq!(
        (runs[0]["trigger"].as_str(), runs[0]["outcome"].as_str()),
        (Some("schedule"), Some("partial")),
        "{runs:?}"
    );
    assert!(runs[0]["failures"].to_string().contains("move_to_cold"), "{runs:?}");
    assert_eq!(common::whole_history(server.addr(), "lobby").await.len(), 10, "retention applied regardless");

    // The tier comes back; the retry comes 15 minutes later, not at the next slot 40 days on.
    std::fs::remove_file(&cold).expect("rm");
    std::fs::create_dir_all(&cold).expect("mkdir cold");
    clock.advance(Duration::from_secs(15 * 60));
    let runs = runs_until(&server, 2).await;
    assert_eq!(
        (runs[0]["trigger"].as_str(), runs[0]["outcome"].as_str()),
        (Some("retry"), Some("succeeded")),
        "{runs:?}"
    );
    let moved = reqwest::get(format!("http://{}/api/files/permanent/photos/d.jpg", server.addr())).await.expect("get");
    assert_eq!(moved.headers()["x-roomlog-tier"], "cold");
    server.shutdown().await;
}

/// The janitor's runs once there are `n` of them, newest first (bounded wait).
async fn runs_until(server: &Server, n: usize) -> Vec<Value> {
    for _ in 0..500 {
        let (_, runs) = get(server.addr(), "/api/janitor/runs").await;
        let runs = runs["runs"].as_array().cloned().unwrap_or_default();
        if runs.len() >= n {
            return runs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the janitor did not run {n} times");
}

/// `roomlog janitor run` against `server`: its exit code and what it printed (stdout, stderr).
async fn janitor_run_command(server: &Server, data: &std::path::Path) -> (i32, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_roomlog"));
    command.args(["janitor", "run", "--addr", &server.addr().to_string(), "--data"]).arg(data);
    let output = tokio::task::spawn_blocking(move || command.output()).await.expect("join").expect("roomlog runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

/// Issue 17: `roomlog janitor run` exited 1, as for "cannot reach the server", when the run
/// itself failed; a cron job or a script tells them apart by the documented 2, for a failed and
/// a partial run alike, and still sees what the run did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_command_exits_2_when_the_run_failed_or_was_partial() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_800_000_000_000);
    let server = start(dir.path(), &clock).await;
    let data = dir.path().join("data");
    a_month_of_files(&server, dir.path(), &clock).await;

    roomlog::fault::fail_once("janitor:item", 1);
    let (code, text) = janitor_run_command(&server, &data).await;
    assert_eq!(code, 2, "a partial run: {text}");
    assert!(text.contains("partial") && text.contains("injected failure"), "{text}");

    // One item left (the one that failed), and it fails again: nothing could be done.
    roomlog::fault::fail_once("janitor:item", 0);
    let (code, text) = janitor_run_command(&server, &data).await;
    assert_eq!(code, 2, "a failed run: {text}");
    assert!(text.contains("failed"), "{text}");

    let (code, text) = janitor_run_command(&server, &data).await;
    assert_eq!(code, 0, "a run that did everything: {text}");
    assert!(text.contains("succeeded"), "{text}");
    server.shutdown().await;
}
