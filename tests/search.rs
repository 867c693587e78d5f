//! Message search: what a person typing words finds, and that edits, deletions and retention
//! take messages out of the index, live and after a rebuild.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;

use common::{config, get, projections_caught_up, search_all, spawn, start, Client};
use roomlog::event::{Event, MessagesExpired, RoomId};
use serde_json::{json, Value};

/// `(room, seq)` of each hit, in the order given.
fn ids(hits: &[Value]) -> Vec<(String, u64)> {
    hits.iter().map(|h| (h["room"].as_str().expect("room").to_owned(), h["seq"].as_u64().expect("seq"))).collect()
}

async fn search(addr: SocketAddr, query: &str) -> Value {
    let (status, body) = get(addr, &format!("/api/search?{query}")).await;
    assert_eq!(status, 200, "{query}: {body}");
    body
}

/// The seqs a search finds, whatever their order.
async fn found(addr: SocketAddr, query: &str) -> BTreeSet<u64> {
    let (_, hits) = search_all(addr, query).await;
    ids(&hits).into_iter().map(|(_, seq)| seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_messages_are_found_by_words_phrases_prefixes_and_filters_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await;
    let addr = server.addr();
    let mut ann = Client::connect(addr, "ann").await;
    let mut bob = Client::connect(addr, "bob").await;
    for room in ["dev", "ops"] {
        ann.join(room, None).await;
        bob.join(room, None).await;
    }
    let mut seq = std::collections::HashMap::new();
    let posts = [
        ("a", "ann", "dev", "Deploy on Friday after the release notes are out"),
        ("b", "bob", "dev", "notes release draft: do not deploy"),
        ("c", "ann", "ops", "The migration finished; migrate the rest on Monday"),
        ("d", "bob", "ops", "kiwi kiwi kiwi"),
        ("e", "bob", "dev", "a long message that mentions kiwi once among many other words about nothing"),
        ("f", "ann", "dev", "我们的团队今天发布了新版本"),
        ("g", "bob", "ops", "東京へ行く予定です <script>"),
    ];
    for (key, author, room, body) in posts {
        let client = if author == "ann" { &mut ann } else { &mut bob };
        seq.insert(key, post(client, room, body, key).await);
    }
    projections_caught_up(addr).await;
    let s = |keys: &[&str]| keys.iter().map(|k| seq[k]).collect::<BTreeSet<u64>>();

    assert_eq!(found(addr, "q=deploy").await, s(&["a", "b"]), "one word, any case");
    assert_eq!(found(addr, "q=deploy+friday").await, s(&["a"]), "all words must match");
    assert_eq!(found(addr, "q=%22release+notes%22").await, s(&["a"]), "a phrase keeps its order");
    assert_eq!(found(addr, "q=deploy+-draft").await, s(&["a"]), "-word excludes");
    assert_eq!(found(addr, "q=migr*").await, s(&["c"]), "prefix");
    assert_eq!(found(addr, "q=kiwi&room=ops").await, s(&["d"]), "one room");
    assert_eq!(found(addr, "q=kiwi&room=ops,dev").await, s(&["d", "e"]), "several rooms");
    assert_eq!(found(addr, "q=deploy&author=bob").await, s(&["b"]), "by author");
    assert_eq!(found(addr, "q=团队").await, s(&["f"]), "a two-character Chinese word");
    assert_eq!(found(addr, "q=发布").await, s(&["f"]));
    assert_eq!(found(addr, "q=新版本").await, s(&["f"]), "a three-character word as bigrams");
    assert_eq!(found(addr, "q=東京").await, s(&["g"]), "Japanese");
    assert!(found(addr, "q=团发").await.is_empty(), "characters that are not adjacent do not match");

    // Time range: since a message's own time includes it, until just before excludes it.
    let hit = &search(addr, "q=kiwi&room=ops").await["hits"][0];
    let at = hit["at_unix_ms"].as_u64().expect("at");
    assert_eq!(found(addr, &format!("q=kiwi&since={at}")).await.len(), 1 + usize::from(seq["e"] > seq["d"]));
    assert!(found(addr, &format!("q=kiwi&room=ops&until={}", at - 1)).await.is_empty());
    assert_eq!(found(addr, "q=kiwi&since=1h").await, s(&["d", "e"]), "a duration ago");

    // Relevance: three kiwis in three words beat one in fourteen. Time: newest first.
    let by_score = search(addr, "q=kiwi").await;
    assert_eq!(by_score["total"], 2);
    assert_eq!(by_score["hits"][0]["seq"], seq["d"]);
    assert!(by_score["hits"][0]["score"].as_f64() > by_score["hits"][1]["score"].as_f64());
    let by_time = search(addr, "q=kiwi&sort=time").await;
    assert_eq!(by_time["hits"][0]["seq"], seq["e"]);
    assert_eq!(by_time["hits"][0]["score"], 0.0);

    // Snippets highlight the matches and escape the text.
    let snippet = search(addr, "q=migr*").await["hits"][0]["snippet"].as_str().expect("snippet").to_owned();
    assert!(snippet.contains("<b>migration</b>") && snippet.contains("<b>migrate</b>"), "{snippet}");
    let snippet = search(addr, "q=東京").await["hits"][0]["snippet"].as_str().expect("snippet").to_owned();
    assert!(snippet.contains("<b>東京</b>") && snippet.contains("&lt;script"), "{snippet}");

    // Bad queries have a stable code.
    for bad in [
        "q=",
        "q=-only",
        "q=x&limit=0",
        "q=x&limit=many",
        "q=x&since=someday",
        "q=x&cursor=zz",
        "q=x&room=../etc",
        "q=x&bogus=1",
    ] {
        let (status, body) = get(addr, &format!("/api/search?{bad}")).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_query")), "{bad}: {body}");
    }

    // The same search over the WebSocket.
    ann.send(json!({"type":"search","id":"s1","q":"deploy","sort":"time"})).await;
    let answer = loop {
        let frame = ann.recv().await;
        if frame["type"] == "search_results" {
            break frame;
        }
    };
    assert_eq!(answer["id"], "s1");
    let http = search(addr, "q=deploy&sort=time").await;
    assert_eq!(answer["hits"], http["hits"]);
    ann.send(json!({"type":"search","q":"  "})).await;
    let error = loop {
        let frame = ann.recv().await;
        if frame["type"] == "error" {
            break frame;
        }
    };
    assert_eq!(error["code"], "invalid_query");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_follow_their_cursor_without_gaps_or_repeats_while_messages_arrive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await;
    let addr = server.addr();
    let mut ann = Client::connect(addr, "ann").await;
    ann.join("p", None).await;
    for n in 0..45 {
        ann.say("p", &format!("page item {n} {}", "filler ".repeat(n % 7)), &format!("c{n}")).await;
    }
    projections_caught_up(addr).await;
    for sort in ["time", "relevance"] {
        let mut seen = Vec::new();
        let mut scores = Vec::new();
        let mut cursor = String::new();
        let mut first = true;
        loop {
            let page = search(addr, &format!("q=item&sort={sort}&limit=10{cursor}")).await;
            if first {
                let before = if sort == "time" { 45 } else { 46 };
                assert_eq!(page["total"], before, "total counts every match, not the page");
            }
            seen.extend(ids(page["hits"].as_array().expect("hits")));
            scores.extend(page["hits"].as_array().expect("hits").iter().map(|h| h["score"].as_f64().expect("score")));
            if first {
                // A message arriving between pages must not shift them.
                ann.say("p", "page item late", &format!("late-{sort}")).await;
                projections_caught_up(addr).await;
                first = false;
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => break,
            }
        }
        let unique: BTreeSet<_> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "{sort}: no hit twice");
        // The first sort's late message is older than the second sort's first page.
        let existing = if sort == "time" { 45 } else { 46 };
        assert_eq!(seen.len(), existing, "{sort}: every hit that existed at the first page, once");
        if sort == "time" {
            assert!(seen.windows(2).all(|w| w[0].1 > w[1].1), "newest first");
        } else {
            // One message scores the same on every page: the scores only fall, page after page.
            assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first across pages: {scores:?}");
        }
    }
    server.shutdown().await;
}

/// Sends a message and returns its seq from the ack, skipping other frames.
async fn post(client: &mut Client, room: &str, body: &str, client_id: &str) -> u64 {
    client.send(json!({"type":"send","room":room,"body":body,"client_id":client_id})).await;
    loop {
        let frame = next_of(client, "ack").await;
        if frame["client_id"] == client_id {
            return frame["seq"].as_u64().expect("seq");
        }
    }
}

/// Waits for the next frame of `kind`, skipping others.
async fn next_of(client: &mut Client, kind: &str) -> Value {
    loop {
        let frame = client.recv().await;
        if frame["type"] == kind {
            return frame;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_message_is_found_by_its_new_words_and_a_deleted_one_never() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await;
    let addr = server.addr();
    let (mut ann, mut bob) = (Client::connect(addr, "ann").await, Client::connect(addr, "bob").await);
    ann.join("e", None).await;
    bob.join("e", None).await;
    let first = ann.say("e", "the meeting is on tuesdy", "m1").await;
    let second = ann.say("e", "bring the quarterly numbers", "m2").await;
    bob.messages(2).await;

    ann.send(json!({"type":"edit","room":"e","seq":first,"body":"the meeting is on thursday","client_id":"x1"})).await;
    let ack = next_of(&mut ann, "ack").await;
    assert_eq!(ack["client_id"], "x1");
    let edit_seq = ack["seq"].as_u64().expect("seq");
    let edited = next_of(&mut bob, "edited").await;
    assert_eq!(
        (edited["seq"].as_u64(), edited["target"].as_u64(), edited["body"].as_str()),
        (Some(edit_seq), Some(first), Some("the meeting is on thursday"))
    );
    // Someone else may not touch ann's message; a message that is not there is not found.
    bob.send(json!({"type":"delete","room":"e","seq":second,"client_id":"x2"})).await;
    assert_eq!(next_of(&mut bob, "error").await["code"], "forbidden");
    bob.send(json!({"type":"edit","room":"e","seq":999_999,"body":"x","client_id":"x3"})).await;
    assert_eq!(next_of(&mut bob, "error").await["code"], "not_found");

    ann.send(json!({"type":"delete","room":"e","seq":second,"client_id":"x4"})).await;
    let delete_seq = next_of(&mut ann, "ack").await["seq"].as_u64().expect("seq");
    let deleted = next_of(&mut bob, "deleted").await;
    assert_eq!((deleted["seq"].as_u64(), deleted["target"].as_u64()), (Some(delete_seq), Some(second)));
    ann.send(json!({"type":"delete","room":"e","seq":second,"client_id":"x5"})).await;
    assert_eq!(next_of(&mut ann, "error").await["code"], "not_found", "deleted twice");

    projections_caught_up(addr).await;
    assert!(found(addr, "q=tuesdy").await.is_empty(), "the old text is gone from the index");
    assert_eq!(found(addr, "q=thursday").await, BTreeSet::from([first]), "the new text is found");
    assert!(found(addr, "q=quarterly").await.is_empty(), "a deleted message is never found");

    // History shows the message as it now reads; a resume from before hears of both changes.
    let (_, page) = get(addr, "/api/rooms/e/messages").await;
    let messages = page["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["body"], "the meeting is on thursday");
    assert!(messages[0]["edited_at_unix_ms"].as_u64().is_some());
    let mut late = Client::connect(addr, "cy").await;
    late.join("e", Some(second)).await;
    let (edit, delete) = (late.recv().await, late.recv().await);
    assert_eq!((edit["type"].as_str(), edit["seq"].as_u64()), (Some("edited"), Some(edit_seq)));
    assert_eq!((delete["type"].as_str(), delete["seq"].as_u64()), (Some("deleted"), Some(delete_seq)));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_messages_from_the_index_and_rebuild_search_gives_the_live_results() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    let queries = ["q=alpha", "q=beta&sort=time", "q=gamma*", "q=%22alpha+beta%22", "q=alpha+-gamma", "q=计划"];
    let live = {
        let server = start(config(&data)).await;
        let addr = server.addr();
        let mut ann = Client::connect(addr, "ann").await;
        ann.join("r", None).await;
        ann.join("s", None).await;
        let words = ["alpha", "beta", "gamma", "gammaray", "计划"];
        let mut seqs = Vec::new();
        for n in 0..60 {
            let body = format!("{} {} n{n}", words[n % 5], words[(n * 3 + 1) % 5]);
            seqs.push(ann.say(if n % 2 == 0 { "r" } else { "s" }, &body, &format!("c{n}")).await);
        }
        ann.send(json!({"type":"edit","room":"r","seq":seqs[0],"body":"beta edited","client_id":"e"})).await;
        next_of(&mut ann, "ack").await;
        ann.send(json!({"type":"delete","room":"s","seq":seqs[1],"client_id":"d"})).await;
        next_of(&mut ann, "ack").await;
        // Retention cuts room r through its 20th message, as the janitor will.
        let cut = Event::MessagesExpired(MessagesExpired {
            room: RoomId::parse("r").expect("room"),
            through_seq: seqs[20],
            policy: "test".into(),
        });
        server.log().append(cut).await.expect("append");
        projections_caught_up(addr).await;
        let in_r = found(addr, "q=n*&room=r").await;
        assert!(in_r.iter().all(|&s| s > seqs[20]), "retention took r's old messages out of the index");
        assert_eq!(in_r.len(), 19, "r keeps its messages after the cut");
        let mut results = Vec::new();
        for q in queries {
            results.push(search_all(addr, q).await);
        }
        server.shutdown().await;
        results
    };
    let rebuild = Command::new(env!("CARGO_BIN_EXE_roomlog"))
        .args(["rebuild", "search", "--data"])
        .arg(&data)
        .output()
        .expect("roomlog rebuild search");
    assert!(rebuild.status.success(), "{}", String::from_utf8_lossy(&rebuild.stderr));
    assert!(String::from_utf8_lossy(&rebuild.stdout).contains("rebuilt search: 63 events"));
    let cli = Command::new(env!("CARGO_BIN_EXE_roomlog"))
        .args(["search", "alpha -gamma", "--sort", "time", "--data"])
        .arg(&data)
        .output()
        .expect("roomlog search");
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let printed = String::from_utf8_lossy(&cli.stdout);
    let mut server = spawn(&data);
    projections_caught_up(server.addr).await;
    // With the server running (it holds the log, where the texts are), the command asks it.
    let asked = Command::new(env!("CARGO_BIN_EXE_roomlog"))
        .args(["search", "alpha -gamma", "--sort", "time", "--addr", &server.addr.to_string(), "--data"])
        .arg(&data)
        .output()
        .expect("roomlog search");
    assert!(asked.status.success(), "{}", String::from_utf8_lossy(&asked.stderr));
    assert_eq!(String::from_utf8_lossy(&asked.stdout), printed, "the running server answers as the data folder did");
    for (q, expected) in queries.iter().zip(&live) {
        let (total, hits) = search_all(server.addr, q).await;
        assert_eq!(total, expected.0, "{q}: totals");
        let strip = |hits: &[Value]| -> Vec<Value> {
            hits.iter().map(|h| json!([h["room"], h["seq"], h["snippet"], h["author"], h["at_unix_ms"]])).collect()
        };
        assert_eq!(strip(&hits), strip(&expected.1), "{q}: the rebuilt index answers as the live one");
        if q.starts_with("q=alpha+-") {
            assert!(printed.contains(&format!("{} of {} matching messages", hits.len().min(20), total)), "{printed}");
        }
    }
    server.child.kill().expect("kill");
}

/// Issue 17: a relevance cursor with a huge offset once made the search allocate for that many
/// hits and aborted the whole process. Relevance pages stop at the 10,000 best hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_past_the_relevance_window_is_refused_and_the_server_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await;
    let mut ann = Client::connect(server.addr(), "ann").await;
    ann.join("deep", None).await;
    ann.say("deep", "alpha beta", "c1").await;
    projections_caught_up(server.addr()).await;
    for cursor in ["r10000000000000.0", "r18446744073709551615.0", "r10000.1"] {
        let (status, answer) = get(server.addr(), &format!("/api/search?q=alpha&cursor={cursor}")).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_query")), "{cursor}: {answer}");
    }
    let (status, answer) = get(server.addr(), "/api/search?q=alpha").await;
    assert_eq!((status, answer["total"].as_u64()), (200, Some(1)), "{answer}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_chinese_or_japanese_character_finds_the_messages_that_contain_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await;
    let addr = server.addr();
    let mut ann = Client::connect(addr, "ann").await;
    ann.join("dev", None).await;
    let mut seq = std::collections::HashMap::new();
    let posts = [
        ("a", "我们的团队今天发布了新版本"),
        ("b", "团队"),
        ("c", "东京へ行く"),
        ("d", "好"),
        ("e", "no ideographs here"),
    ];
    for (key, body) in posts {
        seq.insert(key, post(&mut ann, "dev", body, key).await);
    }
    projections_caught_up(addr).await;
    let s = |keys: &[&str]| keys.iter().map(|k| seq[k]).collect::<BTreeSet<u64>>();
    assert_eq!(found(addr, "q=团").await, s(&["a", "b"]), "at the start of a bigram and in the middle of a run");
    assert_eq!(found(addr, "q=队").await, s(&["a", "b"]), "at the end of a bigram");
    assert_eq!(found(addr, "q=本").await, s(&["a"]), "at the end of a run");
    assert_eq!(found(addr, "q=行").await, s(&["c"]), "japanese");
    assert_eq!(found(addr, "q=好").await, s(&["d"]), "a lone character");
    assert_eq!(found(addr, "q=团+-本").await, s(&["b"]), "excluded too");
    server.shutdown().await;
}
