//! The search index fed from the memory log as the server feeds it: by a [`Runner`] that
//! commits every `search.refresh`, and by [`rebuild`].

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::*;
use crate::log::EventLog;
use crate::projection::testing::{append, caught_up, close, deleted, edited, memory_log, posted, room};
use crate::projection::{rebuild, Runner};

/// A short refresh: the runner makes what it applied searchable soon after.
fn config() -> SearchConfig {
    SearchConfig { refresh: Duration::from_millis(20), ..SearchConfig::default() }
}

/// The seqs a search for `q` finds, newest first.
fn find(index: &SearchIndex, log: &EventLog, q: &str) -> Vec<u64> {
    let params = SearchParams { q: q.into(), sort: Some(Sort::Time), ..SearchParams::default() };
    let request = SearchRequest::new(&params, None, 100, SystemTime::now()).expect("a valid search");
    index.search(&request, log).expect("search").hits.iter().map(|hit| hit.seq).collect()
}

async fn live(log: &EventLog, dir: &Path) -> (SearchIndex, Runner, tokio::task::JoinHandle<()>) {
    let (index, projection) = open(dir, &config(), 1).expect("open the index");
    let (runner, following) = Runner::start(log.clone(), projection, None).await.expect("start the runner");
    (index, runner, following)
}

#[tokio::test]
async fn given_a_posted_message_when_the_index_has_it_then_a_search_for_its_words_finds_it() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let log = memory_log();
    let (index, runner, following) = live(&log, dir.path()).await;
    let wanted = append(&log, posted("a", "ann", "c1", "The quarterly report is ready")).await;
    append(&log, posted("b", "bob", "c1", "lunch at noon?")).await;
    caught_up(&runner, &log).await;

    assert_eq!(find(&index, &log, "report"), vec![wanted.seq]);
    assert_eq!(find(&index, &log, "\"report is ready\""), vec![wanted.seq], "a phrase");
    assert_eq!(find(&index, &log, "QUARTER*"), vec![wanted.seq], "a prefix, case folded");
    assert_eq!(find(&index, &log, "report -quarterly"), Vec::<u64>::new(), "an exclusion");
    assert_eq!(index.indexed_through(), log.head());
    close(&log, following).await;
}

#[tokio::test]
async fn given_a_deleted_or_edited_message_then_a_search_no_longer_finds_its_old_text() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let log = memory_log();
    let (index, runner, following) = live(&log, dir.path()).await;
    let removed = append(&log, posted("a", "ann", "c1", "secret plans")).await;
    let kept = append(&log, posted("a", "ann", "c2", "public plans")).await;
    let changed = append(&log, posted("a", "ann", "c3", "meet at the harbour")).await;
    caught_up(&runner, &log).await;
    assert_eq!(find(&index, &log, "plans"), vec![kept.seq, removed.seq]);

    append(&log, deleted(&removed, "ann")).await;
    append(&log, edited(&changed, "ann", "meet at the station")).await;
    caught_up(&runner, &log).await;

    assert_eq!(find(&index, &log, "plans"), vec![kept.seq]);
    assert_eq!(find(&index, &log, "secret"), Vec::<u64>::new());
    assert_eq!(find(&index, &log, "harbour"), Vec::<u64>::new(), "the old text of an edit is gone");
    assert_eq!(find(&index, &log, "station"), vec![changed.seq], "the new text is found under the message's seq");
    close(&log, following).await;
}

#[tokio::test]
async fn given_an_index_of_the_schema_that_stored_texts_when_opened_then_it_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().expect("temporary folder");
    {
        // Schema version 1, as releases before 2026-12-06 wrote it: the body stored, no
        // `text_seq`, one document committed through seq 1.
        use tantivy::schema::{STORED, STRING};
        let mut builder = Schema::builder();
        let number = NumericOptions::default().set_indexed().set_stored().set_fast();
        let body = TextOptions::default().set_stored().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(tokenizer::NAME)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        );
        let seq = builder.add_u64_field("seq", number.clone());
        let room = builder.add_text_field("room", STRING | STORED);
        let author = builder.add_text_field("author", STRING | STORED);
        let at = builder.add_u64_field("at", number);
        let text = builder.add_text_field("body", body);
        let index = Index::create_in_dir(dir.path(), builder.build()).expect("an index of version 1");
        index.tokenizers().register(tokenizer::NAME, tokenizer::analyzer());
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 15 << 20).expect("writer");
        writer
            .add_document(doc!(seq => 1u64, room => "a", author => "ann", at => 1u64, text => "an old stale text"))
            .expect("add");
        let mut prepared = writer.prepare_commit().expect("prepare");
        prepared.set_payload(r#"{"schema":1,"seq":1}"#);
        prepared.commit().expect("commit");
    }
    let log = memory_log();
    let (index, runner, following) = live(&log, dir.path()).await;
    let wanted = append(&log, posted("a", "ann", "c1", "the current words")).await;
    caught_up(&runner, &log).await;

    assert_eq!(find(&index, &log, "stale"), Vec::<u64>::new(), "the old index was dropped");
    assert_eq!(find(&index, &log, "current"), vec![wanted.seq], "and rebuilt from the log");
    assert_eq!(snippets(&index, &log, "current"), vec!["the <b>current</b> words".to_owned()]);
    close(&log, following).await;
}

/// The snippets of a search for `q`, best first.
fn snippets(index: &SearchIndex, log: &EventLog, q: &str) -> Vec<String> {
    let params = SearchParams { q: q.into(), ..SearchParams::default() };
    let request = SearchRequest::new(&params, None, 100, SystemTime::now()).expect("a valid search");
    index.search(&request, log).expect("search").hits.into_iter().map(|hit| hit.snippet).collect()
}

#[tokio::test]
async fn given_long_messages_then_the_index_keeps_no_copy_of_their_texts_and_snippets_read_them_from_the_log() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let log = memory_log();
    let (index, runner, following) = live(&log, dir.path()).await;
    // Words drawn from a small vocabulary in a random order: little for the index's terms and
    // positions, much for a store of the texts (LZ4 finds few repeats in them).
    let vocabulary = ["amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "heron"];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut text_bytes = 0;
    let mut first = None;
    for n in 0..60 {
        let words: Vec<&str> = (0..1_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                vocabulary[(x % 8) as usize]
            })
            .collect();
        let body = format!("needle{n} {}", words.join(" "));
        text_bytes += body.len();
        let stored = append(&log, posted("a", "ann", &format!("c{n}"), &body)).await;
        first.get_or_insert(stored);
    }
    caught_up(&runner, &log).await;
    let index_bytes = SearchIndex::size_bytes(dir.path());
    assert!(
        index_bytes * 3 < text_bytes as u64,
        "the index holds {index_bytes} bytes for {text_bytes} bytes of text: no copy of the texts"
    );
    let found = snippets(&index, &log, "needle7");
    assert_eq!(found.len(), 1);
    assert!(found[0].starts_with("<b>needle7</b> "), "the snippet is cut from the text in the log: {}", found[0]);

    let Some(first) = first else { panic!("sixty messages were posted") };
    append(&log, edited(&first, "ann", "needle0 rewritten at the harbour")).await;
    caught_up(&runner, &log).await;
    assert_eq!(snippets(&index, &log, "harbour"), vec!["needle0 rewritten at the <b>harbour</b>".to_owned()]);
    close(&log, following).await;
}

#[tokio::test]
async fn given_a_record_the_log_removed_before_the_index_applied_the_cut_then_its_hit_is_left_out() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let log = memory_log();
    let (index, runner, following) = live(&log, dir.path()).await;
    let gone = append(&log, posted("a", "ann", "c1", "plans for friday")).await;
    let kept = append(&log, posted("a", "ann", "c2", "plans for monday")).await;
    caught_up(&runner, &log).await;
    // The janitor removes records once a retention cut supersedes them; the index may not
    // have applied that cut yet.
    log.remove(vec![gone.seq]).await.expect("remove the record");

    assert_eq!(find(&index, &log, "plans"), vec![kept.seq], "no hit without its text");
    assert_eq!(find(&index, &log, "friday"), Vec::<u64>::new());
    close(&log, following).await;
}

#[tokio::test]
async fn given_an_indexed_log_when_the_index_is_rebuilt_then_the_same_searches_find_the_same_messages() {
    let (live_dir, rebuilt_dir) = (tempfile::tempdir().expect("folder"), tempfile::tempdir().expect("folder"));
    let log = memory_log();
    let (index, runner, following) = live(&log, live_dir.path()).await;
    let mut posts = Vec::new();
    for n in 0..40 {
        let words = ["apple pie", "banana bread", "cherry tart", "apple crumble"][n % 4];
        posts.push(append(&log, posted(["a", "b"][n % 2], "ann", &format!("c{n}"), &format!("{words} {n}"))).await);
    }
    append(&log, deleted(&posts[0], "ann")).await;
    append(&log, edited(&posts[2], "ann", "apple strudel")).await;
    let cut =
        crate::event::MessagesExpired { room: room("b"), through_seq: posts[10].seq, policy: "max_count=1".into() };
    append(&log, Event::MessagesExpired(cut)).await;
    caught_up(&runner, &log).await;

    let (rebuilt, mut projection) = open(rebuilt_dir.path(), &config(), 1).expect("open a second index");
    rebuild(&log, &mut projection, |_| {}).expect("rebuild from the log");

    for q in ["apple", "banana", "cherry", "strudel", "bread -banana", "crumble"] {
        assert_eq!(find(&rebuilt, &log, q), find(&index, &log, q), "search {q:?}");
    }
    assert!(!find(&rebuilt, &log, "apple").contains(&posts[0].seq), "the deleted message stays deleted");
    assert_eq!(find(&rebuilt, &log, "strudel"), vec![posts[2].seq], "the edited message reads its edit");
    assert!(!find(&rebuilt, &log, "banana").contains(&posts[1].seq), "retention removed room b's first messages");
    assert_eq!(rebuilt.documents(), index.documents());
    close(&log, following).await;
}

/// `n` messages in room `a` from seq `first` on, each saying `body`.
fn messages(first: u64, n: u64, body: &str) -> Vec<Envelope> {
    (first..first + n)
        .map(|seq| Envelope {
            seq,
            at_unix_ms: 1_795_000_000_000 + seq,
            stream: crate::event::StreamId::room(&room("a")),
            event: posted("a", "ann", &format!("c{seq}"), body),
        })
        .collect()
}

/// The texts of envelopes applied to a projection directly, without a log.
#[derive(Default)]
struct Texts(std::collections::HashMap<u64, String>);

impl Texts {
    /// Keeps the texts of `batch` and hands it on.
    fn of(&mut self, batch: Vec<Envelope>) -> Vec<Envelope> {
        for envelope in &batch {
            if let Event::MessagePosted(p) = &envelope.event {
                self.0.insert(envelope.seq, p.body.clone());
            }
        }
        batch
    }
}

impl MessageTexts for Texts {
    fn texts(&self, seqs: &[u64]) -> Result<HashMap<u64, String>, ProjectionError> {
        Ok(seqs.iter().filter_map(|seq| Some((*seq, self.0.get(seq)?.clone()))).collect())
    }
}

#[test]
fn given_hits_in_many_places_of_the_log_then_their_texts_are_read_on_two_threads_and_all_come_back() {
    let seqs: Vec<u64> = vec![1, 2, 100, 300, 301, 500, 900, 2_000];
    assert_eq!(runs(&seqs).len(), 6, "six places, each read once");
    let texts = Texts(seqs.iter().map(|&seq| (seq, format!("text {seq}"))).collect());
    let read = texts_on_two_threads(&texts, &seqs).expect("read");
    let mut got: Vec<(u64, String)> = read.into_iter().collect();
    got.sort();
    assert_eq!(got, seqs.iter().map(|&seq| (seq, format!("text {seq}"))).collect::<Vec<_>>());
}

fn ask(index: &SearchIndex, texts: &Texts, q: &str, sort: Sort, cursor: Option<String>) -> Hits {
    let params = SearchParams { q: q.into(), sort: Some(sort), limit: Some(20), cursor, ..SearchParams::default() };
    let request = SearchRequest::new(&params, None, 100, SystemTime::now()).expect("a valid search");
    index.search(&request, texts).expect("search")
}

#[test]
fn given_more_matches_than_the_bound_then_the_total_says_at_least_and_equal_scores_rank_newest_first() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let (_, mut projection) = open(dir.path(), &SearchConfig::default(), 1).expect("open the index");
    let common = TOTAL_EXACT_MAX as u64 + 20;
    // Two commits, so two segments: the order must not depend on how the index is split.
    let mut texts = Texts::default();
    projection.apply(&texts.of(messages(1, common / 2, "common word"))).expect("apply");
    projection.flush().expect("commit");
    projection.apply(&texts.of(messages(common / 2 + 1, common - common / 2, "common word"))).expect("apply");
    projection.apply(&texts.of(messages(common + 1, 30, "common rare"))).expect("apply");
    projection.flush().expect("commit");
    drop(projection); // as the server leaves it: not merged into one segment as a rebuild ends
    let index = open_reader(dir.path()).expect("open the index to read");
    assert_eq!(index.index.searchable_segment_ids().expect("segments").len(), 2);

    for sort in [Sort::Relevance, Sort::Time] {
        let many = ask(&index, &texts, "common", sort, None);
        assert_eq!((many.total, many.total_is_exact), (TOTAL_EXACT_MAX, false), "{sort:?}: at least the bound");
        let few = ask(&index, &texts, "rare", sort, None);
        assert_eq!((few.total, few.total_is_exact), (30, true), "{sort:?}: below the bound, exact");
        let both = ask(&index, &texts, "common rare", sort, None);
        assert_eq!((both.total, both.total_is_exact), (30, true), "{sort:?}: an intersection, exact");
    }

    // Every "common word" scores alike: the newest come first, page after page, none twice.
    let newest: Vec<u64> = (common - 39..=common).rev().collect();
    let first = ask(&index, &texts, "word", Sort::Relevance, None);
    let second = ask(&index, &texts, "word", Sort::Relevance, first.next_cursor.clone());
    let seqs: Vec<u64> = first.hits.iter().chain(&second.hits).map(|hit| hit.seq).collect();
    assert_eq!(seqs, newest);
    assert_eq!(ask(&index, &texts, "common word", Sort::Relevance, None).hits[0].seq, common, "two words, ties too");

    // Newest first reads the seqs across both segments, page after page, and every page counts.
    let first = ask(&index, &texts, "word", Sort::Time, None);
    let second = ask(&index, &texts, "word", Sort::Time, first.next_cursor.clone());
    let seqs: Vec<u64> = first.hits.iter().chain(&second.hits).map(|hit| hit.seq).collect();
    assert_eq!(seqs, newest, "newest first");
    assert_eq!((second.total, second.total_is_exact), (TOTAL_EXACT_MAX, false), "a later page counts too");
}

#[test]
fn given_segments_whose_documents_are_out_of_seq_order_then_newest_first_pages_through_every_match() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let (_, mut projection) = open(dir.path(), &SearchConfig::default(), 1).expect("open the index");
    let body = |seq: u64| match (seq % 3, seq % 7) {
        (0, 0) => "alpha beta",
        (0, _) => "alpha",
        (_, 0) => "beta",
        _ => "gamma beta",
    };
    let batch = |runs: &[std::ops::RangeInclusive<u64>]| -> Vec<Envelope> {
        runs.iter().cloned().flatten().flat_map(|seq| messages(seq, 1, body(seq))).collect()
    };
    // Three segments holding runs of seqs out of order, as merges and edits leave them: the
    // newest of the first segment sit in its first documents.
    let mut texts = Texts::default();
    for runs in [vec![401..=500, 1..=100, 201..=260], vec![101..=200, 501..=520], vec![261..=400]] {
        projection.apply(&texts.of(batch(&runs))).expect("apply");
        projection.flush().expect("commit");
    }
    drop(projection); // as the server leaves it: not merged into one segment as a rebuild ends
    let mut index = open_reader(dir.path()).expect("open the index to read");
    assert_eq!(index.index.searchable_segment_ids().expect("segments").len(), 3);

    for chunk_docs in [1, 4, 7, 16_384] {
        index.seqs = rank::ColumnCache::with_chunk_docs(chunk_docs);
        for q in ["alpha", "beta", "alpha beta", "gamma"] {
            let expected: Vec<u64> = (1..=520)
                .rev()
                .filter(|seq| q.split(' ').all(|word| body(*seq).split(' ').any(|w| w == word)))
                .collect();
            let (mut seqs, mut cursor) = (Vec::new(), None);
            for _ in 0..100 {
                let page = ask(&index, &texts, q, Sort::Time, cursor);
                assert_eq!((page.total, page.total_is_exact), (expected.len(), true), "{q}: every page counts");
                seqs.extend(page.hits.iter().map(|hit| hit.seq));
                cursor = page.next_cursor;
                if cursor.is_none() {
                    break;
                }
            }
            assert_eq!(seqs, expected, "{q}, chunks of {chunk_docs}: newest first, each once");
        }
    }
}

/// A rebuild ends with one segment: the same hits, totals and snippets as the segments it
/// merged, and the commit's payload (how far the index got) kept.
#[test]
fn given_a_rebuild_that_left_several_segments_when_it_finishes_then_one_segment_answers_the_same() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let (_, mut projection) = open(dir.path(), &SearchConfig::default(), 1).expect("open the index");
    let mut texts = Texts::default();
    for (first, body) in [(1, "apple pie"), (41, "apple tart"), (81, "pear pie")] {
        projection.apply(&texts.of(messages(first, 40, body))).expect("apply");
        projection.flush().expect("commit");
    }
    let before = open_reader(dir.path()).expect("open the index to read");
    assert_eq!(before.index.searchable_segment_ids().expect("segments").len(), 3);
    let answers = |index: &SearchIndex| -> Vec<Hits> {
        ["apple", "pie", "apple pie", "pear"]
            .iter()
            .flat_map(|q| [Sort::Relevance, Sort::Time].map(|sort| ask(index, &texts, q, sort, None)))
            .collect()
    };
    let expected = answers(&before);
    assert_eq!(projection.finish().expect("finish"), 3, "it merged three segments");
    let after = open_reader(dir.path()).expect("open the index to read");
    assert_eq!(after.index.searchable_segment_ids().expect("segments").len(), 1);
    assert_eq!(after.indexed_through(), 120, "the payload stays");
    let found = answers(&after);
    for (got, want) in found.iter().zip(&expected) {
        let seqs = |hits: &Hits| hits.hits.iter().map(|h| (h.seq, h.snippet.clone())).collect::<Vec<_>>();
        assert_eq!((seqs(got), got.total, got.total_is_exact), (seqs(want), want.total, want.total_is_exact));
    }
}
