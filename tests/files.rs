//! The file store over HTTP: content stored once per hash, streamed both ways, ranges, copies,
//! deletions that free disk once no key uses the content, and purged sessions taking their keys.

mod common;

use std::sync::Arc;
use std::time::Duration;

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

/// Runs `roomlog scrub` against the server; its exit code and standard output.
async fn scrub_command(server: &Server, data: &std::path::Path, json: bool) -> (Option<i32>, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_roomlog"));
    command.args(["scrub", "--addr", &server.addr().to_string(), "--data"]).arg(data);
    if json {
        command.arg("--json");
    }
    let output = tokio::task::spawn_blocking(move || command.output()).await.expect("join").expect("scrub runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), text)
}

fn url(server: &Server, path: &str) -> String {
    format!("http://{}{path}", server.addr())
}

async fn put(server: &Server, key: &str, body: Vec<u8>) -> (u16, Value) {
    common::put_file(server.addr(), key, body, "audio/mpeg").await
}

/// A new session's id.
async fn create_session(server: &Server) -> String {
    let session: Value = reqwest::Client::new()
        .post(url(server, "/api/sessions"))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    session["id"].as_str().expect("id").to_owned()
}

/// Content files on disk.
fn contents(dir: &std::path::Path) -> usize {
    common::files_under(&dir.join("blobs/hot")).len()
}

/// Waits (bounded) until `n` content files are on disk: the reaper works in the background.
async fn contents_become(dir: &std::path::Path, n: usize) {
    for _ in 0..400 {
        if contents(dir) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("expected {n} content files, found {}", contents(dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_keys_share_one_file_and_deleting_both_frees_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), &ManualClock::new(1_800_000_000_000)).await;
    let audio: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (status, first) = put(&server, "temp_audio/a.mp3", audio.clone()).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["hash"], blake3::hash(&audio).to_hex().to_string());
    let (_, second) = put(&server, "tts/b.mp3", audio.clone()).await;
    assert_eq!(second["hash"], first["hash"]);
    let response = reqwest::Client::new()
        .post(url(&server, "/api/files/tts/b.mp3?copy_to=permanent/photos/c.mp3"))
        .send()
        .await
        .expect("copy");
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(contents(dir.path()), 1, "three keys, one file");

    // Download: whole, then a range, then a conditional GET.
    let whole = reqwest::get(url(&server, "/api/files/permanent/photos/c.mp3")).await.expect("get");
    assert_eq!(whole.headers()["etag"], format!("\"{}\"", first["hash"].as_str().expect("hash")));
    assert_eq!(whole.headers()["content-type"], "audio/mpeg");
    assert_eq!(whole.bytes().await.expect("body").as_ref(), &audio[..]);
    let part = reqwest::Client::new()
        .get(url(&server, "/api/files/tts/b.mp3"))
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .expect("range");
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(part.headers()["content-range"], format!("bytes 1000-1999/{}", audio.len()));
    assert_eq!(part.bytes().await.expect("body").as_ref(), &audio[1000..2000]);
    let tail = reqwest::Client::new()
        .get(url(&server, "/api/files/tts/b.mp3"))
        .header("range", "bytes=-10")
        .send()
        .await
        .expect("suffix");
    assert_eq!(tail.bytes().await.expect("body").as_ref(), &audio[audio.len() - 10..]);
    let bad = reqwest::Client::new()
        .get(url(&server, "/api/files/tts/b.mp3"))
        .header("range", "bytes=999999999-")
        .send()
        .await
        .expect("bad range");
    assert_eq!(bad.status().as_u16(), 416);

    let (_, listed) = get(server.addr(), "/api/files?prefix=t").await;
    let keys: Vec<&str> =
        listed["files"].as_array().expect("files").iter().map(|f| f["key"].as_str().expect("key")).collect();
    assert_eq!(keys, ["temp_audio/a.mp3", "tts/b.mp3"]);

    for key in ["temp_audio/a.mp3", "tts/b.mp3"] {
        let response =
            reqwest::Client::new().delete(url(&server, &format!("/api/files/{key}"))).send().await.expect("delete");
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(contents(dir.path()), 1, "a key still uses the file");
    }
    let response =
        reqwest::Client::new().delete(url(&server, "/api/files/permanent/photos/c.mp3")).send().await.expect("delete");
    assert_eq!(response.status().as_u16(), 200);
    contents_become(dir.path(), 0).await;
    let (status, _) = get(server.addr(), "/api/files/tts/b.mp3").await;
    assert_eq!(status, 404);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_hashes_and_cut_uploads_leave_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), &ManualClock::new(1_800_000_000_000)).await;
    // (`a/%2e%2e/b` is normalised away by the client itself; the unit tests cover it.)
    for key in ["..%2Fetc%2Fpasswd", "a//b", "x%00y"] {
        let (status, body) = put(&server, key, b"x".to_vec()).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_key")), "{key}: {body}");
    }
    let response = reqwest::Client::new()
        .put(url(&server, "/api/files/tts/x.mp3"))
        .header("x-content-blake3", "0".repeat(64))
        .body(b"hello".to_vec())
        .send()
        .await
        .expect("put");
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(response.json::<Value>().await.expect("json")["error"]["code"], "hash_mismatch");

    // An upload cut off half way: the client announces 1 MB and hangs up after 64 KiB.
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.expect("connect");
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(b"PUT /api/files/temp_photos/cut.jpg HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n")
        .await
        .expect("head");
    stream.write_all(&vec![7u8; 65536]).await.expect("part");
    drop(stream);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = get(server.addr(), "/api/files/temp_photos/cut.jpg").await;
    assert_eq!(status, 404, "no key");
    assert_eq!(contents(dir.path()), 0, "no content file");
    assert_eq!(common::files_under(&dir.path().join("blobs/tmp")).len(), 0, "no temporary file");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_session_takes_its_keys_and_their_files_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_800_000_000_000);
    let server = start(dir.path(), &clock).await;
    let client = reqwest::Client::new();
    let id = create_session(&server).await;
    let own = |key: &str| url(&server, &format!("/api/files/{key}?session={id}"));
    for (key, body) in [("temp_photos/1.jpg", vec![1u8; 5000]), ("temp_audio/1.mp3", vec![2u8; 7000])] {
        let response = client.put(own(key)).body(body).send().await.expect("put");
        assert_eq!(response.status().as_u16(), 201);
    }
    // Another key shares the audio's content but not its owner: that file stays.
    put(&server, "tts/shared.mp3", vec![2u8; 7000]).await;
    assert_eq!(contents(dir.path()), 2);

    clock.advance(Duration::from_secs(8 * 24 * 3600));
    for _ in 0..400 {
        let (_, s) = get(server.addr(), &format!("/api/sessions/{id}")).await;
        if s["session"]["state"] == "purged" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    contents_become(dir.path(), 1).await;
    let (status, _) = get(server.addr(), "/api/files/temp_photos/1.jpg").await;
    assert_eq!(status, 404, "the session's keys went with it");
    let kept = reqwest::get(url(&server, "/api/files/tts/shared.mp3")).await.expect("get").bytes().await.expect("body");
    assert_eq!(kept.as_ref(), &vec![2u8; 7000][..]);
    let response = client.put(own("temp_photos/2.jpg")).body(vec![3u8; 10]).send().await.expect("put");
    assert_eq!(response.status().as_u16(), 409, "a purged session owns nothing new");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_lifecycle_policy_is_applied_to_plans_and_a_bad_one_stops_start_up() {
    use roomlog::clock::{Clock, SystemClock};
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = r#"{"Rules": [
      {"ID": "DeleteTempFiles", "Status": "Enabled", "Filter": {"Prefix": "temp_"}, "Expiration": {"Days": 7}},
      {"ID": "ExpireTts", "Status": "Enabled", "Filter": {"Prefix": "tts/"}, "Expiration": {"Days": 30}},
      {"ID": "TransitionToIA", "Status": "Enabled", "Filter": {"Prefix": "permanent/"},
       "Transitions": [{"Days": 30, "StorageClass": "STANDARD_IA"}, {"Days": 90, "StorageClass": "GLACIER"}]}
    ]}"#;
    std::fs::write(dir.path().join("lifecycle.json"), policy).expect("policy");
    let mut config = config(&dir.path().join("data"));
    config.files.lifecycle = Some(dir.path().join("lifecycle.json"));
    config.files.cold_dir = Some(dir.path().join("cold"));
    config.janitor.every = None; // the clock jumps 45 days: a scheduled run would apply the plan
    std::fs::create_dir_all(&config.data).expect("data");
    let clock = ManualClock::new(SystemClock.now_ms());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server = Server::start_with_clock(config.clone(), listener, Arc::new(NameOnly), Arc::new(clock.clone()))
        .await
        .expect("starts with the example policy");
    for key in ["temp_photos/a.jpg", "tts/b.mp3", "permanent/photos/c.jpg", "other/d"] {
        assert_eq!(put(&server, key, key.as_bytes().to_vec()).await.0, 201);
    }
    let (_, plan) = get(server.addr(), "/api/lifecycle/plan").await;
    assert_eq!(plan["plan"].as_array().expect("plan").len(), 0, "nothing is due on day 0: {plan}");
    clock.advance(Duration::from_secs(45 * 24 * 3600));
    let (_, plan) = get(server.addr(), "/api/lifecycle/plan").await;
    // Per key: an expiry names its key; a move names its content and the keys naming it.
    let keys_of = |plan: &Value| {
        let mut planned: Vec<(String, String)> = Vec::new();
        for item in plan["plan"].as_array().expect("plan") {
            let rule = item["rule"].as_str().expect("rule").to_owned();
            match item["action"].as_str() {
                Some("expire") => planned.push((item["target"].as_str().expect("key").to_owned(), rule)),
                _ => planned.extend(
                    item["keys"]
                        .as_array()
                        .expect("keys")
                        .iter()
                        .map(|k| (k.as_str().expect("key").to_owned(), rule.clone())),
                ),
            }
        }
        planned.sort();
        planned
    };
    assert_eq!(
        keys_of(&plan),
        [
            ("permanent/photos/c.jpg".to_owned(), "TransitionToIA".to_owned()),
            ("temp_photos/a.jpg".to_owned(), "DeleteTempFiles".to_owned()),
            ("tts/b.mp3".to_owned(), "ExpireTts".to_owned()),
        ]
    );
    let moved = plan["plan"].as_array().expect("plan").iter().find(|i| i["action"] == "move_to_cold").expect("a move");
    assert!(moved["detail"].as_str().is_some_and(|d| d.starts_with("STANDARD_IA: the cold tier")), "{moved}");

    // The janitor applies exactly that plan; at day 100 GLACIER is due, but STANDARD_IA and
    // GLACIER are the same cold tier: nothing is listed that the janitor would not do.
    let ran = server.janitor().run("manual").await.expect("run");
    assert_eq!(ran.outcome, "succeeded", "{ran:?}");
    assert_eq!(ran.rules.iter().map(|r| r.items).sum::<u64>(), 3, "{ran:?}");
    clock.advance(Duration::from_secs(55 * 24 * 3600));
    let (_, plan) = get(server.addr(), "/api/lifecycle/plan").await;
    assert_eq!(keys_of(&plan), Vec::<(String, String)>::new(), "no transition already applied: {plan}");
    let (_, janitor_plan) = get(server.addr(), "/api/janitor/plan").await;
    // The janitor agrees; what is left is the purge of the two expired keys' upload events.
    assert_eq!(
        janitor_plan["rules"],
        serde_json::json!([{"rule": "log_purge", "items": 2, "bytes": janitor_plan["rules"][0]["bytes"]}]),
        "the janitor agrees: {janitor_plan}"
    );
    server.shutdown().await;

    std::fs::write(
        dir.path().join("lifecycle.json"),
        r#"{"Rules":[{"ID":"X","Status":"Enabled","Expiration":{"Days":0}}]}"#,
    )
    .expect("bad policy");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let error = Server::start(config, listener).await.expect_err("a bad policy stops start-up").to_string();
    assert!(error.contains(r#"rule 1 ("X"), Expiration.Days: 0"#), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paying_a_session_moves_its_temp_keys_to_permanent_ones_that_outlive_the_purge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_800_000_000_000);
    let server = start(dir.path(), &clock).await;
    let client = reqwest::Client::new();
    let id = create_session(&server).await;
    let photo = vec![9u8; 4096];
    let response =
        client.put(url(&server, &format!("/api/files/temp_photos/x.jpg?session={id}"))).body(photo.clone()).send();
    assert_eq!(response.await.expect("put").status().as_u16(), 201);

    let paid: Value = client
        .post(url(&server, &format!("/api/sessions/{id}/pay")))
        .send()
        .await
        .expect("pay")
        .json()
        .await
        .expect("json");
    assert_eq!(paid["state"], "paid", "{paid}");
    assert_eq!(paid["files_moved"], serde_json::json!(["permanent/photos/x.jpg"]));
    let (status, _) = get(server.addr(), "/api/files/temp_photos/x.jpg").await;
    assert_eq!(status, 404, "the temp_ key is gone");
    assert_eq!(contents(dir.path()), 1, "a rename moves no bytes");

    // Past the purge age, the paid session and its permanent file are still there.
    clock.advance(Duration::from_secs(8 * 24 * 3600));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, s) = get(server.addr(), &format!("/api/sessions/{id}")).await;
    assert_eq!(s["session"]["state"], "paid");
    let deleted = s["events"].as_array().expect("events").iter().any(|e| e["event"].get("SessionPurged.1").is_some());
    assert!(!deleted, "a paid session is never purged: {s}");
    let kept = reqwest::get(url(&server, "/api/files/permanent/photos/x.jpg")).await.expect("get");
    assert!(kept.bytes().await.expect("body").as_ref() == &photo[..]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrub_quarantines_damaged_content_and_lists_orphans() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), &ManualClock::new(1_800_000_000_000)).await;
    let good = vec![1u8; 3000];
    let damaged = vec![2u8; 3000];
    put(&server, "tts/good.mp3", good.clone()).await;
    let (_, entry) = put(&server, "tts/bad.mp3", damaged.clone()).await;
    let hash = entry["hash"].as_str().expect("hash").to_owned();
    // A disk error flips bytes in one file; a crashed tool leaves a file no key names.
    let path = dir.path().join("blobs/hot").join(&hash[..2]).join(&hash);
    std::fs::write(&path, vec![3u8; 3000]).expect("damage");
    let orphan = vec![4u8; 1000];
    let orphan_hash = blake3::hash(&orphan).to_hex().to_string();
    let orphan_dir = dir.path().join("blobs/hot").join(&orphan_hash[..2]);
    std::fs::create_dir_all(&orphan_dir).expect("fan");
    std::fs::write(orphan_dir.join(&orphan_hash), &orphan).expect("orphan");

    // The operator's command, which reads the server's answer as its own `ScrubReport`: exit
    // code 2 when content was damaged; `--json` prints the answer as it came.
    let (code, text) = scrub_command(&server, dir.path(), true).await;
    assert_eq!(code, Some(2), "{text}");
    let report: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(report["files"], 3, "{report}");
    let damaged_list = report["damaged"].as_array().expect("damaged");
    assert_eq!(damaged_list.len(), 1, "{report}");
    assert_eq!(damaged_list[0]["hash"], hash);
    assert_eq!(damaged_list[0]["found"], blake3::hash(&[3u8; 3000]).to_hex().to_string());
    assert!(!path.exists(), "the damaged file left the store");
    assert!(dir.path().join("blobs/quarantine").join(format!("{hash}.hot")).exists());
    assert_eq!(report["orphans"], serde_json::json!([{ "hash": orphan_hash, "tier": "hot", "bytes": 1000 }]));
    // Scrubbed again: nothing damaged is left (exit 0), the orphan is still listed, in words.
    let (code, text) = scrub_command(&server, dir.path(), false).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with("scrubbed 2 files") && text.contains("0 damaged, 1 orphans"), "{text}");
    assert!(text.contains(&format!("orphan {orphan_hash} (hot tier, 1000 bytes)")), "{text}");

    let (status, body) = get(server.addr(), "/api/files/tts/bad.mp3").await;
    assert_eq!((status, body["error"]["code"].as_str()), (500, Some("content_missing")), "{body}");
    let fine = reqwest::get(url(&server, "/api/files/tts/good.mp3")).await.expect("get").bytes().await.expect("body");
    assert!(fine.as_ref() == &good[..], "the other content is untouched");
    // Uploading the same bytes again heals the key.
    put(&server, "tts/again.mp3", damaged.clone()).await;
    let healed = reqwest::get(url(&server, "/api/files/tts/bad.mp3")).await.expect("get").bytes().await.expect("body");
    assert!(healed.as_ref() == &damaged[..]);
    server.shutdown().await;
}

/// Issue 17: a key longer than 255 bytes once panicked the log writer (the stream index stored
/// the stream's length in one byte), after which nothing at all was stored, chat included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_every_allowed_length_are_stored_and_longer_ones_refused_while_chat_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), &ManualClock::new(1_000_000)).await;
    let mut ann = common::Client::connect(server.addr(), "ann").await;
    ann.join("lobby", None).await;
    for len in [255usize, 256, 511, 512, 513] {
        let key = format!("k/{}", "a".repeat(len - 2));
        let body = format!("content of a {len}-byte key").into_bytes();
        let (status, answer) = put(&server, &key, body.clone()).await;
        if len <= 512 {
            assert_eq!(status, 201, "a {len}-byte key is stored: {answer}");
            let read = reqwest::get(url(&server, &format!("/api/files/{key}"))).await.expect("get");
            assert_eq!(read.bytes().await.expect("bytes").as_ref(), body.as_slice());
        } else {
            assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_key")), "{answer}");
        }
        ann.say("lobby", &format!("after the {len}-byte key"), &format!("c{len}")).await;
    }
    server.shutdown().await;
}
