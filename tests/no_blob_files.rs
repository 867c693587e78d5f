//! No sled page ever becomes a blob file, whatever clients send (issue 18): sled writes such
//! files without an fsync, so one would be lost in a power cut (see `durable::SledDb`). The
//! worst cases the server allows: 64 KiB bodies back to back, small messages each edited up to
//! 64 KiB (a history page grows in place and must split), the longest file keys, and sessions
//! swept in batches. Afterwards neither database has a file under `blobs/`.

mod common;

use std::path::Path;

use common::{put_file, Client};
use serde_json::{json, Value};

fn blob_files(db: &Path) -> usize {
    std::fs::read_dir(db.join("blobs")).map_or(0, Iterator::count)
}

async fn next_of(client: &mut Client, kind: &str) -> Value {
    loop {
        let frame = client.recv().await;
        if frame["type"] == kind {
            return frame;
        }
        assert_ne!(frame["type"], "error", "{frame}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_records_and_pages_clients_can_cause_never_become_blob_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::config(dir.path());
    let body_max = config.limits.body_bytes_max;
    assert_eq!(body_max, roomlog::config::BODY_BYTES_LIMIT, "the default is the largest body allowed");
    let server = common::start(config).await;
    let mut ann = Client::connect(server.addr(), "ann").await;
    let big = "b".repeat(body_max);
    for room in ["r1", "r2", "r3"] {
        ann.join(room, None).await;
        for n in 0..60 {
            ann.say(room, &big, &format!("{room}-big-{n}")).await;
        }
    }
    // Small messages fill pages by count; each is then edited to the largest body.
    ann.join("edits", None).await;
    let mut small = Vec::new();
    for n in 0..64 {
        small.push(ann.say("edits", &format!("m{n}"), &format!("small-{n}")).await);
    }
    for (n, seq) in small.iter().enumerate() {
        ann.send(json!({"type": "edit", "room": "edits", "seq": seq, "body": big, "client_id": format!("edit-{n}")}))
            .await;
        next_of(&mut ann, "ack").await;
    }
    let segment = "k".repeat(60);
    for n in 0..20 {
        let key = format!("long/{}/{n:03}", [segment.as_str(); 7].join("/"));
        assert_eq!(key.len(), 7 * 61 + 8, "a key near the 512-byte limit");
        let (status, answer) = put_file(server.addr(), &key, vec![n as u8; 100], "application/octet-stream").await;
        assert_eq!(status, 201, "{answer}");
    }
    common::projections_caught_up(server.addr()).await;
    let history = common::whole_history(server.addr(), "edits").await;
    assert!(history.iter().all(|m| m["body"].as_str().map(str::len) == Some(body_max)), "every edit applied");
    server.shutdown().await;

    assert_eq!(blob_files(&dir.path().join("log")), 0, "log pages stay in sled's data file");
    assert_eq!(blob_files(&dir.path().join("state")), 0, "projection pages stay in sled's data file");
}
