//! A filesystem that fills up under heavy writes: a small tmpfs this test mounts (CI runs as
//! root; elsewhere it says why it cannot run). No false acknowledgement, no crash, uploads
//! refused at danger, and writes resume once space is freed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{spawn_with, Client};
use serde_json::json;

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
    let mut out = std::fs::File::create(file).expect("filler");
    let mut written = 0;
    while written < size {
        let n = chunk.len().min((size - written) as usize);
        if std::io::Write::write_all(&mut out, &chunk[..n]).is_err() {
            break;
        }
        written += n as u64;
    }
    let _ = out.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_never_acknowledges_what_it_did_not_store_and_recovers_once_space_is_freed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mount = dir.path().join("small");
    let _tmpfs = match Tmpfs::mount(&mount, 128) {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            println!("SKIPPED: this test mounts a 128 MiB tmpfs and cannot here ({why}); run it as root (CI does)");
            return;
        }
    };
    let data = mount.join("data");
    std::fs::create_dir_all(&data).expect("data");
    // Danger above 85 % (under 19.2 MiB free); appends refused under 8 MiB free.
    let env = [("ROOMLOG_DISK__CHECK_EVERY", "100ms"), ("ROOMLOG_LOG__MIN_FREE_BYTES", "8388608")];
    let server = spawn_with(&data, &env, Stdio::inherit());
    let addr = server.addr;
    let mut ann = Client::connect(addr, "ann").await;
    ann.join("lobby", None).await;
    ann.say("lobby", "before the disk filled", "first").await;

    // Danger: uploads are refused, chat is still acknowledged while there is room.
    let filler = mount.join("filler");
    fill(&mount, &filler, 16 << 20);
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let (status, answer) = common::put_file(addr, "tts/x.mp3", vec![1u8; 1000], "audio/mpeg").await;
        if status == 507 || Instant::now() > deadline {
            break (status, answer);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused.0, 507, "uploads are refused at danger: {}", refused.1);
    assert_eq!(refused.1["error"]["code"], "insufficient_storage", "{}", refused.1);
    let (_, ready) = common::get(addr, "/readyz").await;
    assert_eq!(ready["disk_state"], "danger", "{ready}");

    // Heavy writes until the disk is full: every ack is for a stored message.
    let body = "x".repeat(16 * 1024);
    let mut acked: Vec<u64> = Vec::new();
    let mut refusals = 0;
    let mut sent = 0;
    while refusals < 20 && sent < 2000 {
        ann.send(json!({"type": "send", "room": "lobby", "body": body, "client_id": format!("fill{sent}")})).await;
        sent += 1;
        let frame = ann.recv().await;
        match frame["type"].as_str() {
            Some("ack") => {
                acked.push(frame["seq"].as_u64().expect("seq"));
                let echo = ann.recv().await;
                assert_eq!(echo["type"], "message", "{echo}");
            }
            Some("error") => {
                assert_eq!(frame["code"], "storage_unavailable", "a full disk is a storage error: {frame}");
                refusals += 1;
            }
            _ => panic!("unexpected {frame}"),
        }
    }
    assert!(refusals > 0, "the disk filled up after {} acknowledged messages", acked.len());
    println!("{} messages acknowledged, then {refusals} refused: the disk is full", acked.len());
    let mut probe = std::process::Command::new("kill").args(["-0", &server.child.id().to_string()]).output();
    assert!(probe.as_mut().map(|o| o.status.success()).unwrap_or(false), "the server is still running");
    let (status, _) = common::get(addr, "/healthz").await;
    assert_eq!(status, 200, "and answering");

    // Space freed: writes resume by themselves.
    std::fs::remove_file(&filler).expect("free space");
    let deadline = Instant::now() + Duration::from_secs(30);
    let resumed = loop {
        ann.send(json!({"type": "send", "room": "lobby", "body": "after", "client_id": format!("after{sent}")})).await;
        sent += 1;
        let frame = ann.recv().await;
        if frame["type"] == "ack" {
            break frame["seq"].as_u64().expect("seq");
        }
        assert!(Instant::now() < deadline, "writes did not resume within 30 s of space being freed: {frame}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    acked.push(resumed);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = common::put_file(addr, "tts/y.mp3", vec![2u8; 1000], "audio/mpeg").await;
        if status == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "uploads are accepted again below danger: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // After a restart every acknowledged message is there.
    drop(ann);
    drop(server);
    let server = spawn_with(&data, &env, Stdio::inherit());
    let history = common::whole_history(server.addr, "lobby").await;
    let stored: std::collections::HashSet<u64> = history.iter().map(|m| m["seq"].as_u64().expect("seq")).collect();
    for seq in &acked {
        assert!(stored.contains(seq), "acknowledged seq {seq} is stored");
    }
}
