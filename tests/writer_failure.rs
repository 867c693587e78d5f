//! A log writer whose storage refuses a write (issue 17: a dead core task must not leave a
//! zombie server). The senders hear the true reason, not "shutting down"; the server says it is
//! not ready and why; and `Server::failed` resolves, which makes `roomlog serve` exit non-zero
//! for its supervisor to restart it. Nothing acknowledged before is lost on that restart.

mod common;

use std::time::Duration;

use common::{config, get, start, Client};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_log_writer_tells_senders_why_turns_not_ready_and_ends_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await;
    let mut ann = Client::connect(server.addr(), "ann").await;
    ann.join("lobby", None).await;
    let kept = ann.say("lobby", "before", "c1").await;
    assert_eq!(get(server.addr(), "/readyz").await.0, 200);

    roomlog::fault::fail_once("log:commit", 0);
    ann.send(json!({"type": "send", "room": "lobby", "body": "refused", "client_id": "c2"})).await;
    let error = ann.recv().await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["code"], "storage_unavailable", "{error}");
    let text = error["message"].as_str().unwrap_or_default();
    assert!(text.contains("log writer failed") && !text.contains("shutting down"), "the true reason: {text}");

    // Later sends are refused the same way at once: the writer stores nothing more.
    ann.send(json!({"type": "send", "room": "lobby", "body": "later", "client_id": "c3"})).await;
    let later = ann.recv().await;
    assert_eq!(
        (later["type"].as_str(), later["code"].as_str()),
        (Some("error"), Some("storage_unavailable")),
        "{later}"
    );

    let (status, ready) = get(server.addr(), "/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready["not_ready_because"].to_string().contains("injected failure at log:commit"),
        "not ready, with the true reason: {ready}"
    );
    let why = tokio::time::timeout(Duration::from_secs(20), server.failed()).await.expect("the server ends by itself");
    assert!(why.contains("injected failure at log:commit"), "{why}");
    drop(ann);
    server.shutdown().await;

    // The supervisor's restart: what was acknowledged is there, the refused sends are resent
    // with their client ids and each is stored exactly once (the failed group may or may not
    // have reached the disk), and chat goes on.
    let server = start(config(dir.path())).await;
    let mut ann = Client::connect(server.addr(), "ann").await;
    ann.join("lobby", Some(u64::MAX)).await;
    ann.send(json!({"type": "send", "room": "lobby", "body": "refused", "client_id": "c2"})).await;
    ann.send(json!({"type": "send", "room": "lobby", "body": "later", "client_id": "c3"})).await;
    let acks = acks_for(&mut ann, &["c2", "c3"]).await;
    assert!(acks[0] > kept && acks[1] > acks[0], "acknowledged in order after c1: {kept} {acks:?}");
    let history = common::whole_history(server.addr(), "lobby").await;
    let ids: Vec<&str> = history.iter().filter_map(|m| m["client_id"].as_str()).collect();
    assert_eq!(ids, ["c1", "c2", "c3"], "each once, in order: {history:?}");
    assert_eq!(history[0]["seq"].as_u64(), Some(kept));
    server.shutdown().await;
}

/// Reads frames until each of `client_ids` has its ack (a resend that was stored before is
/// acknowledged without a new echo); returns their seqs in the order given.
async fn acks_for(client: &mut Client, client_ids: &[&str]) -> Vec<u64> {
    let mut seqs: Vec<Option<u64>> = vec![None; client_ids.len()];
    while seqs.iter().any(Option::is_none) {
        let frame = client.recv().await;
        match frame["type"].as_str() {
            Some("ack") => {
                let index = client_ids.iter().position(|id| frame["client_id"] == *id).expect("an ack for a sent id");
                seqs[index] = frame["seq"].as_u64();
            }
            Some("message") => {}
            _ => panic!("expected acks and echoes, got {frame}"),
        }
    }
    seqs.into_iter().flatten().collect()
}
