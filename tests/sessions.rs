//! Sessions: expiry at the due time, purge after the purge age, paid ones kept, every change an
//! event with its reason, across restarts. Time is a manual clock the tests move forward.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::config;
use roomlog::auth::NameOnly;
use roomlog::clock::ManualClock;
use roomlog::{Config, Server};
use serde_json::Value;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
const START_MS: u64 = 1_800_000_000_000;

async fn start(config: Config, clock: &ManualClock) -> Server {
    std::fs::create_dir_all(&config.data).expect("data folder");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    Server::start_with_clock(config, listener, Arc::new(NameOnly), Arc::new(clock.clone()))
        .await
        .expect("server starts")
}

async fn post(server: &Server, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{}{path}", server.addr()))
        .header("content-length", "0")
        .send()
        .await
        .expect("http post");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

async fn create(server: &Server) -> String {
    let (status, session) = post(server, "/api/sessions").await;
    assert_eq!(status, 201, "{session}");
    session["id"].as_str().expect("id").to_owned()
}

async fn session(server: &Server, id: &str) -> Value {
    let (status, body) = common::get(server.addr(), &format!("/api/sessions/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits (bounded) until the session reaches `state`: due times are applied by actors and the
/// sweeper in the background once the clock passes them.
async fn reaches(server: &Server, id: &str, state: &str) -> Value {
    for _ in 0..500 {
        let body = session(server, id).await;
        if body["session"]["state"] == state {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("session {id} never became {state}: {}", session(server, id).await);
}

fn tags(body: &Value) -> Vec<String> {
    body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event"].as_object().expect("event").keys().next().expect("tag").clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_expires_at_its_due_time_and_is_purged_after_the_purge_age_with_reasons() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(START_MS);
    let server = start(config(dir.path()), &clock).await;
    let id = create(&server).await;
    let created = session(&server, &id).await;
    assert_eq!(created["session"]["state"], "active");
    assert_eq!(created["session"]["expires_at_unix_ms"], START_MS + DAY.as_millis() as u64);

    clock.advance(DAY - Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(session(&server, &id).await["session"]["state"], "active", "a second before its expiry");
    clock.advance(Duration::from_secs(1));
    let expired = reaches(&server, &id, "expired").await;
    let event = &expired["events"][1]["event"]["SessionExpired.1"];
    assert_eq!(event["due_at_unix_ms"], START_MS + DAY.as_millis() as u64);
    assert_eq!(event["reason"], "unpaid at its expiry");
    assert_eq!(event["rule"], "sessions.expire_after=1day");

    let (status, refused) = post(&server, &format!("/api/sessions/{id}/touch")).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (409, Some("session_conflict")));

    clock.advance(6 * DAY);
    let purged = reaches(&server, &id, "purged").await;
    assert_eq!(tags(&purged), ["SessionCreated.1", "SessionExpired.1", "SessionPurged.1"]);
    assert_eq!(purged["events"][2]["event"]["SessionPurged.1"]["rule"], "sessions.purge_after=7days");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_session_is_never_expired_or_purged_and_sliding_touches_move_the_expiry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(START_MS);
    let mut config = config(dir.path());
    config.sessions.sliding = true;
    let server = start(config, &clock).await;
    let paid = create(&server).await;
    let touched = create(&server).await;
    let (status, body) = post(&server, &format!("/api/sessions/{paid}/pay")).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("paid")));

    clock.advance(20 * HOUR);
    let (status, body) = post(&server, &format!("/api/sessions/{touched}/touch")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_at_unix_ms"], START_MS + (20 * HOUR + DAY).as_millis() as u64, "sliding");
    clock.advance(5 * HOUR); // past the first expiry, before the moved one
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(session(&server, &touched).await["session"]["state"], "active");
    clock.advance(20 * HOUR);
    reaches(&server, &touched, "expired").await;

    clock.advance(30 * DAY);
    reaches(&server, &touched, "purged").await;
    let kept = session(&server, &paid).await;
    assert_eq!(kept["session"]["state"], "paid");
    assert_eq!(tags(&kept), ["SessionCreated.1", "SessionPaid.1"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_restart_in_every_state_and_overdue_times_apply_at_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(START_MS);
    let server = start(config(dir.path()), &clock).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(create(&server).await);
    }
    let (expired, paid, ended, overdue) = (&ids[0], &ids[1], &ids[2], &ids[3]);
    post(&server, &format!("/api/sessions/{paid}/pay")).await;
    post(&server, &format!("/api/sessions/{ended}/end")).await;
    clock.advance(HOUR);
    let late = create(&server).await; // created an hour later: still active after the next step
    clock.advance(DAY - HOUR);
    reaches(&server, expired, "expired").await;
    reaches(&server, overdue, "expired").await;
    assert_eq!(session(&server, &late).await["session"]["state"], "active");
    server.shutdown().await;

    // Down for ten days: purges fell due while no server ran.
    clock.advance(10 * DAY);
    let server = start(config(dir.path()), &clock).await;
    for id in [expired, overdue, ended] {
        let body = reaches(&server, id, "purged").await;
        let purge = body["events"].as_array().expect("events").last().expect("last").clone();
        let due = &purge["event"]["SessionPurged.1"];
        assert_eq!(due["due_at_unix_ms"], START_MS + (7 * DAY).as_millis() as u64, "the original due time");
        assert_eq!(due["applied_at_unix_ms"], START_MS + (11 * DAY).as_millis() as u64, "applied at start-up");
    }
    reaches(&server, &late, "purged").await;
    assert_eq!(session(&server, paid).await["session"]["state"], "paid");
    let (_, stats) = common::get(server.addr(), "/api/sessions/stats").await;
    assert_eq!(stats["total"], 5, "{stats}");
    assert_eq!(stats["by_state"]["paid"], 1);
    assert_eq!(stats["by_state"]["purged"], 4);
    assert_eq!(stats["unpaid_older_than_purge_age"], 0, "every overdue purge was applied");
    // With no actor running, the sweeper applied them as one batch record, not four.
    let batches: Vec<usize> = server
        .log()
        .read_range(1, 10_000)
        .await
        .expect("read the log")
        .iter()
        .filter_map(|e| match &e.event {
            roomlog::event::Event::SessionsPurged(batch) => Some(batch.sessions.len()),
            _ => None,
        })
        .collect();
    assert_eq!(batches, vec![4], "one SessionsPurged naming the four overdue sessions");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_lists_filters_and_refuses_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(START_MS);
    let server = start(config(dir.path()), &clock).await;
    let a = create(&server).await;
    let b = create(&server).await;
    post(&server, &format!("/api/sessions/{b}/pay")).await;
    let addr = server.addr();
    let (_, paid) = common::get(addr, "/api/sessions?state=paid").await;
    let ids: Vec<&str> =
        paid["sessions"].as_array().expect("list").iter().map(|s| s["id"].as_str().expect("id")).collect();
    assert_eq!(ids, [b.as_str()]);
    let (_, all) = common::get(addr, "/api/sessions?limit=1").await;
    let first = all["next_after"].as_str().expect("a next page");
    let (_, rest) = common::get(addr, &format!("/api/sessions?limit=1&after={first}")).await;
    let mut both = vec![all["sessions"][0]["id"].clone(), rest["sessions"][0]["id"].clone()];
    both.sort_by_key(|v| v.to_string());
    let mut expected = vec![Value::from(a.clone()), Value::from(b.clone())];
    expected.sort_by_key(|v| v.to_string());
    assert_eq!(both, expected);
    clock.advance(2 * HOUR);
    let (_, old) = common::get(addr, "/api/sessions?older_than=1h").await;
    assert_eq!(old["sessions"].as_array().expect("list").len(), 2);

    for (path, status, code) in [
        ("/api/sessions/not-an-id", 400, "invalid_session_id"),
        ("/api/sessions/0123456789abcdef0123456789abcdef", 404, "not_found"),
        ("/api/sessions?state=sleepy", 400, "invalid_query"),
        ("/api/sessions?limit=0", 400, "invalid_query"),
    ] {
        let (got, body) = common::get(addr, path).await;
        assert_eq!((got, body["error"]["code"].as_str()), (status, Some(code)), "{path}: {body}");
    }
    let (status, body) = post(&server, "/api/sessions/0123456789abcdef0123456789abcdef/pay").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
    server.shutdown().await;
}
