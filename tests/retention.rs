//! Room history retention, applied by the janitor at the time its rules say (a paused clock):
//! removed messages are gone from history, from search and from a joining client's replay.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{get, Client};
use roomlog::auth::NameOnly;
use roomlog::clock::ManualClock;
use roomlog::config::RoomRetention;
use roomlog::Server;
use serde_json::Value;

const HOUR: Duration = Duration::from_secs(3600);

async fn run(server: &Server) -> Value {
    let response =
        reqwest::Client::new().post(format!("http://{}/api/janitor/run", server.addr())).send().await.expect("run");
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.expect("json")
}

/// (rule, items, bytes) of a plan's or a run's tally.
fn rules(tally: &Value) -> Vec<(String, u64, u64)> {
    let mut out: Vec<_> = tally
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            let n = |k: &str| r[k].as_u64().expect("number");
            (r["rule"].as_str().expect("rule").to_owned(), n("items"), n("bytes"))
        })
        .collect();
    out.sort();
    out
}

fn bodies(messages: &[Value]) -> Vec<String> {
    messages.iter().map(|m| m["body"].as_str().expect("body").to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_count_and_by_age_removes_messages_at_their_time_from_history_and_search() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::config(dir.path());
    config.janitor.every = None;
    config.retention.default = RoomRetention { max_messages: None, max_age: Some(HOUR) };
    config.retention.rooms.insert("lobby".into(), RoomRetention { max_messages: Some(5), max_age: None });
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("time").as_millis() as u64;
    let clock = ManualClock::new(now);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server =
        Server::start_with_clock(config, listener, Arc::new(NameOnly), Arc::new(clock.clone())).await.expect("starts");

    let mut ann = Client::connect(server.addr(), "ann").await;
    ann.join("lobby", None).await;
    ann.join("side", None).await;
    let mut lobby_seqs = Vec::new();
    for n in 0..12 {
        lobby_seqs.push(ann.say("lobby", &format!("alpha number{n}"), &format!("l{n}")).await);
    }
    for n in 0..4 {
        ann.say("side", &format!("beta number{n}"), &format!("s{n}")).await;
    }
    // What a message stores: author, client id and body.
    let size = |body: &str, client_id: &str| (3 + client_id.len() + body.len()) as u64;
    let lobby_bytes: u64 = (0..7).map(|n| size(&format!("alpha number{n}"), &format!("l{n}"))).sum();
    let side_bytes: u64 = (0..4).map(|n| size(&format!("beta number{n}"), &format!("s{n}"))).sum();
    let by_count = ("retention.rooms.lobby.max_messages".to_owned(), 7, lobby_bytes);
    let by_age = ("retention.default.max_age".to_owned(), 4, side_bytes);

    // Count applies at once; the side room's messages are not an hour old yet.
    clock.advance(HOUR - Duration::from_secs(60));
    let (_, plan) = get(server.addr(), "/api/janitor/plan").await;
    assert_eq!(rules(&plan["rules"]), vec![by_count.clone()], "{plan}");
    assert_eq!(plan["items"][0]["target"], format!("lobby through seq {}", lobby_seqs[6]), "{plan}");
    clock.advance(Duration::from_secs(120));
    let (_, plan) = get(server.addr(), "/api/janitor/plan").await;
    assert_eq!(rules(&plan["rules"]), vec![by_age.clone(), by_count.clone()], "{plan}");

    let ran = run(&server).await;
    assert_eq!(ran["outcome"], "succeeded", "{ran}");
    assert_eq!(rules(&ran["rules"]), rules(&plan["rules"]), "the run removes what the plan listed");

    let lobby = common::whole_history(server.addr(), "lobby").await;
    assert_eq!(bodies(&lobby), (7..12).map(|n| format!("alpha number{n}")).collect::<Vec<_>>());
    assert_eq!(common::whole_history(server.addr(), "side").await, Vec::<Value>::new(), "every side message aged out");
    common::projections_caught_up(server.addr()).await;
    let (total, hits) = common::search_all(server.addr(), "q=alpha").await;
    assert_eq!(total, 5, "search has only the kept messages: {hits:?}");
    assert!(hits.iter().all(|h| h["seq"].as_u64().expect("seq") > lobby_seqs[6]), "{hits:?}");
    assert_eq!(common::search_all(server.addr(), "q=beta").await.0, 0);

    // A client joining now is replayed only what is kept, and told where the cut is.
    let mut bob = Client::connect(server.addr(), "bob").await;
    let joined = bob.join("lobby", None).await;
    assert_eq!(joined["removed_through_seq"], lobby_seqs[6], "{joined}");
    assert_eq!(bodies(&bob.messages_until("alpha number11").await), bodies(&lobby));

    // Nothing left to do until more messages arrive but to purge the cut messages' events from
    // the log (rule `log_purge`, planned from what is in the log now); the cut is recorded with
    // its rule.
    let (_, plan) = get(server.addr(), "/api/janitor/plan").await;
    let cut: u64 = ran["rules"].as_array().expect("rules").iter().map(|r| r["items"].as_u64().expect("items")).sum();
    assert_eq!(plan["rules"].as_array().map(Vec::len), Some(1), "{plan}");
    assert_eq!(
        (&plan["rules"][0]["rule"], plan["rules"][0]["items"].as_u64()),
        (&serde_json::json!("log_purge"), Some(cut)),
        "{plan}"
    );
    let events = server.log().read_range(1, 1000).await.expect("read log");
    let policies: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.event {
            roomlog::event::Event::MessagesExpired(x) => Some(format!("{} {}", x.room, x.policy)),
            _ => None,
        })
        .collect();
    assert_eq!(
        policies,
        vec![
            "lobby retention.rooms.lobby.max_messages: max_messages 5".to_owned(),
            "side retention.default.max_age: max_age 1h".to_owned()
        ]
    );
    drop((ann, bob));
    server.shutdown().await;
}
