//! Backups of a live server, verification, and restores: full, incremental, point in time.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::{spawn, whole_history, Client};
use roomlog::log::{EventLog, LogConfig};
use roomlog::projection::history;
use serde_json::Value;

/// Runs the `roomlog` command; returns exit code, stdout, stderr.
fn roomlog(args: &[&str], data: &Path) -> (i32, String, String) {
    let output =
        Command::new(env!("CARGO_BIN_EXE_roomlog")).args(args).arg("--data").arg(data).output().expect("run roomlog");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The number after "through seq " in a backup's report.
fn cut_of(report: &str) -> u64 {
    report
        .split("through seq ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no cut in {report:?}"))
}

/// POSTs to the server; the JSON answer.
async fn post_json(addr: std::net::SocketAddr, path: &str) -> Value {
    let response = reqwest::Client::new().post(format!("http://{addr}{path}")).send().await.expect("post");
    assert!(response.status().is_success(), "POST {path}: {}", response.status());
    response.json().await.expect("json")
}

/// A file's status and bytes.
async fn download(addr: std::net::SocketAddr, key: &str) -> (u16, Vec<u8>) {
    let response = reqwest::get(format!("http://{addr}/api/files/{key}")).await.expect("get file");
    (response.status().as_u16(), response.bytes().await.expect("body").to_vec())
}

/// Bytes that differ from file to file and do not compress away.
fn noise(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(u32::from(seed)) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_every_message_acknowledged_before_its_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("live");
    let archive = dir.path().join("full.tar");
    let server = spawn(&data);
    // Sessions and files before the cut: one paid, one not; a photo the paid session owned
    // (renamed to permanent/ on pay), a shared content under two keys, and a deleted key.
    let (paid, unpaid) = (post_json(server.addr, "/api/sessions").await, post_json(server.addr, "/api/sessions").await);
    let paid_id = paid["id"].as_str().expect("id").to_owned();
    let unpaid_id = unpaid["id"].as_str().expect("id").to_owned();
    let (photo, audio, gone) = (noise(1, 300_000), noise(2, 70_000), noise(3, 5_000));
    let owned = format!("temp_photos/p.jpg?session={paid_id}");
    assert_eq!(common::put_file(server.addr, &owned, photo.clone(), "image/jpeg").await.0, 201);
    assert_eq!(common::put_file(server.addr, "tts/a.mp3", audio.clone(), "audio/mpeg").await.0, 201);
    assert_eq!(common::put_file(server.addr, "tts/same.mp3", audio.clone(), "audio/mpeg").await.0, 201);
    assert_eq!(common::put_file(server.addr, "tts/gone.mp3", gone.clone(), "audio/mpeg").await.0, 201);
    let deleted = reqwest::Client::new().delete(format!("http://{}/api/files/tts/gone.mp3", server.addr)).send();
    assert_eq!(deleted.await.expect("delete").status().as_u16(), 200);
    let paid = post_json(server.addr, &format!("/api/sessions/{paid_id}/pay")).await;
    assert_eq!(paid["files_moved"], serde_json::json!(["permanent/photos/p.jpg"]), "{paid}");
    let acked: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (acked, stop, addr) = (acked.clone(), stop.clone(), server.addr);
        tokio::spawn(async move {
            let mut ann = Client::connect(addr, "ann").await;
            ann.join("lobby", None).await;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let body = format!("m{n}");
                let seq = ann.say("lobby", &body, &format!("{n}")).await;
                acked.lock().expect("lock").push((seq, body));
                n += 1;
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (code, out, err) = {
        let (data, archive) = (data.clone(), archive.clone());
        tokio::task::spawn_blocking(move || roomlog(&["backup", "--out", archive.to_str().expect("utf-8 path")], &data))
            .await
            .expect("backup task")
    };
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(" 2 content files"), "the photo and the shared audio, not the deleted key's: {out}");
    assert_eq!(common::put_file(server.addr, "tts/late.mp3", noise(4, 1000), "audio/mpeg").await.0, 201);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    sender.await.expect("sender");
    let sessions_before = [
        common::get(server.addr, &format!("/api/sessions/{paid_id}")).await.1,
        common::get(server.addr, &format!("/api/sessions/{unpaid_id}")).await.1,
    ];
    let cut = cut_of(&out);
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.iter().any(|(s, _)| *s > cut),
        "messages were acknowledged after the cut too: the server was under load"
    );
    drop(server);

    let (code, out, err) = roomlog(&["backup", "verify", archive.to_str().expect("path")], &data);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": ok, full backup"), "{out}");

    let restored = dir.path().join("restored");
    let (code, out, err) = roomlog(&["restore", archive.to_str().expect("path")], &restored);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("through seq {cut}")), "{out}");
    let server = spawn(&restored);
    let history = whole_history(server.addr, "lobby").await;
    let by_seq: std::collections::HashMap<u64, String> = history
        .iter()
        .map(|m| (m["seq"].as_u64().expect("seq"), m["body"].as_str().expect("body").to_owned()))
        .collect();
    for (seq, body) in acked.iter().filter(|(s, _)| *s <= cut) {
        assert_eq!(by_seq.get(seq), Some(body), "seq {seq} acknowledged before the cut");
    }
    assert!(by_seq.keys().all(|&s| s <= cut), "nothing after the cut");

    common::projections_caught_up(server.addr).await;
    let (last_seq, last_body) = acked.iter().filter(|(s, _)| *s <= cut).max().expect("messages before the cut");
    let (total, hits) = common::search_all(server.addr, &format!("q={last_body}")).await;
    assert_eq!(total, 1, "search finds the last message before the cut: {hits:?}");
    assert_eq!(hits[0]["seq"].as_u64(), Some(*last_seq));
    let (total, _) = common::search_all(server.addr, "q=m0").await;
    assert_eq!(total, 1, "and the first");
    for (before, id) in sessions_before.iter().zip([&paid_id, &unpaid_id]) {
        let (status, after) = common::get(server.addr, &format!("/api/sessions/{id}")).await;
        assert_eq!(status, 200, "session {id} is back");
        assert_eq!(&after, before, "session {id} is as it was");
    }
    assert_eq!(sessions_before[0]["session"]["state"], "paid");
    assert_eq!(sessions_before[1]["session"]["state"], "active");
    assert_eq!(download(server.addr, "permanent/photos/p.jpg").await, (200, photo), "the paid photo, renamed");
    assert_eq!(download(server.addr, "tts/a.mp3").await, (200, audio.clone()));
    assert_eq!(download(server.addr, "tts/same.mp3").await, (200, audio));
    assert_eq!(download(server.addr, "temp_photos/p.jpg").await.0, 404, "renamed away before the cut");
    assert_eq!(download(server.addr, "tts/gone.mp3").await.0, 404, "deleted before the cut");
    assert_eq!(download(server.addr, "tts/late.mp3").await.0, 404, "uploaded after the cut");
    let mut bob = Client::connect(server.addr, "bob").await;
    bob.join("lobby", None).await;
    bob.messages(50.min(by_seq.len())).await;
    assert!(bob.say("lobby", "after restore", "x").await > cut, "seqs continue after the restored ones");
}

/// Starts a server on `data`, posts `count` messages, then uploads `tts/f<first>.mp3` (the
/// bytes of [`upload_of`]), stops it; returns the messages' seqs.
async fn post(data: &Path, first: usize, count: usize) -> Vec<u64> {
    let server = spawn(data);
    let mut ann = Client::connect(server.addr, "ann").await;
    ann.join("lobby", Some(u64::MAX)).await; // no replay of what earlier runs posted
    let mut seqs = Vec::new();
    for n in first..first + count {
        seqs.push(ann.say("lobby", &format!("m{n}"), &format!("{n}")).await);
    }
    let key = format!("tts/f{first}.mp3");
    assert_eq!(common::put_file(server.addr, &key, upload_of(first), "audio/mpeg").await.0, 201);
    seqs
}

fn upload_of(first: usize) -> Vec<u8> {
    noise(first as u8 % 31 + 1, 20_000 + first)
}

/// Whether the hot tier of `data` holds the content of [`upload_of`]`(first)`.
fn holds_upload(data: &Path, first: usize) -> bool {
    let hash = blake3::hash(&upload_of(first)).to_hex().to_string();
    data.join("blobs/hot").join(&hash[..2]).join(&hash).is_file()
}

/// The log and the history projection of the data folder `data`.
fn log_and_history(data: &Path) -> (Vec<roomlog::event::Envelope>, Vec<history::Entry>) {
    let log = EventLog::open(&roomlog::layout::log_dir(data), &LogConfig::default()).expect("open restored log");
    let events = log.read_range_blocking(1, 100_000).expect("read");
    let state = roomlog::state::StateDb::open(&roomlog::layout::state_dir(data), 1 << 24).expect("state");
    let (history, _) = history::open(&state, std::sync::Arc::new(log.clone())).expect("history");
    (events, history.dump().expect("dump"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_on_full_equals_a_full_backup_and_a_restore_stops_where_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("live");
    let path = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_owned();
    let first = post(&data, 0, 30).await;
    assert_eq!(roomlog(&["backup", "--out", &path("full1.tar")], &data).0, 0, "offline backup (server stopped)");
    let second = post(&data, 30, 30).await;
    let (code, out, err) = roomlog(&["backup", "--out", &path("incr.tar"), "--since", &path("full1.tar")], &data);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("incremental backup"), "{out}");
    assert!(out.contains(" 1 content files"), "only the content uploaded since its base: {out}");
    assert_eq!(roomlog(&["backup", "--out", &path("full2.tar")], &data).0, 0);

    let chained = dir.path().join("chained");
    let (code, out, err) = roomlog(&["restore", &path("full1.tar"), &path("incr.tar")], &chained);
    assert_eq!(code, 0, "{out}{err}");
    let single = dir.path().join("single");
    assert_eq!(roomlog(&["restore", &path("full2.tar")], &single).0, 0);
    let (chained_log, chained_history) = log_and_history(&chained);
    let (single_log, single_history) = log_and_history(&single);
    assert_eq!(chained_log.len(), 62, "60 messages and 2 uploads");
    assert_eq!(chained_log, single_log, "the same events, seqs and times");
    let raw = |log_dir: &Path| {
        let log = EventLog::open(log_dir, &LogConfig::default()).expect("open log");
        log.read_raw_blocking(1, 100_000).expect("read raw")
    };
    assert_eq!(
        raw(&roomlog::layout::log_dir(&chained)),
        raw(&roomlog::layout::log_dir(&data)),
        "restored records are the stored bytes, not re-encoded"
    );
    assert_eq!(chained_history, single_history, "the same history");
    for restored in [&chained, &single] {
        assert!(holds_upload(restored, 0) && holds_upload(restored, 30), "both uploads' content: {restored:?}");
    }
    let out = roomlog(&["backup", "verify", &path("incr.tar")], &data).1;
    assert!(out.contains("incremental backup"), "{out}");

    // Point in time: up to the 40th message.
    let until = second[9];
    let pitr = dir.path().join("pitr");
    let (code, out, err) =
        roomlog(&["restore", &path("full1.tar"), &path("incr.tar"), "--until-seq", &until.to_string()], &pitr);
    assert_eq!(code, 0, "{out}{err}");
    let (pitr_log, _) = log_and_history(&pitr);
    assert_eq!(pitr_log.last().map(|e| e.seq), Some(until));
    assert_eq!(pitr_log.len(), 41, "40 messages and the first upload");
    assert!(holds_upload(&pitr, 0), "content uploaded before the point");
    assert!(!holds_upload(&pitr, 30), "no content for a key stored after the point");
    let at = pitr_log[34].at_unix_ms;
    let by_time = dir.path().join("by-time");
    let time =
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(at)).to_string();
    let (code, out, err) =
        roomlog(&["restore", &path("full1.tar"), &path("incr.tar"), "--until-time", &time], &by_time);
    assert_eq!(code, 0, "{out}{err}");
    let (by_time_log, _) = log_and_history(&by_time);
    assert!(by_time_log.iter().all(|e| e.at_unix_ms <= at) && by_time_log.len() >= 35, "{} events", by_time_log.len());
    assert_eq!(first.len(), 30);

    // Refusals: an incremental alone, the wrong order, a folder that is not empty.
    let refused = |args: &[&str], data: &Path, why: &str| {
        let (code, out, err) = roomlog(args, data);
        assert_ne!(code, 0, "{args:?} must be refused: {out}");
        assert!(err.contains(why), "{args:?}: {err}");
    };
    refused(&["restore", &path("incr.tar")], &dir.path().join("x1"), "is incremental; give its full backup first");
    refused(&["restore", &path("full2.tar"), &path("incr.tar")], &dir.path().join("x2"), "does not continue");
    refused(&["restore", &path("full2.tar")], &chained, "is not empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_archive_is_detected_by_verify_and_refused_by_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("live");
    post(&data, 0, 20).await;
    let archive = dir.path().join("full.tar");
    let archive_str = archive.to_str().expect("utf-8");
    assert_eq!(roomlog(&["backup", "--out", archive_str], &data).0, 0);
    let mut bytes = std::fs::read(&archive).expect("read archive");
    // The first part's data starts after its 512-byte tar header; flip a byte inside it.
    bytes[512 + 100] ^= 0x55;
    std::fs::write(&archive, &bytes).expect("write corrupted archive");

    let (code, out, err) = roomlog(&["backup", "verify", archive_str], &data);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("log/000001.rec does not match its size and blake3"), "{err}");
    let target = dir.path().join("restored");
    let (code, _, err) = roomlog(&["restore", archive_str], &target);
    assert_ne!(code, 0);
    assert!(err.contains("does not match"), "{err}");
    assert!(!roomlog::layout::log_dir(&target).exists(), "nothing is written from a corrupt archive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_content_byte_is_detected_by_verify_and_refused_by_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("live");
    let body = noise(7, 50_000);
    {
        let server = spawn(&data);
        assert_eq!(common::put_file(server.addr, "tts/x.mp3", body.clone(), "audio/mpeg").await.0, 201);
    }
    let archive = dir.path().join("full.tar");
    let archive_str = archive.to_str().expect("utf-8");
    let (code, out, err) = roomlog(&["backup", "--out", archive_str], &data);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(" 1 content files"), "{out}");
    let mut bytes = std::fs::read(&archive).expect("read archive");
    let at = bytes.windows(64).position(|w| w == &body[1000..1064]).expect("the content is in the archive");
    bytes[at] ^= 0x01;
    std::fs::write(&archive, &bytes).expect("write corrupted archive");

    let (code, out, err) = roomlog(&["backup", "verify", archive_str], &data);
    assert_ne!(code, 0, "{out}");
    let hash = blake3::hash(&body).to_hex().to_string();
    assert!(err.contains(&format!("content/hot/{hash} does not match its size and blake3")), "{err}");
    let target = dir.path().join("restored");
    let (code, _, err) = roomlog(&["restore", archive_str], &target);
    assert_ne!(code, 0);
    assert!(err.contains("does not match"), "{err}");
    assert!(
        !roomlog::layout::log_dir(&target).exists() && !target.join("blobs").exists(),
        "nothing is written from a corrupt archive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_are_taken_and_only_the_newest_are_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::config(&dir.path().join("live"));
    config.backup.every = Some(std::time::Duration::from_millis(100));
    config.backup.keep = 2;
    let server = common::start(config).await;
    let mut ann = Client::connect(server.addr(), "ann").await;
    ann.join("lobby", None).await;
    ann.say("lobby", "kept", "1").await;
    let backups = dir.path().join("live").join("backups");
    let archives = || -> Vec<std::path::PathBuf> {
        let mut found: Vec<_> = std::fs::read_dir(&backups)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        found.sort();
        found
    };
    // Wait (bounded) for at least four scheduled runs: the first archive's name must be gone.
    let mut first = None;
    for _ in 0..500 {
        let now = archives();
        if first.is_none() {
            first = now.first().cloned();
        }
        if first.as_ref().is_some_and(|f| !now.contains(f)) && now.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let now = archives();
    assert_eq!(now.len(), 2, "backup.keep = 2: {now:?}");
    assert!(first.is_some_and(|f| !now.contains(&f)), "the oldest archives were deleted");
    let (code, out, err) = roomlog(&["backup", "verify", now[1].to_str().expect("utf-8")], dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("full backup"), "{out}");
    server.shutdown().await;
}

/// Issue 17: a restore voided every token (the secret was not in the archive), and the archive
/// held the backup command's configuration, not the running server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_keeps_the_token_secret_and_the_running_servers_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("live");
    let server = common::spawn_with(&data, &[("ROOMLOG_CHAT__RECENT_COUNT", "77")], std::process::Stdio::inherit());
    let (code, token, err) = roomlog(&["token", "issue", "--user", "ann", "--rooms", "*"], &data);
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_owned();
    let mut ann = Client::connect_query(server.addr, &format!("token={token}"), "ann").await.expect("token works");
    ann.join("lobby", None).await;
    ann.say("lobby", "before the backup", "c1").await;
    let archive = dir.path().join("full.tar");
    let kept_out = dir.path().join("without.tar");
    assert_eq!(roomlog(&["backup", "--out", &archive.display().to_string()], &data).0, 0);
    assert_eq!(roomlog(&["backup", "--without-secret", "--out", &kept_out.display().to_string()], &data).0, 0);
    drop(ann);
    drop(server);

    let restored = dir.path().join("restored");
    let (code, out, err) = roomlog(&["restore", &archive.display().to_string()], &restored);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("token secret restored"), "{out}");
    let config = std::fs::read_to_string(restored.join("config.restored.toml")).expect("config");
    assert!(config.contains("recent_count = 77"), "the running server's configuration: {config}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(restored.join("auth/secret")).expect("secret").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the secret is private");
    }
    let server = spawn(&restored);
    let mut ann =
        Client::connect_query(server.addr, &format!("token={token}"), "ann").await.expect("the old token works");
    ann.join("lobby", Some(0)).await;
    drop(ann);
    drop(server);

    let without = dir.path().join("without");
    assert_eq!(roomlog(&["restore", &kept_out.display().to_string()], &without).0, 0);
    let server = spawn(&without);
    let refused = Client::connect_query(server.addr, &format!("token={token}"), "ann").await;
    assert_eq!(refused.err(), Some(401), "without the secret, old tokens are refused");
}
