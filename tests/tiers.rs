//! Moving content between the hot and the cold tier: a move cut off by kill -9 at each of its
//! steps leaves exactly one good copy, readable under its key, and the move can be finished.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{spawn_with, Binary};

/// Every content file under a tier folder (its fan-out folders; `tmp/` counted apart).
fn copies(tier: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for fan in std::fs::read_dir(tier).into_iter().flatten().flatten() {
        if fan.file_name().len() == 2 {
            out.extend(std::fs::read_dir(fan.path()).into_iter().flatten().flatten().map(|e| e.path()));
        }
    }
    out
}

fn tmp_files(tier: &Path) -> usize {
    std::fs::read_dir(tier.join("tmp")).map(|d| d.count()).unwrap_or(0)
}

async fn put(addr: std::net::SocketAddr, key: &str, body: Vec<u8>) -> serde_json::Value {
    let (status, answer) = common::put_file(addr, key, body, "image/jpeg").await;
    assert_eq!(status, 201, "{answer}");
    answer
}

/// The key's bytes and the tier they were read from.
async fn download(addr: std::net::SocketAddr, key: &str) -> (Vec<u8>, String) {
    let response = reqwest::get(format!("http://{addr}/api/files/{key}")).await.expect("get");
    assert_eq!(response.status().as_u16(), 200);
    let tier = response.headers()["x-roomlog-tier"].to_str().expect("ascii").to_owned();
    (response.bytes().await.expect("body").to_vec(), tier)
}

fn move_to(addr: std::net::SocketAddr, key: &str, tier: &str) -> tokio::task::JoinHandle<Option<serde_json::Value>> {
    let url = format!("http://{addr}/api/files/{key}?tier={tier}");
    tokio::spawn(async move {
        let response = reqwest::Client::new().post(url).send().await.ok()?;
        response.json().await.ok()
    })
}

/// Waits (bounded) until the server says on stderr that it stopped at `point`.
fn wait_for_pause(binary: &mut Binary, point: &str) {
    let stderr = binary.child.stderr.take().expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = format!("paused at {point}");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(&wanted) {
                let _ = tx.send(());
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    rx.recv_timeout(deadline - Instant::now()).unwrap_or_else(|_| panic!("the server never reached {point}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_move_killed_at_each_step_leaves_exactly_one_good_copy() {
    // Expected survivor per step: cut off while copying or before the move is recorded, the
    // hot copy stays; once recorded, the cold one.
    for (point, survivor) in [("tier-move:copying", "hot"), ("tier-move:copied", "hot"), ("tier-move:recorded", "cold")]
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data, cold) = (dir.path().join("data"), dir.path().join("cold"));
        let cold_env = cold.display().to_string();
        let hot = data.join("blobs/hot");
        let mut binary = spawn_with(
            &data,
            &[("ROOMLOG_FILES__COLD_DIR", &cold_env), ("ROOMLOG_FAULT_PAUSE", point)],
            Stdio::piped(),
        );
        // More than one copy buffer (256 KiB), so that "copying" is truly half way.
        let content: Vec<u8> = (0..700_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let hash = blake3::hash(&content).to_hex().to_string();
        let stored = put(binary.addr, "permanent/photos/p.jpg", content.clone()).await;
        assert_eq!(stored["hash"], hash);
        let _request = move_to(binary.addr, "permanent/photos/p.jpg", "cold");
        wait_for_pause(&mut binary, point);
        binary.child.kill().expect("kill -9");
        binary.child.wait().expect("reaped");

        let binary = spawn_with(&data, &[("ROOMLOG_FILES__COLD_DIR", &cold_env)], Stdio::inherit());
        let (hot_copies, cold_copies) = (copies(&hot), copies(&cold));
        assert_eq!(hot_copies.len() + cold_copies.len(), 1, "{point}: hot {hot_copies:?}, cold {cold_copies:?}");
        let kept = hot_copies.iter().chain(&cold_copies).next().expect("one copy");
        assert_eq!(blake3::hash(&std::fs::read(kept).expect("read")).to_hex().to_string(), hash, "{point}");
        assert_eq!(tmp_files(hot.parent().expect("blobs")) + tmp_files(&cold), 0, "{point}: temp left");
        let (bytes, tier) = download(binary.addr, "permanent/photos/p.jpg").await;
        assert!(bytes == content, "{point}: the key reads back its bytes");
        assert_eq!(tier, survivor, "{point}");

        // The operator asks again: the move completes, and the content is cold only.
        let answer = move_to(binary.addr, "permanent/photos/p.jpg", "cold").await.expect("task").expect("answer");
        assert_eq!(answer["tier"], "cold", "{answer}");
        assert_eq!((copies(&hot).len(), copies(&cold).len()), (0, 1), "{point}");
        let (bytes, tier) = download(binary.addr, "permanent/photos/p.jpg").await;
        assert!(bytes == content);
        assert_eq!(tier, "cold");
    }
}

/// Moves `key` to `tier`, waiting for the answer; its status and JSON.
async fn move_now(addr: std::net::SocketAddr, key: &str, tier: &str) -> (u16, serde_json::Value) {
    let response =
        reqwest::Client::new().post(format!("http://{addr}/api/files/{key}?tier={tier}")).send().await.expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_go_both_ways_and_on_after_the_cold_folder_is_recreated_while_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, cold) = (dir.path().join("data"), dir.path().join("cold"));
    let cold_env = cold.display().to_string();
    let binary = spawn_with(&data, &[("ROOMLOG_FILES__COLD_DIR", &cold_env)], Stdio::inherit());
    let key = "permanent/photos/both.jpg";
    let content: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    put(binary.addr, key, content.clone()).await;
    let round_trip = |when: &'static str| {
        let content = content.clone();
        async move {
            for tier in ["cold", "hot"] {
                let (status, answer) = move_now(binary.addr, key, tier).await;
                assert_eq!(status, 200, "{when}: to {tier}: {answer}");
                assert_eq!(answer["tier"], tier, "{when}: {answer}");
                let (bytes, read_from) = download(binary.addr, key).await;
                assert!(bytes == content, "{when}: the key reads back its bytes from {tier}");
                assert_eq!(read_from, tier, "{when}");
            }
        }
    };
    round_trip("first").await;
    // The operator replaces the (now empty) cold folder, as a remounted disk would.
    std::fs::remove_dir_all(&cold).expect("remove the cold folder");
    std::fs::create_dir(&cold).expect("recreate it empty");
    round_trip("after the cold folder was recreated").await;
    assert_eq!((copies(&data.join("blobs/hot")).len(), copies(&cold).len()), (1, 0), "one copy, hot");
}
