//! A full disk never corrupts anything (issue 18, item 2): on a small tmpfs this test mounts
//! (CI runs as root; elsewhere it says why it cannot run), 64 KiB messages fill the disk three
//! times over, space is freed each time, and the server is killed with SIGKILL at the worst
//! moment, just as it starts refusing. Every acknowledgement is for a stored message, a send at
//! the floor gets `disk_full` at once, the disk never reaches 0 bytes free, start-up always
//! succeeds, and writes and projections resume by themselves once space is freed.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{get, spawn_with, Binary, Client};
use serde_json::json;

/// The volume: big enough for sled's 16 MiB segments, two databases and the search index, small
/// enough to fill quickly.
const VOLUME_MIB: u64 = 256;
/// Fill-and-free cycles.
const CYCLES: usize = 3;
/// Messages a cycle may send before it must have been refused (a bound, not a target).
const SENDS_MAX: usize = 3000;
const BODY_BYTES: usize = 64 * 1024;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size_mib: u64) -> Result<Self, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
        }
        Ok(Self(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free_bytes(dir: &Path) -> u64 {
    fs2::available_space(dir).expect("statvfs")
}

/// Fills the filesystem of `dir` with `file`, leaving about `leave` bytes free.
fn fill(dir: &Path, file: &Path, leave: u64) {
    let size = free_bytes(dir).saturating_sub(leave);
    let chunk = vec![0x5au8; 1 << 20];
    let mut out = std::fs::OpenOptions::new().create(true).append(true).open(file).expect("filler");
    let mut written = 0;
    while written < size {
        let n = chunk.len().min((size - written) as usize);
        if std::io::Write::write_all(&mut out, &chunk[..n]).is_err() {
            break;
        }
        written += n as u64;
    }
}

fn start(data: &Path) -> Binary {
    // The shipped thresholds: this test's small filesystem is meant to cross them.
    let env = [
        ("ROOMLOG_DISK__CHECK_EVERY", "100ms"),
        ("ROOMLOG_DISK__WARNING", "0.50"),
        ("ROOMLOG_DISK__CRITICAL", "0.75"),
        ("ROOMLOG_DISK__DANGER", "0.85"),
    ];
    spawn_with(data, &env, Stdio::inherit())
}

/// Waits until `/readyz` says ready (the projections applied everything, nothing refused).
async fn ready(addr: std::net::SocketAddr, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = get(addr, "/readyz").await;
        let caught_up = body["projections"].as_object().is_some_and(|p| p.values().all(|p| p["lag_events"] == 0));
        if status == 200 && caught_up {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(body.to_string());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends 64 KiB messages one at a time until `refusals` are refused; every answer is an ack
/// (recorded) or `disk_full`. The smallest free space seen is tracked.
async fn send_until_refused(
    client: &mut Client,
    mount: &Path,
    cycle: usize,
    refusals: usize,
    acked: &mut HashMap<String, u64>,
    least_free: &mut u64,
) -> usize {
    let body = "m".repeat(BODY_BYTES);
    let mut refused = 0;
    for n in 0..SENDS_MAX {
        let client_id = format!("c{cycle}-{n}");
        client.send(json!({"type": "send", "room": "lobby", "body": body, "client_id": client_id})).await;
        let frame = client.recv().await;
        *least_free = (*least_free).min(free_bytes(mount));
        match frame["type"].as_str() {
            Some("ack") => {
                acked.insert(client_id, frame["seq"].as_u64().expect("seq"));
                let echo = client.recv().await;
                assert_eq!(echo["type"], "message", "{echo}");
            }
            Some("error") => {
                assert_eq!(frame["code"], "disk_full", "a full disk is said as such: {frame}");
                refused += 1;
                if refused == refusals {
                    return n + 1;
                }
            }
            _ => panic!("unexpected {frame}"),
        }
    }
    panic!("{SENDS_MAX} messages of {BODY_BYTES} bytes never reached the floor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_filled_and_freed_three_times_with_kills_loses_nothing_and_always_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mount = dir.path().join("small");
    let _tmpfs = match Tmpfs::mount(&mount, VOLUME_MIB) {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            println!(
                "SKIPPED: this test mounts a {VOLUME_MIB} MiB tmpfs and cannot here ({why}); run it as root (CI does)"
            );
            return;
        }
    };
    let data = mount.join("data");
    std::fs::create_dir_all(&data).expect("data");
    let filler = mount.join("filler");
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut least_free = u64::MAX;
    let mut server = start(&data);
    let (_, ready_body) = get(server.addr, "/readyz").await;
    assert_eq!(ready_body["ready"], true, "a fresh server on a small volume is ready: {ready_body}");

    for cycle in 0..CYCLES {
        let mut ann = Client::connect(server.addr, "ann").await;
        ann.join("lobby", Some(u64::MAX)).await;
        // Most of the volume goes to a filler; the server's own writes take it to the floor.
        fill(&mount, &filler, 96 << 20);
        let kill_at_the_floor = cycle == 1;
        let sent = send_until_refused(
            &mut ann,
            &mount,
            cycle,
            if kill_at_the_floor { 1 } else { 10 },
            &mut acked,
            &mut least_free,
        )
        .await;
        println!(
            "cycle {cycle}: {sent} messages of 64 KiB sent before the floor; {} MiB free",
            free_bytes(&mount) >> 20
        );
        if kill_at_the_floor {
            // The worst moment: the writer has just started refusing, projections and search
            // are still applying the last acknowledged messages.
            server.child.kill().expect("SIGKILL");
            let _ = server.child.wait();
            drop(ann);
            server = start(&data);
            ann = Client::connect(server.addr, "ann").await;
            ann.join("lobby", Some(u64::MAX)).await;
        }
        // Below the floor even with the reserve file released (16 MiB), above the clean-up floor.
        fill(&mount, &filler, 40 << 20);
        ann.send(json!({"type": "send", "room": "lobby", "body": "probe", "client_id": format!("probe{cycle}")})).await;
        let probe = ann.recv().await;
        assert_eq!((probe["type"].as_str(), probe["code"].as_str()), (Some("error"), Some("disk_full")), "{probe}");
        let (status, refusal) = get(server.addr, "/readyz").await;
        assert_eq!(status, 503, "not ready while new messages are refused: {refusal}");
        assert!(refusal["not_ready_because"].to_string().contains("below the floor"), "says why: {refusal}");
        let (status, answer) = common::put_file(server.addr, "tts/x.mp3", vec![1u8; 1000], "audio/mpeg").await;
        assert_eq!(status, 507, "uploads are refused too: {answer}");
        let (status, _) = get(server.addr, "/healthz").await;
        assert_eq!(status, 200, "and the server answers");

        // Space freed: writes and projections resume by themselves.
        std::fs::remove_file(&filler).expect("free space");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let client_id = format!("after{cycle}");
            ann.send(json!({"type": "send", "room": "lobby", "body": "after", "client_id": client_id})).await;
            let frame = ann.recv().await;
            if frame["type"] == "ack" {
                acked.insert(client_id, frame["seq"].as_u64().expect("seq"));
                break;
            }
            assert!(Instant::now() < deadline, "writes did not resume within 30 s of space being freed: {frame}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Err(body) = ready(server.addr, Duration::from_secs(60)).await {
            panic!("cycle {cycle}: not ready 60 s after space was freed: {body}");
        }
    }

    // After a restart every acknowledged message is there, once, under its seq, and the search
    // index agrees.
    drop(server);
    let server = start(&data);
    ready(server.addr, Duration::from_secs(60)).await.expect("ready after the last restart");
    let history = common::whole_history(server.addr, "lobby").await;
    let stored: HashMap<String, u64> = history
        .iter()
        .map(|m| (m["client_id"].as_str().expect("client_id").to_owned(), m["seq"].as_u64().expect("seq")))
        .collect();
    assert_eq!(stored.len(), history.len(), "no message stored twice");
    let lost: Vec<&String> = acked.iter().filter(|(id, seq)| stored.get(*id) != Some(seq)).map(|(id, _)| id).collect();
    let (searched, _) = common::search_all(server.addr, "q=after&room=lobby").await;
    println!(
        "full disk: {CYCLES} cycles, acknowledged {}, lost {}, least free {} MiB, start-up failures 0",
        acked.len(),
        lost.len(),
        least_free >> 20
    );
    assert!(lost.is_empty(), "acknowledged messages lost: {lost:?}");
    assert_eq!(searched, CYCLES as u64, "the search index holds what the history holds");
    assert!(least_free > 8 << 20, "the disk never came near full: {least_free} bytes free at least");
}
