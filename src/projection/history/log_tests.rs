//! The history driven as the server drives it: events appended to the memory log, applied live
//! by a [`Runner`] (a group commit at a time) or replayed by [`rebuild`] and [`catch_up`].

use super::*;
use crate::log::EventLog;
use crate::projection::testing::{append, caught_up, close, deleted, edited, memory_log, posted, room, state};
use crate::projection::{catch_up, rebuild, Runner};

fn seqs(messages: &[StoredMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// A history fed live from `log` by a runner, on its own temporary store.
async fn live(log: &EventLog) -> (History, Runner, tokio::task::JoinHandle<()>, crate::state::StateDb) {
    let db = state();
    let (history, projection) = open(&db, Arc::new(log.clone())).expect("open history");
    let (runner, following) = Runner::start(log.clone(), projection, None).await.expect("start the runner");
    (history, runner, following, db)
}

/// A history rebuilt from the whole of `log` on a store of its own.
fn rebuilt(log: &EventLog) -> (History, crate::state::StateDb) {
    let db = state();
    let (history, mut projection) = open(&db, Arc::new(log.clone())).expect("open history");
    rebuild(log, &mut projection, |_| {}).expect("rebuild from the log");
    (history, db)
}

#[tokio::test]
async fn given_posts_to_two_rooms_when_the_runner_follows_the_log_then_each_room_reads_its_own_in_seq_order() {
    let log = memory_log();
    let (history, runner, following, _db) = live(&log).await;
    let (mut in_a, mut in_b) = (Vec::new(), Vec::new());
    for n in 0..9 {
        let name = if n % 3 == 0 { "b" } else { "a" };
        let stored = append(&log, posted(name, "ann", &format!("c{n}"), &format!("hello {n}"))).await;
        if name == "a" { &mut in_a } else { &mut in_b }.push(stored.seq);
    }
    caught_up(&runner, &log).await;

    let a = history.recent(&room("a"), 100).expect("read room a");
    assert_eq!(seqs(&a), in_a);
    assert_eq!(
        a.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        ["hello 1", "hello 2", "hello 4", "hello 5", "hello 7", "hello 8"]
    );
    assert_eq!(seqs(&history.recent(&room("b"), 100).expect("read room b")), in_b);
    let summary = history.summary(&room("a")).expect("summary").expect("room a has messages");
    assert_eq!((summary.message_count, summary.last_seq), (6, *in_a.last().expect("six posts")));
    close(&log, following).await;
}

#[tokio::test]
async fn given_an_edited_message_when_history_is_rebuilt_then_the_page_shows_the_edit() {
    let log = memory_log();
    let first = append(&log, posted("a", "ann", "c1", "helo")).await;
    let second = append(&log, posted("a", "ann", "c2", "world")).await;
    let edit = append(&log, edited(&first, "ann", "hello")).await;

    let (history, _db) = rebuilt(&log);

    let page = history.recent(&room("a"), 10).expect("recent");
    assert_eq!(seqs(&page), vec![first.seq, second.seq], "an edit amends in place, it is no message of its own");
    assert_eq!((page[0].body.as_str(), page[0].edited_at_unix_ms), ("hello", Some(edit.at_unix_ms)));
    assert_eq!((page[1].body.as_str(), page[1].edited_at_unix_ms), ("world", None));
    let amendments = history.amendments(&room("a"), first.seq, u64::MAX).expect("amendments");
    assert_eq!(amendments.iter().map(|a| (a.seq, a.target)).collect::<Vec<_>>(), vec![(edit.seq, first.seq)]);
}

#[tokio::test]
async fn given_a_deleted_message_when_the_runner_applies_it_then_the_room_reads_the_others_and_counts_one_less() {
    let log = memory_log();
    let (history, runner, following, _db) = live(&log).await;
    let kept = append(&log, posted("a", "ann", "c1", "keep me")).await;
    let gone = append(&log, posted("a", "bob", "c1", "delete me")).await;
    caught_up(&runner, &log).await;
    assert_eq!(history.summary(&room("a")).expect("summary").expect("room").message_count, 2);

    append(&log, deleted(&gone, "bob")).await;
    caught_up(&runner, &log).await;

    assert_eq!(seqs(&history.recent(&room("a"), 10).expect("recent")), vec![kept.seq]);
    assert_eq!(history.get(&room("a"), gone.seq).expect("get"), None);
    let summary = history.summary(&room("a")).expect("summary").expect("room");
    assert_eq!((summary.message_count, summary.message_bytes), (1, kept_bytes(&history, kept.seq)));
    close(&log, following).await;
}

fn kept_bytes(history: &History, seq: u64) -> u64 {
    history.get(&room("a"), seq).expect("get").expect("kept").stored_bytes()
}

#[tokio::test]
async fn given_a_log_applied_live_when_history_is_rebuilt_then_every_page_and_summary_is_the_same() {
    let log = memory_log();
    let (history, runner, following, _db) = live(&log).await;
    // Enough messages to fill pages, edits and deletions of some, and a retention cut.
    let mut posts = Vec::new();
    for n in 0..(PAGE_MESSAGES_MAX as u64 * 2 + 10) {
        let name = if n % 4 == 0 { "b" } else { "a" };
        posts.push(append(&log, posted(name, "ann", &format!("c{n}"), &format!("message {n}"))).await);
        if n % 7 == 3 {
            append(&log, edited(&posts[n as usize - 2], "ann", &format!("edited {n}"))).await;
        }
        if n % 11 == 5 {
            append(&log, deleted(&posts[n as usize - 1], "ann")).await;
        }
    }
    let cut = posts[20].seq;
    append(
        &log,
        Event::MessagesExpired(crate::event::MessagesExpired {
            room: room("a"),
            through_seq: cut,
            policy: "max_count=1".into(),
        }),
    )
    .await;
    caught_up(&runner, &log).await;

    let (replayed, _replayed_db) = rebuilt(&log);

    assert_eq!(replayed.dump().expect("dump rebuilt"), history.dump().expect("dump live"));
    assert_eq!(replayed.checkpoint().expect("checkpoint"), history.checkpoint().expect("checkpoint"));
    let a = replayed.after(&room("a"), 0, 1000).expect("room a");
    assert!(a.first().is_some_and(|m| m.seq > cut), "the cut removed room a's first messages");
    assert!(a.iter().any(|m| m.edited_at_unix_ms.is_some()), "some message reads its edit");
    close(&log, following).await;
}

#[tokio::test]
async fn given_a_store_caught_up_when_it_is_reopened_then_catch_up_applies_only_what_came_after() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let log = memory_log();
    let mut seqs_posted = Vec::new();
    for n in 0..3 {
        seqs_posted.push(append(&log, posted("a", "ann", &format!("c{n}"), "before")).await.seq);
    }
    {
        let db = crate::state::StateDb::open(dir.path(), 8 << 20).expect("open the store");
        let mut projection = projection(&db).expect("open history");
        assert_eq!(catch_up(&log, &mut projection, |_| {}).expect("catch up"), 3);
        db.sync().expect("sync the store");
    }
    for n in 3..5 {
        seqs_posted.push(append(&log, posted("a", "ann", &format!("c{n}"), "after")).await.seq);
    }

    let db = crate::state::StateDb::open(dir.path(), 8 << 20).expect("reopen the store");
    let (history, mut projection) = open(&db, Arc::new(log.clone())).expect("open history");
    assert_eq!(history.checkpoint().expect("checkpoint"), seqs_posted[2], "the checkpoint survived the reopen");
    let applied = catch_up(&log, &mut projection, |_| {}).expect("catch up");

    assert_eq!(applied, 2, "only the events after the checkpoint");
    assert_eq!(seqs(&history.recent(&room("a"), 100).expect("recent")), seqs_posted, "each message once, in order");
    assert_eq!(history.summary(&room("a")).expect("summary").expect("room").message_count, 5);
}

#[tokio::test]
async fn given_a_log_of_several_full_batches_when_rebuilt_reading_ahead_then_it_equals_the_live_history() {
    let log = memory_log();
    let (history, runner, following, _db) = live(&log).await;
    let total = crate::projection::APPLY_BATCH_MAX * 2 + 100;
    let mut kept_in_a = Vec::new();
    for n in 0..total {
        let name = ["a", "b", "c"][n % 3];
        let stored = append(&log, posted(name, "ann", &format!("c{n}"), &format!("words {n}"))).await;
        if n % 1000 == 999 {
            append(&log, deleted(&stored, "ann")).await; // removals inside the batches read ahead
        } else if name == "a" {
            kept_in_a.push(stored.seq);
        }
    }
    caught_up(&runner, &log).await;

    let (replayed, _replayed_db) = rebuilt(&log);

    assert_eq!(
        seqs(&replayed.recent(&room("a"), usize::MAX).expect("recent")),
        kept_in_a,
        "every message once, in order"
    );
    assert_eq!(replayed.checkpoint().expect("checkpoint"), log.head(), "through the last event");
    assert_eq!(replayed.dump().expect("dump rebuilt"), history.dump().expect("dump live"));
    close(&log, following).await;
}
