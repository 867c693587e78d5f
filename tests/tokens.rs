//! Signed tokens and permissions: a matrix of identities × rooms × operations (join, send,
//! history, search, file read and write, session read, admin), with expired, tampered,
//! rotated-out and missing tokens and one bound to a session. Every unauthorized case is
//! refused, every authorized one works, and the counts are printed.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::Client;
use roomlog::auth::Anonymous;
use roomlog::token::{Claims, FileGrant, RoomGrant, SecretFiles};
use serde_json::{json, Value};

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("time").as_secs()
}

fn claims(user: &str, grants: &[(&str, bool)], admin: bool, exp: u64) -> Claims {
    Claims {
        user: user.into(),
        rooms: grants.iter().map(|&(p, w)| RoomGrant { pattern: p.into(), write: w }).collect(),
        admin,
        exp,
        session: None,
        files: Vec::new(),
    }
}

/// `claims` that may also read (and write, when `write`) file keys under `prefix`.
fn with_files(claims: Claims, prefix: &str, write: bool) -> Claims {
    Claims { files: vec![FileGrant { prefix: prefix.into(), write }], ..claims }
}

/// What an identity may do over HTTP besides rooms: read a shared file, write a new one, read
/// a file owned by the session, overwrite it, read the session, use an admin endpoint.
type HttpRights = [bool; 6];
const HTTP_OPS: [&str; 6] =
    ["file read", "file write", "session file read", "session file write", "session read", "admin"];

/// Runs the HTTP operations with `token` in an `Authorization: Bearer` header; returns how
/// many were allowed and refused, having checked each against `rights` (a refusal is 403, or
/// 401 when the token itself is refused).
async fn http_cases(
    addr: std::net::SocketAddr,
    who: &str,
    token: Option<&str>,
    session: &str,
    rights: HttpRights,
    valid: bool,
    n: usize,
) -> (usize, usize) {
    let http = reqwest::Client::new();
    let with = |request: reqwest::RequestBuilder| match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let base = format!("http://{addr}");
    let requests = [
        with(http.get(format!("{base}/api/files/team/shared.txt"))),
        with(http.put(format!("{base}/api/files/team/by-{n}.txt")).body("new")),
        with(http.get(format!("{base}/api/files/private/visitor.txt"))),
        with(http.put(format!("{base}/api/files/private/visitor.txt?session={session}")).body(format!("by {n}"))),
        with(http.get(format!("{base}/api/sessions/{session}"))),
        with(http.get(format!("{base}/api/janitor/plan"))),
    ];
    let (mut allowed, mut refused) = (0, 0);
    for ((request, op), may) in requests.into_iter().zip(HTTP_OPS).zip(rights) {
        let response = request.send().await.expect("http");
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        if may {
            assert!((200..300).contains(&status), "{who} {op}: {status} {body}");
            allowed += 1;
        } else {
            let expected = if valid { 403 } else { 401 };
            assert_eq!(status, expected, "{who} {op} must be refused: {body}");
            assert!(body.contains("\"code\""), "{who} {op}: a JSON error with a code: {body}");
            refused += 1;
        }
    }
    (allowed, refused)
}

/// A new session, created as the app's backend does (with an admin token): its id.
async fn create_session(addr: std::net::SocketAddr, admin: &str) -> String {
    let created = reqwest::Client::new().post(format!("http://{addr}/api/sessions")).bearer_auth(admin).send().await;
    let session: Value = created.expect("create").json().await.expect("json");
    session["id"].as_str().expect("session id").to_owned()
}

/// Reads frames until one of `kinds`, skipping replayed messages.
async fn until(client: &mut Client, kinds: &[&str]) -> Value {
    loop {
        let frame = client.recv().await;
        if kinds.contains(&frame["type"].as_str().unwrap_or("")) {
            return frame;
        }
    }
}

/// Who, with which token, may read which rooms and write which.
type Case<'a> = (&'a str, Option<&'a str>, &'a [&'a str], &'a [&'a str]);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_permission_matrix_refuses_every_unauthorized_case_and_allows_every_authorized_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::config(dir.path());
    config.auth.anonymous = Anonymous::None;
    // The tests' host is no admin here: only an admin token is.
    config.auth.admin_from_host = false;
    // Every refused token of the matrix comes from this one address, over HTTP too since those
    // failures count: the limit (tested on its own below) must not answer for the permissions.
    config.limits.auth_failures_per_minute = 10_000;
    // Three secrets in turn: the first is rotated out, the second is within its grace period.
    let files = SecretFiles { dir: config.secret_dir() };
    let hour = now_s() + 3600;
    let alice_claims = with_files(claims("alice", &[("team-*", true)], false, hour), "team/", true);
    let rotated_out = files.load_or_create().expect("secret").issue(&alice_claims);
    files.rotate((now_s() + 3600) * 1000).expect("rotate");
    let in_grace = files.load_or_create().expect("secret").issue(&alice_claims);
    files.rotate((now_s() + 3600) * 1000).expect("rotate");
    let secrets = files.load_or_create().expect("secret");
    let server = common::start(config).await;
    let addr = server.addr();

    let admin = secrets.issue(&claims("root", &[("*", true)], true, hour));
    let alice = secrets.issue(&alice_claims);
    let reader = secrets.issue(&with_files(claims("rita", &[("team-*", false)], false, hour), "team/", false));
    let expired = secrets.issue(&Claims { exp: now_s() - 1, ..alice_claims.clone() });
    // A visitor's session, a file it owns, a shared file; and the visitor's token.
    let http = reqwest::Client::new();
    let session = create_session(addr, &admin).await;
    for (key, owner) in [("team/shared.txt", None), ("private/visitor.txt", Some(&session))] {
        let query = owner.map(|s| format!("?session={s}")).unwrap_or_default();
        let put = http.put(format!("http://{addr}/api/files/{key}{query}")).bearer_auth(&admin).body("content");
        assert_eq!(put.send().await.expect("put").status().as_u16(), 201, "admin uploads {key}");
    }
    let visitor = secrets.issue(&Claims {
        session: Some(roomlog::event::SessionId::parse(&session).expect("id")),
        ..claims("visitor", &[("team-*", false)], false, hour)
    });
    let mut tampered = alice.clone();
    tampered.insert(10, if tampered.as_bytes()[10] == b'A' { 'B' } else { 'A' });

    // Something to read and find in both rooms.
    let mut root = Client::connect_query(addr, &format!("token={admin}"), "root").await.expect("admin connects");
    for room in ["team-a", "lobby"] {
        root.join(room, None).await;
        root.say(room, &format!("findme in {room}"), room).await;
    }
    common::projections_caught_up(addr).await;

    // (identity, token, rooms readable, rooms writable; HTTP rights as in HTTP_OPS)
    let (all, none) = ([true; 6], [false; 6]);
    let team_writer = [true, true, false, false, false, false];
    let identities: Vec<(Case, HttpRights)> = vec![
        (("admin", Some(&admin), &["team-a", "lobby"], &["team-a", "lobby"]), all),
        (("alice (team-* write, team/ files)", Some(&alice), &["team-a"], &["team-a"]), team_writer),
        (
            ("rita (team-* and team/ read only)", Some(&reader), &["team-a"], &[]),
            [true, false, false, false, false, false],
        ),
        (("alice's, old secret in its grace", Some(&in_grace), &["team-a"], &["team-a"]), team_writer),
        (("visitor bound to the session", Some(&visitor), &["team-a"], &[]), [false, false, true, true, true, false]),
        (("alice, rotated-out secret", Some(&rotated_out), &[], &[]), none),
        (("alice, expired", Some(&expired), &[], &[]), none),
        (("alice, tampered", Some(&tampered), &[], &[]), none),
        (("no token", None, &[], &[]), none),
    ];
    let (mut allowed, mut refused) = (0, 0);
    for (n, ((who, token, readable, writable), rights)) in identities.into_iter().enumerate() {
        let valid = !readable.is_empty() || !writable.is_empty();
        let (yes, no) = http_cases(addr, who, token, &session, rights, valid, n).await;
        allowed += yes;
        refused += no;
        let query = token.map(|t| format!("token={t}")).unwrap_or_else(|| "name=anon".into());
        let client = Client::connect_query(addr, &query, who).await;
        let mut client = match client {
            Ok(client) => {
                assert!(valid, "{who}: connected, but must be refused");
                allowed += 1;
                client
            }
            Err(status) => {
                assert!(!valid, "{who}: refused with {status}, but must connect");
                assert_eq!(status, 401, "{who}");
                refused += 3; // the connection, and the HTTP search and history below
                let (status, _) = common::get(addr, &format!("/api/search?q=findme&{query}")).await;
                assert_eq!(status, 401, "{who}: HTTP search refused too");
                let (status, _) = common::get(addr, &format!("/api/rooms/team-a/messages?{query}")).await;
                assert_eq!(status, 401, "{who}: HTTP history refused too");
                continue;
            }
        };
        for room in ["team-a", "lobby"] {
            let (may_read, may_write) = (readable.contains(&room), writable.contains(&room));
            client.send(json!({"type": "join", "room": room})).await;
            let joined = until(&mut client, &["joined", "error"]).await;
            assert_eq!(joined["type"] == "joined", may_read, "{who} join {room}: {joined}");
            if may_read {
                allowed += 1;
                assert_eq!(joined["type"], "joined");
            } else {
                refused += 1;
                assert_eq!(joined["code"], "forbidden", "{who} join {room}");
            }
            client.send(json!({"type": "history", "room": room})).await;
            let history = until(&mut client, &["history", "error"]).await;
            assert_eq!(history["type"] == "history", may_read, "{who} history {room}: {history}");
            if may_read {
                allowed += 1
            } else {
                refused += 1
            }
            let (status, page) = common::get(addr, &format!("/api/rooms/{room}/messages?{query}")).await;
            assert_eq!(status, if may_read { 200 } else { 403 }, "{who} HTTP history {room}: {page}");
            if may_read {
                allowed += 1
            } else {
                refused += 1
            }
            client.send(json!({"type": "send", "room": room, "body": "hi", "client_id": format!("{who}{room}")})).await;
            let sent = until(&mut client, &["ack", "error"]).await;
            assert_eq!(sent["type"] == "ack", may_write, "{who} send {room}: {sent}");
            if may_write {
                allowed += 1
            } else {
                refused += 1;
                assert!(
                    ["forbidden", "not_joined"].contains(&sent["code"].as_str().unwrap_or("")),
                    "{who} send {room}: {sent}"
                )
            }
        }
        // The room list shows only readable rooms.
        let (_, list) = common::get(addr, &format!("/api/rooms?{query}")).await;
        let mut listed: Vec<&str> =
            list["rooms"].as_array().expect("rooms").iter().map(|r| r["room"].as_str().expect("room")).collect();
        listed.sort();
        let mut readable_sorted = readable.to_vec();
        readable_sorted.sort();
        assert_eq!(listed, readable_sorted, "{who}: the room list");
        // Search: hits and their count only from readable rooms.
        let (status, found) = common::get(addr, &format!("/api/search?q=findme&{query}")).await;
        assert_eq!(status, 200, "{who}: {found}");
        let rooms: Vec<&str> =
            found["hits"].as_array().expect("hits").iter().map(|h| h["room"].as_str().expect("room")).collect();
        let mut expected: Vec<&str> = readable.to_vec();
        expected.sort();
        let mut got = rooms.clone();
        got.sort();
        assert_eq!(got, expected, "{who}: search hits");
        assert_eq!(found["total"], readable.len(), "{who}: the total does not count unreadable rooms");
        allowed += readable.len();
        refused += 2 - readable.len();
    }
    println!("permission matrix: {allowed} authorized cases worked, {refused} unauthorized cases refused");
    assert!(allowed > 0 && refused > 0);
    drop(root);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_keeps_failing_to_authenticate_is_refused_for_a_while() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::config(dir.path());
    config.auth.anonymous = Anonymous::None;
    config.limits.auth_failures_per_minute = 5;
    let files = SecretFiles { dir: config.secret_dir() };
    let good = files.load_or_create().expect("secret").issue(&claims("alice", &[("*", true)], false, now_s() + 60));
    let server = common::start(config).await;
    let addr = server.addr();
    for n in 0..5 {
        let refused = Client::connect_query(addr, "token=rl1.forged.AAAA", "mallory").await.err();
        assert_eq!(refused, Some(401), "failure {n}");
    }
    let refused = Client::connect_query(addr, "token=rl1.forged.AAAA", "mallory").await.err();
    assert_eq!(refused, Some(429), "the sixth failure in a minute is refused before authentication");
    let client = Client::connect_query(addr, &format!("token={good}"), "alice").await;
    assert!(client.is_ok(), "a valid token is never refused because of failures from its address");
    drop(client);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_may_hold_only_so_many_connections_and_gets_them_back_when_they_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::config(dir.path());
    config.limits.connections_per_address_max = 3;
    let server = common::start(config).await;
    let addr = server.addr();
    let mut held = Vec::new();
    for n in 0..3 {
        held.push(Client::connect_query(addr, &format!("name=u{n}"), "u").await.expect("within the limit"));
    }
    let refused = Client::connect_query(addr, "name=u3", "u").await.err();
    assert_eq!(refused, Some(429), "a fourth from the same address is refused");
    // The ones already open still chat.
    held[0].join("lobby", None).await;
    assert!(held[0].say("lobby", "still here", "1").await > 0);
    drop(held.pop());
    let mut again = None;
    for _ in 0..100 {
        if let Ok(client) = Client::connect_query(addr, "name=u4", "u").await {
            again = Some(client);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a closed connection frees its slot");
    drop((held, again));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_bound_to_a_session_dies_with_the_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::config(dir.path());
    config.auth.anonymous = Anonymous::None;
    let files = SecretFiles { dir: config.secret_dir() };
    let secrets = files.load_or_create().expect("secret");
    let server = common::start(config).await;
    let addr = server.addr();
    let http = reqwest::Client::new();
    let admin = secrets.issue(&claims("root", &[("*", true)], true, now_s() + 3600));
    let id = roomlog::event::SessionId::parse(&create_session(addr, &admin).await).expect("session id");
    let bound = Claims { session: Some(id.clone()), ..claims("visitor", &[("room-*", true)], false, now_s() + 3600) };
    let token = secrets.issue(&bound);
    let mut client = Client::connect_query(addr, &format!("token={token}"), "visitor").await.expect("live session");
    client.join("room-1", None).await;
    assert!(client.say("room-1", "while the session lives", "1").await > 0);
    // The visitor ends its own session with its own token.
    let ended =
        http.post(format!("http://{addr}/api/sessions/{id}/end")).bearer_auth(&token).send().await.expect("end");
    assert!(ended.status().is_success(), "{}", ended.status());
    let refused = Client::connect_query(addr, &format!("token={token}"), "visitor").await.err();
    assert_eq!(refused, Some(401), "the session ended: its token no longer connects");
    let (status, answer) = common::get(addr, &format!("/api/search?q=session&token={token}")).await;
    assert_eq!(status, 401, "nor searches: {answer}");
    assert!(answer["error"]["message"].as_str().unwrap_or("").contains("is ended"), "{answer}");
    drop(client);
    server.shutdown().await;
}

#[test]
fn token_issue_prints_only_the_token_even_when_it_creates_the_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_roomlog"))
        .args(["token", "issue", "--user", "ann", "--rooms", "*", "--data"])
        .arg(dir.path())
        .output()
        .expect("run roomlog token issue");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "TOKEN=$(roomlog token issue ...) gets the token alone: {stdout:?}");
    assert!(lines[0].starts_with("rl1."), "{stdout:?}");
    let secrets = SecretFiles { dir: dir.path().join("auth") }.load_or_create().expect("the secret it made");
    assert_eq!(secrets.verify(lines[0], now_s() * 1000).expect("valid").user, "ann");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_metrics_need_an_admin_token_and_public_ones_need_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::config(dir.path());
    config.auth.anonymous = Anonymous::None;
    config.auth.admin_from_host = false;
    config.auth.metrics_private = true;
    let secrets = SecretFiles { dir: config.secret_dir() }.load_or_create().expect("secret");
    let server = common::start(config).await;
    let addr = server.addr();
    let admin = secrets.issue(&claims("prometheus", &[], true, now_s() + 3600));
    let user = secrets.issue(&claims("alice", &[("*", true)], false, now_s() + 3600));
    let http = reqwest::Client::new();
    let status =
        |request: reqwest::RequestBuilder| async move { request.send().await.expect("metrics").status().as_u16() };
    let url = format!("http://{addr}/metrics");
    assert_eq!(status(http.get(&url)).await, 401, "no token");
    assert_eq!(status(http.get(&url).bearer_auth(&user)).await, 403, "a token without the admin scope");
    assert_eq!(status(http.get(&url).bearer_auth(&admin)).await, 200, "an admin token, as Prometheus sends it");
    server.shutdown().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::config(dir.path());
    config.auth.anonymous = Anonymous::None;
    config.auth.admin_from_host = false;
    config.auth.metrics_private = false;
    let server = common::start(config).await;
    let url = format!("http://{}/metrics", server.addr());
    assert_eq!(status(http.get(&url)).await, 200, "public metrics (auth.metrics_private = false) need no token");
    server.shutdown().await;
}

/// Issue 17: `/metrics` was public by default, and so public to the internet through a tunnel
/// (cloudflared, ngrok, `ssh -R` connect from loopback, so "loopback is trusted" is no
/// defence). By default it needs an admin token, from loopback too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_an_admin_token_by_default_even_from_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = roomlog::Config { data: dir.path().to_path_buf(), ..roomlog::Config::default() };
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    common::host_disk_independent(&mut config.disk);
    config.normalise();
    let secrets = SecretFiles { dir: config.secret_dir() }.load_or_create().expect("secret");
    let server = common::start(config).await;
    let url = format!("http://{}/metrics", server.addr());
    let http = reqwest::Client::new();
    let refused = http.get(&url).send().await.expect("metrics").status().as_u16();
    assert_eq!(refused, 401, "a scrape from loopback without a token, as a tunnel's would be");
    let admin = secrets.issue(&claims("prometheus", &[], true, now_s() + 3600));
    let scraped = http.get(&url).bearer_auth(&admin).send().await.expect("metrics").status().as_u16();
    assert_eq!(scraped, 200, "an admin token, as ops/prometheus/prometheus.yml sends it");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_without_an_admin_token_is_a_page_that_asks_for_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::config(dir.path());
    config.auth.anonymous = Anonymous::None;
    config.auth.admin_from_host = false;
    let secrets = SecretFiles { dir: config.secret_dir() }.load_or_create().expect("secret");
    let server = common::start(config).await;
    let addr = server.addr();
    let admin = secrets.issue(&claims("ops", &[], true, now_s() + 3600));
    let user = secrets.issue(&claims("alice", &[("*", true)], false, now_s() + 3600));
    let http = reqwest::Client::new();
    let fetch = |query: String| {
        let http = http.clone();
        async move {
            let response = http.get(format!("http://{addr}/admin{query}")).send().await.expect("admin page");
            let status = response.status().as_u16();
            let html = response.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
            (status, html, response.text().await.unwrap_or_default())
        }
    };
    let (status, html, body) = fetch(String::new()).await;
    assert_eq!(status, 401, "no token is 401, as README documents: {body}");
    assert!(html && body.contains("name=\"token\""), "a page with a field for the admin token: {body}");
    let (status, html, body) = fetch(format!("?token={user}")).await;
    assert_eq!(status, 403, "a token without the admin scope: {body}");
    assert!(html && body.contains("name=\"token\"") && body.contains("admin scope"), "it says why: {body}");
    let (status, html, body) = fetch("?token=rl1.forged.AAAA".into()).await;
    assert_eq!(status, 401, "a token that is not valid: {body}");
    assert!(html && body.contains("name=\"token\""), "{body}");
    let (status, _, body) = fetch(format!("?token={admin}")).await;
    assert_eq!(status, 200, "an admin token opens the dashboard");
    assert!(body.contains("id=\"gauge\""), "the dashboard itself");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_created_paid_and_listed_by_an_admin_only_even_when_anonymous_callers_may_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::config(dir.path());
    config.auth.anonymous = Anonymous::Write;
    config.auth.admin_from_host = false;
    let secrets = SecretFiles { dir: config.secret_dir() }.load_or_create().expect("secret");
    let server = common::start(config).await;
    let addr = server.addr();
    let admin = secrets.issue(&claims("app", &[], true, now_s() + 3600));
    let http = reqwest::Client::new();
    let status = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.expect("http");
        (response.status().as_u16(), response.text().await.unwrap_or_default())
    };
    let base = format!("http://{addr}/api/sessions");
    for (what, request) in [
        ("create", http.post(&base)),
        ("create under a name", http.post(format!("{base}?name=eve"))),
        ("list", http.get(&base)),
        ("stats", http.get(format!("{base}/stats"))),
    ] {
        let (code, body) = status(request).await;
        assert_eq!(code, 401, "an anonymous caller may not {what} sessions: {body}");
        assert!(body.contains("\"unauthorized\""), "{what}: {body}");
    }
    let id = create_session(addr, &admin).await;
    let (code, body) = status(http.post(format!("{base}/{id}/pay?name=eve"))).await;
    assert_eq!(code, 401, "nor pay one (a free paid session): {body}");
    let (code, body) = status(http.get(format!("{base}/{id}"))).await;
    assert_eq!(code, 200, "the session is unpaid still: {body}");
    assert!(body.contains("\"active\""), "{body}");
    let (code, body) = status(http.post(format!("{base}/{id}/pay")).bearer_auth(&admin)).await;
    assert_eq!(code, 200, "the app's backend pays it: {body}");
    let (code, body) = status(http.get(&base).bearer_auth(&admin)).await;
    assert_eq!(code, 200, "and lists them: {body}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_moves_are_for_the_admin_scope_even_when_anonymous_callers_may_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::config(dir.path());
    config.auth.anonymous = Anonymous::Write;
    config.auth.admin_from_host = false;
    config.files.cold_dir = Some(dir.path().join("cold"));
    let secrets = SecretFiles { dir: config.secret_dir() }.load_or_create().expect("secret");
    let server = common::start(config).await;
    let addr = server.addr();
    let admin = secrets.issue(&claims("ops", &[], true, now_s() + 3600));
    let writer = secrets.issue(&claims("app", &[("*", true)], false, now_s() + 3600));
    let (stored, answer) = common::put_file(addr, "tts/a.mp3", vec![1; 4096], "audio/mpeg").await;
    assert_eq!(stored, 201, "anonymous callers may still upload: {answer}");
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/api/files/tts/a.mp3?tier=cold");
    for (who, request, expected) in [
        ("an anonymous caller", http.post(&url), 401),
        ("a token without the admin scope", http.post(&url).bearer_auth(&writer), 403),
    ] {
        let response = request.send().await.expect("http");
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, expected, "{who} may not move content between tiers: {body}");
    }
    let tier = |response: reqwest::Response| response.headers().get("x-roomlog-tier").cloned();
    let before = tier(reqwest::get(format!("http://{addr}/api/files/tts/a.mp3")).await.expect("get")).expect("tier");
    assert_eq!(before, "hot", "nothing moved");
    let response = http.post(&url).bearer_auth(&admin).send().await.expect("http");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json");
    assert_eq!((status, &body["tier"]), (200, &json!("cold")), "the admin scope moves it: {body}");
    let after = tier(reqwest::get(format!("http://{addr}/api/files/tts/a.mp3")).await.expect("get")).expect("tier");
    assert_eq!(after, "cold");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_caller_may_not_take_a_name_reserved_by_a_token_user() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::config(dir.path());
    config.auth.anonymous = Anonymous::Write;
    config.auth.reserved_names = vec!["Ops".into()];
    let secrets = SecretFiles { dir: config.secret_dir() }.load_or_create().expect("secret");
    let alice = secrets.issue(&claims("alice", &[("*", true)], false, now_s() + 3600));
    let server = common::start(config).await;
    let addr = server.addr();
    let mut real = Client::connect_query(addr, &format!("token={alice}"), "alice").await.expect("alice's token");
    real.join("lobby", None).await;
    for taken in ["alice", "ALICE", "ops"] {
        let refused = Client::connect_query(addr, &format!("name={taken}"), "mallory").await.err();
        assert_eq!(refused, Some(401), "{taken} is reserved for a token user");
        let (status, body) = common::get(addr, &format!("/api/search?q=hello&name={taken}")).await;
        assert_eq!(status, 401, "over HTTP too ({taken}): {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("reserved"), "the refusal says why: {body}");
    }
    let mut zoe = Client::connect_query(addr, "name=zoe", "zoe").await.expect("a free name");
    zoe.join("lobby", None).await;
    assert!(zoe.say("lobby", "hi", "1").await > 0);
    drop((real, zoe));
    server.shutdown().await;
}

/// Connects through a "tunnel": to the server from 127.0.0.1, with forwarding `headers` naming
/// the client. The refusal's HTTP status if the server does not upgrade.
async fn connect_forwarded(addr: std::net::SocketAddr, query: &str, headers: &[(&str, &str)]) -> Result<Client, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}/ws?{query}").into_client_request().expect("request");
    for (name, value) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("name");
        request.headers_mut().append(name, value.parse().expect("header value"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(Client::from_stream(ws, "forwarded")),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(error) => panic!("ws connect failed: {error}"),
    }
}

/// An HTTP search through the "tunnel" with `token` and forwarding `headers`: its status.
async fn search_forwarded(addr: std::net::SocketAddr, token: &str, headers: &[(&str, &str)]) -> u16 {
    let mut request = reqwest::Client::new().get(format!("http://{addr}/api/search?q=hello")).bearer_auth(token);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("search").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_tunnel_one_stranger_failing_locks_out_only_itself() {
    // cloudflared, ngrok and the like connect from 127.0.0.1 and name the client in a header.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::config(dir.path());
    config.auth.anonymous = Anonymous::None;
    config.auth.admin_from_host = false;
    config.auth.trusted_proxies = vec!["127.0.0.1".parse().expect("ip")];
    config.limits.auth_failures_per_minute = 5;
    let secrets = SecretFiles { dir: config.secret_dir() }.load_or_create().expect("secret");
    let good = secrets.issue(&claims("alice", &[("*", true)], false, now_s() + 3600));
    let server = common::start(config).await;
    let addr = server.addr();
    let stranger = [("x-forwarded-for", "203.0.113.9")];
    for n in 0..5 {
        assert_eq!(connect_forwarded(addr, "token=rl1.forged.AAAA", &stranger).await.err(), Some(401), "failure {n}");
    }
    assert_eq!(
        connect_forwarded(addr, "token=rl1.forged.AAAA", &stranger).await.err(),
        Some(429),
        "the stranger waits"
    );
    assert_eq!(search_forwarded(addr, "rl1.forged.AAAA", &stranger).await, 429, "over HTTP too");
    // Everyone else behind the same tunnel, named by any of the three headers, is not affected.
    for other in [
        [("x-forwarded-for", "198.51.100.7")],
        [("cf-connecting-ip", "198.51.100.8")],
        [("forwarded", "for=\"[2001:db8::7]:4711\";proto=https")],
    ] {
        assert_eq!(connect_forwarded(addr, "token=rl1.forged.AAAA", &other).await.err(), Some(401), "{other:?}");
        let client = connect_forwarded(addr, &format!("token={good}"), &other).await;
        assert!(client.is_ok(), "{other:?}: a valid token connects");
    }
    let client = connect_forwarded(addr, &format!("token={good}"), &stranger).await;
    assert!(client.is_ok(), "a valid token is never refused, even from the stranger's address");
    assert_eq!(search_forwarded(addr, &good, &stranger).await, 200, "nor over HTTP");
    // HTTP failures count as well: five bad tokens over HTTP, then the WebSocket is refused.
    let prober = [("x-forwarded-for", "192.0.2.50")];
    for n in 0..5 {
        assert_eq!(search_forwarded(addr, "rl1.forged.AAAA", &prober).await, 401, "http failure {n}");
    }
    assert_eq!(search_forwarded(addr, "rl1.forged.AAAA", &prober).await, 429, "the sixth http failure");
    assert_eq!(connect_forwarded(addr, "token=rl1.forged.AAAA", &prober).await.err(), Some(429));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_on_this_host_does_not_get_the_admin_scope_of_the_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::config(dir.path());
    config.auth.admin_from_host = true;
    let server = common::start(config.clone()).await;
    assert_eq!(common::get(server.addr(), "/api/status").await.0, 200, "this host is the admin");
    server.shutdown().await;

    // The same host behind cloudflared: every caller connects from 127.0.0.1, the proxy.
    config.auth.trusted_proxies = vec!["127.0.0.1".parse().expect("ip")];
    let server = common::start(config).await;
    let (status, body) = common::get(server.addr(), "/api/status").await;
    assert_eq!(status, 401, "a caller through the tunnel needs an admin token: {body}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_a_peer_that_is_not_a_trusted_proxy_are_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::config(dir.path());
    config.auth.anonymous = Anonymous::None;
    config.limits.auth_failures_per_minute = 5;
    let server = common::start(config).await;
    let addr = server.addr();
    // No trusted proxy (the default): a client that names a new address each time gains nothing.
    for n in 0..5 {
        let fake = format!("203.0.113.{n}");
        let refused = connect_forwarded(addr, "token=rl1.forged.AAAA", &[("x-forwarded-for", fake.as_str())]).await;
        assert_eq!(refused.err(), Some(401), "failure {n}");
    }
    let refused = connect_forwarded(addr, "token=rl1.forged.AAAA", &[("x-forwarded-for", "203.0.113.99")]).await;
    assert_eq!(refused.err(), Some(429), "counted by the peer's own address");
    server.shutdown().await;
}
