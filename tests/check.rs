//! `roomlog check` tells the truth about a data folder, and the server starts on whatever a
//! crash or a hand left: a damaged projection store is rebuilt, a log that lost acknowledged
//! records stops start-up with what to do (issue 18, items 4 and 5).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{spawn, spawn_with, whole_history, Client};
use roomlog::projection::history;

/// Runs `roomlog check` on `data`: exit code and stdout.
fn check(data: &Path) -> (i32, String) {
    let output =
        Command::new(env!("CARGO_BIN_EXE_roomlog")).arg("check").arg("--data").arg(data).output().expect("run check");
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A data folder with a few messages in `lobby`, written by a server stopped cleanly; the seqs.
async fn folder_with_messages(data: &Path) -> Vec<u64> {
    let mut server = spawn(data);
    let mut ann = Client::connect(server.addr, "ann").await;
    ann.join("lobby", None).await;
    let mut seqs = Vec::new();
    for n in 0..5 {
        seqs.push(ann.say("lobby", &format!("m{n}"), &format!("c{n}")).await);
    }
    drop(ann);
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    assert!(server.child.wait().expect("exit").success());
    seqs
}

#[test]
fn a_missing_or_empty_folder_is_reported_and_nothing_is_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nonexistent");
    let (code, out) = check(&missing);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is not a folder"), "{out}");
    assert!(!missing.exists(), "check creates no database where none is");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_shorter_than_its_seq_floor_is_reported_and_stops_start_up_until_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let seqs = folder_with_messages(&data).await;
    let (code, out) = check(&data);
    assert_eq!(code, 0, "a clean folder: {out}");
    assert!(out.contains("log: 5 records") && out.contains("projection history: applied through 5"), "{out}");

    // What a lost tail looks like: the floor, fsynced before the seqs were handed out, says
    // more was acknowledged than the log holds.
    std::fs::write(data.join("log/seq.floor"), r#"{"reserved_through":20,"acked_through":9}"#).expect("floor");
    let (code, out) = check(&data);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ends at seq 5") && out.contains("through 9 were acknowledged"), "{out}");

    let log = dir.path().join("refused.log");
    let mut refused = Command::new(env!("CARGO_BIN_EXE_roomlog"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start");
    let status = refused.wait().expect("the server exits by itself");
    let stderr = std::fs::read_to_string(&log).expect("stderr");
    assert!(!status.success() && stderr.contains("acknowledged records were lost"), "{status}: {stderr}");
    assert!(stderr.contains("roomlog check") && stderr.contains("restore"), "it says what to do: {stderr}");

    // An operator without a backup accepts the loss: what is left is served, and new seqs go on
    // above everything ever handed out.
    let server = spawn_with(&data, &[("ROOMLOG_LOG__ACCEPT_LOST_RECORDS", "true")], Stdio::inherit());
    let history = whole_history(server.addr, "lobby").await;
    assert_eq!(history.iter().map(|m| m["seq"].as_u64().expect("seq")).collect::<Vec<_>>(), seqs);
    let mut bob = Client::connect(server.addr, "bob").await;
    bob.join("lobby", seqs.last().copied()).await;
    assert!(bob.say("lobby", "after", "after").await > 20, "no seq up to the reservation is handed out again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_projection_store_is_reported_then_rebuilt_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let seqs = folder_with_messages(&data).await;
    // Garbage over the projections' database and its settings, as a disk might leave them.
    // (sled reads garbage in its data file as a log cut short, which the projections simply
    // catch up from; garbage settings make it refuse to open.)
    std::fs::write(data.join("state/db"), vec![0xa5u8; 1 << 16]).expect("damage");
    std::fs::write(data.join("state/conf"), vec![b'x'; 64]).expect("damage");
    let (code, out) = check(&data);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("PROBLEM"), "{out}");

    let server = spawn(&data);
    let history = whole_history(server.addr, "lobby").await;
    assert_eq!(
        history.iter().map(|m| m["seq"].as_u64().expect("seq")).collect::<Vec<_>>(),
        seqs,
        "rebuilt from the log"
    );
    let (_, status) = common::get(server.addr, "/api/status").await;
    assert!(status["recovered_at_start"].to_string().contains("rebuilt"), "said in the status: {status}");
}

/// A data folder whose history was written by a release that kept each message's text in its
/// pages (format 1, before the texts stayed only in the log) is rebuilt at start: every message
/// is served with its text, and the status says why it was rebuilt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_of_an_earlier_format_is_rebuilt_at_start_with_every_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let seqs = folder_with_messages(&data).await;
    {
        let state = roomlog::state::StateDb::open(&data.join("state"), 1 << 24).expect("open the state store");
        let tree = state.open_tree("proj.history").expect("the history's tree");
        assert_eq!(tree.get(history::FORMAT_KEY).expect("read").as_deref(), Some(&[history::FORMAT][..]));
        tree.insert(history::FORMAT_KEY, &[1]).expect("written as format 1 was");
        state.sync().expect("sync");
    }
    let (code, out) = check(&data);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("earlier format") && out.contains("rebuilds it from the log"), "{out}");

    let server = spawn(&data);
    let history = whole_history(server.addr, "lobby").await;
    let served: Vec<(u64, &str)> =
        history.iter().map(|m| (m["seq"].as_u64().expect("seq"), m["body"].as_str().expect("body"))).collect();
    let expected: Vec<String> = (0..seqs.len()).map(|n| format!("m{n}")).collect();
    assert_eq!(served, seqs.iter().copied().zip(expected.iter().map(String::as_str)).collect::<Vec<_>>());
    let (_, status) = common::get(server.addr, "/api/status").await;
    let recovered = status["recovered_at_start"].to_string();
    assert!(recovered.contains("history") && recovered.contains("earlier format"), "said in the status: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_is_a_finding_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    folder_with_messages(&data).await;
    std::fs::write(data.join("log/db"), vec![0x5au8; 1 << 20]).expect("damage");
    let (code, out) = check(&data);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("PROBLEM") && !out.contains("panicked at"), "{out}");
}
